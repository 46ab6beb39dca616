"""Dense relative localisation (Liu et al. 2021, "Efficient Training of Visual Transformers with Small
Datasets"): a self-supervised auxiliary loss for training on few images.

From the encoder's output grid of patch tokens, pairs of tokens are drawn at random and a small MLP
predicts how far apart they are, (rows, columns). Solving it needs spatial information in every output
token, which the classification loss alone does not ask for; the loss adds it at the cost of a
3-layer MLP on a few pairs per image. Training only: evaluation never runs this head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseRelativeLocalization(nn.Module):
    """Tokens (B, H*W, D) on an (H, W) grid -> the L1 error of the predicted offsets of random token pairs.

    Args:
        embed_dim: width D of the tokens.
        pairs: pairs drawn per image (64 by default in the paper's code).
        hidden_dim: width of the MLP's two hidden layers (512 in the paper).

    Targets are the offsets (row_i - row_j, col_i - col_j) shifted by (H - 1, W - 1) to be non-negative, in
    patches, as the paper's L1 variant.
    """

    def __init__(self, embed_dim: int, pairs: int = 64, hidden_dim: int = 512):
        super().__init__()
        if pairs < 1:
            raise ValueError(f"DenseRelativeLocalization pairs must be >= 1, got {pairs}")
        self.pairs = pairs
        self.mlp = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2),
        )

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``positions`` (B, K): where on the grid (row-major index) each of K tokens sits, when they are a
        subset of the grid (patch dropout); None: the tokens fill the grid in order."""
        batch, count, _ = tokens.shape
        rows, columns = grid
        if positions is None and count != rows * columns:
            raise ValueError(f"{count} tokens do not fill a {rows}x{columns} grid")
        first, second = torch.randint(count, (2, batch, self.pairs), device=tokens.device)
        pair_tokens = torch.cat([_gather(tokens, first), _gather(tokens, second)], dim=-1)
        if positions is not None:
            first, second = positions.gather(1, first), positions.gather(1, second)
        offsets = torch.stack(
            [first // columns - second // columns + rows - 1, first % columns - second % columns + columns - 1], dim=-1
        )
        return F.l1_loss(self.mlp(pair_tokens).float(), offsets.float())


def _gather(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), indices (B, P) -> (B, P, D)."""
    return tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
