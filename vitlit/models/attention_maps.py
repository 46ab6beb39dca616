"""Where a ViT looks: attention maps of the class token over the image patches.

The attention weights are recomputed from each ``msa_block``'s input with its own ``layer_norm`` and
``qkv`` weights inside a forward hook, so :mod:`vitlit.models.vit` keeps its fused attention kernel
(``scaled_dot_product_attention`` never returns the weights) and needs no changes.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlit.models.vit import MultiheadSelfAttentionBlock, ViT

ATTENTION_METHODS = ("rollout", "last_layer")


def _attention_weights(block: MultiheadSelfAttentionBlock, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights of ``block`` for its input ``tokens`` (B, N, D): (B, heads, N, N), float32."""
    batch, length, _ = tokens.shape
    qkv = block.qkv(block.layer_norm(tokens)).float()
    q, k, _ = qkv.view(batch, length, 3, block.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)


@torch.no_grad()
def attention_maps(
    model: ViT, images: torch.Tensor, method: str = "rollout"
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Run ``model`` on ``images`` (B, C, H, W) once and return what it attended to.

    Returns ``(logits (B, classes), per-layer weights [(B, heads, N, N)] * depth, maps (B, H/p, W/p))``.
    ``maps`` is the class token's attention over the patches, scaled to [0, 1] per image:
    ``"rollout"`` (Abnar & Zuidema 2020: head-averaged attention plus the residual identity,
    multiplied through the layers) or ``"last_layer"`` (the last block's, averaged over heads).
    """
    if method not in ATTENTION_METHODS:
        raise ValueError(f"attention method {method!r} is not one of: {', '.join(ATTENTION_METHODS)}")
    weights: list[torch.Tensor] = []

    def record(block: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        weights.append(_attention_weights(block, inputs[0]))

    blocks = [module for module in model.modules() if isinstance(module, MultiheadSelfAttentionBlock)]
    handles = [block.register_forward_hook(record) for block in blocks]
    try:
        logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    grid = model.patch_grid(images)
    return logits, weights, class_token_map(weights, grid, method)


def class_token_map(weights: list[torch.Tensor], grid: tuple[int, int], method: str = "rollout") -> torch.Tensor:
    """Per-layer attention [(B, heads, N, N)] -> the class token's map over the patch grid, (B, h, w) in [0, 1]."""
    if method == "last_layer":
        attention = weights[-1].mean(dim=1)
    else:
        identity = torch.eye(weights[0].shape[-1], device=weights[0].device)
        attention = identity.expand_as(weights[0][:, 0]).clone()
        for layer in weights:
            mixed = 0.5 * layer.mean(dim=1) + 0.5 * identity  # the residual path carries half the signal
            attention = (mixed / mixed.sum(dim=-1, keepdim=True)) @ attention
    maps = attention[:, 0, 1:].reshape(-1, *grid)
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)
