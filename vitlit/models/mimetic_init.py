"""Mimetic initialisation of self-attention (Trockman & Kolter 2023, "Mimetic Initialization of Self-Attention
Layers", arXiv 2305.09828): attention weights start the way trained ViTs' weights look, at no cost per step.

Each head's query-key product starts near a scaled identity plus noise, W_q^T W_k ~ alpha Z + beta I, so a
token first attends to tokens like itself (with sine-cosine positions added: to its neighbours on the patch
grid). The value-output product starts near noise minus a scaled identity, W_o W_v ~ alpha Z - beta I. Z has
entries of scale 1/sqrt(D). Each product is factorised into its two weights by SVD (the query and key of a
head keep the top ``head_dim`` singular directions). Biases stay zero.
"""

from __future__ import annotations

import torch
from torch import nn

# The paper's values for ViTs (and its reference code's).
QUERY_KEY_SCALES = (0.7, 0.7)  # (alpha, beta) of W_q^T W_k
VALUE_OUTPUT_SCALES = (0.4, 0.4)  # (alpha, beta) of W_o W_v


def noisy_identity(dim: int, alpha: float, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """alpha * Z + beta * I (dim, dim), Z uniform with variance 1/dim (the reference code's ``dist='uniform'``)."""
    bound = (3.0 / dim) ** 0.5
    noise = (torch.rand(dim, dim, generator=generator) * 2 - 1) * bound
    return alpha * noise + beta * torch.eye(dim)


def split_by_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left (dim, rank), right (rank, dim)) with left @ right the best rank-``rank`` approximation of ``matrix``."""
    u, s, vh = torch.linalg.svd(matrix)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


@torch.no_grad()
def mimetic_init_(
    qkv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    query_key: tuple[float, float] = QUERY_KEY_SCALES,
    value_output: tuple[float, float] = VALUE_OUTPUT_SCALES,
    generator: torch.Generator | None = None,
) -> None:
    """Overwrite a fused ``qkv`` projection (rows q, k, v; each (D, D)) and the output ``proj`` in place.

    For head h with rows r = h*head_dim..(h+1)*head_dim: q_h = x W_q[r]^T and k_h = x W_k[r]^T, so the
    head's scores are x (W_q[r]^T W_k[r]) x^T, and W_q[r]^T W_k[r] is the noisy identity of rank head_dim.
    The value and output weights together map x to x (W_o W_v)^T, with W_o W_v the noisy negative identity.
    """
    width = proj.in_features
    head_dim = width // num_heads
    for head in range(num_heads):
        left, right = split_by_svd(noisy_identity(width, *query_key, generator), head_dim)
        rows = slice(head * head_dim, (head + 1) * head_dim)
        qkv.weight[rows] = left.T.to(qkv.weight.dtype)
        qkv.weight[width:][rows] = right.to(qkv.weight.dtype)
    alpha, beta = value_output
    output, value = split_by_svd(noisy_identity(width, alpha, -beta, generator), width)
    qkv.weight[2 * width :] = value.to(qkv.weight.dtype)
    proj.weight.copy_(output)
    nn.init.zeros_(qkv.bias)
    nn.init.zeros_(proj.bias)
