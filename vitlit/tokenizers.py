"""Alternative patch embeddings ("stems") for small datasets; each maps images (B, C, H, W) to tokens (B, N, D),
N = (H / patch) * (W / patch), in row-major order, like :class:`vitlit.model.PatchEmbedding`.

Pick one with ``ViT(stem=...)`` (``model.net.stem``):

- ``patch``: the paper's linear projection of non-overlapping patches (``PatchEmbedding``).
- ``conv``: a convolutional stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"):
  stride-2 3x3 convolutions halve the image until one position covers a patch, then a 1x1 convolution
  projects to the token width. Overlapping receptive fields give the locality a linear patch lacks.
- ``shifted_patch``: shifted patch tokenisation (Lee et al. 2021, "Vision Transformer for Small-Size
  Datasets"): the image and four copies shifted half a patch diagonally are cut into patches together,
  so each token also sees its neighbours' edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_divisible(images: torch.Tensor, patch_size: int) -> None:
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}; "
            "resize or crop the images to a multiple of it"
        )


class ConvStem(nn.Module):
    """log2(patch) x [Conv3x3 stride 2, BatchNorm, ReLU], then Conv1x1 to ``embed_dim``.

    Channels double per stage and reach ``embed_dim`` at the last one (e.g. 48, 96, 192 for width 192, patch 8).
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, embed_dim: int = 768):
        super().__init__()
        stages = patch_size.bit_length() - 1
        if patch_size < 2 or 2**stages != patch_size:
            raise ValueError(f"the conv stem needs a power-of-two patch_size of at least 2, got {patch_size}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            width = max(embed_dim >> (stages - 1 - stage), 8)
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.convolutions = nn.Sequential(*layers)
        self.projection = nn.Conv2d(channels, embed_dim, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_divisible(images, self.patch_size)
        return self.projection(self.convolutions(images)).flatten(2).transpose(1, 2)


class ShiftedPatchTokenization(nn.Module):
    """Concatenate the image with its four half-patch diagonal shifts (zero-filled), cut 5C-channel patches,
    then LayerNorm and a linear projection of each flattened patch to ``embed_dim``."""

    def __init__(self, in_channels: int = 3, patch_size: int = 16, embed_dim: int = 768, layer_norm_eps: float = 1e-6):
        super().__init__()
        self.patch_size = patch_size
        patch_dim = 5 * in_channels * patch_size * patch_size
        self.layer_norm = nn.LayerNorm(patch_dim, eps=layer_norm_eps)
        self.projection = nn.Linear(patch_dim, embed_dim)

    def shifted(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 5C, H, W): the image, then shifted up-left, up-right, down-left, down-right."""
        shift = self.patch_size // 2
        height, width = images.shape[-2:]
        padded = F.pad(images, (shift, shift, shift, shift))
        views = [images]
        for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            top, left = shift + dy * shift, shift + dx * shift
            views.append(padded[..., top : top + height, left : left + width])
        return torch.cat(views, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_divisible(images, self.patch_size)
        patches = F.pixel_unshuffle(self.shifted(images), self.patch_size)  # (B, 5C * p * p, H/p, W/p)
        return self.projection(self.layer_norm(patches.flatten(2).transpose(1, 2)))
