"""The ViT's parameter-free pieces: position embeddings (sine-cosine, resampling), stochastic depth, patch dropout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a residual branch for a random subset of
    samples and rescale the rest by 1 / (1 - rate). The identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return branch
        keep = 1.0 - self.rate
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
        return branch * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def sincos_position_embedding(grid_side: int, embed_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (1, 1 + side*side, D), the class token's entry zero.

    A quarter of the channels each hold sin(x w), cos(x w), sin(y w), cos(y w) for frequencies w from 1 down
    to 1/temperature (MoCo v3; big_vision's ``posemb_sincos_2d``; lucidrains' SimpleViT).
    """
    y, x = torch.meshgrid(torch.arange(grid_side), torch.arange(grid_side), indexing="ij")
    quarter = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter) / max(quarter - 1, 1))
    x = x.flatten()[:, None] * omega[None, :]
    y = y.flatten()[:, None] * omega[None, :]
    patches = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return torch.cat([torch.zeros(1, embed_dim), patches]).unsqueeze(0)


def resample_position_embedding(
    position_embedding: torch.Tensor,
    grid: tuple[int, int],
    mode: str = "bicubic",
    align_corners: bool = False,
    antialias: bool = False,
) -> torch.Tensor:
    """Resample a (1, 1 + h*w, D) position embedding (square h = w grid) to ``grid`` (bicubic by default).

    The class token's entry is kept as is. Returns the input unchanged when the grid already matches.
    ``mode``, ``align_corners`` and ``antialias`` go to ``F.interpolate``; checkpoint loading uses them to
    resample exactly as the checkpoint's own library does.
    """
    num_patches = position_embedding.shape[1] - 1
    if num_patches == grid[0] * grid[1]:
        return position_embedding
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot resample a position embedding of {num_patches} patches: not a square grid")
    class_pos, patch_pos = position_embedding[:, :1], position_embedding[:, 1:]
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode=mode, align_corners=align_corners, antialias=antialias)
    patch_pos = patch_pos.to(position_embedding.dtype).permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([class_pos, patch_pos], dim=1)


def drop_patches(tokens: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - rate`` of each image's patch tokens and the class token (PatchDropout, Liu et al.
    2023; timm's ``patch_drop_rate``): tokens (B, 1 + N, D) -> (B, 1 + K, D), K = max(1, int(N * (1 - rate))),
    and the kept patches' indices (B, K) in 0..N-1, in grid order."""
    patches = tokens.shape[1] - 1
    keep = max(1, int(patches * (1 - rate)))
    kept = torch.rand(tokens.shape[0], patches, device=tokens.device).argsort(dim=1)[:, :keep].sort(dim=1).values
    kept_patches = tokens[:, 1:].gather(1, kept.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return torch.cat([tokens[:, :1], kept_patches], dim=1), kept


def resized_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, H, W) -> (B, C, size, size), antialiased bilinear, in their dtype; unchanged when already so."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).to(images.dtype)
