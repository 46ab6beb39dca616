"""A Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") in plain PyTorch.

The module tree reads like the paper and like the notebook vitlit replaces::

    ViT
    ├─ patch_embedding      PatchEmbedding: Conv2d(3 -> D, kernel=stride=patch) + Flatten
    ├─ class_embedding      (1, 1, D) learned token prepended to the patch tokens
    ├─ position_embedding   (1, 1 + N, D) learned (or fixed 2D sin-cos), added to every token
    ├─ embedding_dropout    dropout (then, in training with patch_drop_rate, a random subset of the patch tokens)
    ├─ transformer_encoder  depth x TransformerEncoderBlock (pre-norm, residual around each half)
    │   ├─ msa_block        LayerNorm -> multi-head self-attention (fused qkv, SDPA; the last block: class token only)
    │   └─ mlp_block        LayerNorm -> Linear(D, M) -> GELU -> Linear(M, D)
    └─ classifier           LayerNorm(D) + Linear(D, classes) on the class token (or mean patch token: see pooling)

The classifier's LayerNorm plays the role of the encoder's final norm in torchvision and timm;
LayerNorm acts on each token alone, so normalising only the class token gives the same logits.
Parameter layouts (fused qkv rows ordered q, k, v) match torchvision's ``in_proj`` and timm's
``qkv`` so their checkpoints map onto this model by renaming keys alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from vitlit.models.layers import DropPath, drop_patches, resample_position_embedding, sincos_position_embedding
from vitlit.models.mimetic_init import mimetic_init_
from vitlit.private_api import cpu_has_native_bf16

NATIVE_BF16_CPU = cpu_has_native_bf16()  # checked once: the attention path must not call out under torch.compile


class PatchEmbedding(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to a token.

    Input (B, C, H, W) -> output (B, H/patch * W/patch, D), patches in row-major order.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.patcher = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.flatten = nn.Flatten(start_dim=2, end_dim=3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the patch size {self.patch_size}; "
                "resize or crop the images to a multiple of it"
            )
        return self.flatten(self.patcher(images)).transpose(1, 2)


class MultiheadSelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention: LayerNorm -> fused qkv -> attention -> output projection.

    (B, N, D) -> (B, N, D). The caller adds the residual.
    """

    def __init__(
        self, embed_dim: int = 768, num_heads: int = 12, attention_dropout: float = 0.0, layer_norm_eps: float = 1e-6
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        """With ``class_token_only`` only the first token attends (to all of them): output (B, 1, D)."""
        batch, length, width = tokens.shape
        normed = self.layer_norm(tokens)
        if class_token_only:
            # The fused projection's rows are q, k, v: project the class token to q and every token to k, v.
            q = F.linear(normed[:, :1], self.qkv.weight[:width], self.qkv.bias[:width])
            q = q.view(batch, 1, self.num_heads, -1).transpose(1, 2)
            kv = F.linear(normed, self.qkv.weight[width:], self.qkv.bias[width:])
            k, v = kv.view(batch, length, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            # (B, N, 3, heads, head_dim) -> three tensors of (B, heads, N, head_dim)
            q, k, v = self.qkv(normed).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attended = attention(q, k, v, self.attention_dropout if self.training else 0.0)
        return self.proj(attended.transpose(1, 2).reshape(batch, q.shape[2], width))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v for (B, heads, N, head_dim) tensors, with dropout on the weights.

    Fused (``scaled_dot_product_attention``) except for bfloat16 on a CPU with native bfloat16 (AVX512_BF16,
    AMX), where two batched matmuls and a softmax are faster than SDPA's flash kernel (ViT-B/16 shapes, torch
    2.14: 1.6-1.7x forward, 2.4x forward + backward; benchmarks/attention.py). The two agree to bfloat16 rounding.
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and NATIVE_BF16_CPU:
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return F.dropout(weights.softmax(dim=-1), dropout) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)


class MLPBlock(nn.Module):
    """Pre-norm feed-forward: LayerNorm -> Linear(D, M) -> GELU -> Linear(M, D), dropout after each Linear.

    (B, N, D) -> (B, N, D). The caller adds the residual.
    """

    def __init__(self, embed_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0, layer_norm_eps: float = 1e-6):
        super().__init__()
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.fc1 = nn.Linear(embed_dim, mlp_dim)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.gelu(self.fc1(self.layer_norm(tokens))))
        return self.dropout(self.fc2(hidden))


class TransformerEncoderBlock(nn.Module):
    """One encoder layer: x + msa_block(x), then x + mlp_block(x). (B, N, D) -> (B, N, D).

    With ``drop_path > 0`` each residual branch is dropped per sample during training (stochastic depth).
    """

    def __init__(
        self,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.msa_block = MultiheadSelfAttentionBlock(embed_dim, num_heads, attention_dropout, layer_norm_eps)
        self.mlp_block = MLPBlock(embed_dim, mlp_dim, dropout, layer_norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        """With ``class_token_only`` the output is the class token's alone, (B, 1, D)."""
        attended = self.drop_path(self.msa_block(tokens, class_token_only))
        tokens = (tokens[:, :1] if class_token_only else tokens) + attended
        return tokens + self.drop_path(self.mlp_block(tokens))


class ViT(nn.Module):
    """Vision Transformer classifier. Defaults build ViT-B/16 at 224x224 (86.6M parameters at 1000 classes).

    Args:
        num_classes: size of the classifier output.
        image_size: side of the square RGB input the position embedding is laid out for.
        patch_size: side of each square patch; ``image_size`` must be a multiple of it.
        embed_dim: token width D; must be divisible by ``num_heads``.
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_dim: hidden width M of each MLP block.
        dropout: dropout on the tokens after adding position embeddings and after each MLP linear layer
            (torchvision's ``dropout``).
        attention_dropout: dropout on attention weights.
        layer_norm_eps: epsilon of every LayerNorm (1e-6 as in torchvision, timm and JAX).
        drop_path_rate: stochastic depth rate of the last block; block i uses rate * i / (depth - 1)
            (DeiT, timm). 0 disables it.
        grad_checkpointing: recompute each encoder block's activations in the backward pass instead of
            storing them (less memory for large batches or ViT-L, about a third more compute).
        position_embedding: ``learned`` (the paper) or ``sincos``: fixed 2D sine-cosine positions (MoCo v3,
            Chen et al. 2021; Beyer et al. 2022), which need no learning (small datasets). Kept as a buffer of
            the same name, so checkpoints keep their layout.
        pooling: what the classifier reads: ``token`` (the class token, as the paper) or ``mean`` (the mean of
            the patch tokens, timm's ``global_pool="avg"``; Beyer et al. 2022).
        patch_drop_rate: in training, drop this fraction of each image's patch tokens after the position
            embedding (:func:`~vitlit.models.layers.drop_patches`); evaluation sees every token. 0 disables it.
        attention_init: ``default`` (truncated normal) or ``mimetic`` (:mod:`vitlit.models.mimetic_init`).

    ``forward`` maps images (B, 3, H, W) to logits (B, num_classes). Inputs of another size than
    ``image_size`` work too (same patch size): the position embedding is resampled on the fly.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        position_embedding: str = "learned",
        pooling: str = "token",
        patch_drop_rate: float = 0.0,
        attention_init: str = "default",
    ):
        super().__init__()
        _check_arguments(
            num_classes=num_classes,
            image_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            drop_path_rate=drop_path_rate,
            patch_drop_rate=patch_drop_rate,
        )
        if position_embedding not in POSITION_EMBEDDINGS:
            choices = ", ".join(POSITION_EMBEDDINGS)
            raise ValueError(f"ViT argument position_embedding={position_embedding!r} is not one of: {choices}")
        if position_embedding == "sincos" and embed_dim % 4:
            raise ValueError(f"ViT position_embedding=sincos needs embed_dim divisible by 4, got {embed_dim}")
        for key, value, known in (("pooling", pooling, POOLINGS), ("attention_init", attention_init, ATTENTION_INITS)):
            if value not in known:
                raise ValueError(f"ViT argument {key}={value!r} is not one of: {', '.join(known)}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        self.pooling = pooling
        self.patch_drop_rate = patch_drop_rate
        self.attention_init = attention_init
        grid_side = image_size // patch_size

        self.patch_embedding = PatchEmbedding(3, patch_size, embed_dim)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if position_embedding == "learned":
            self.position_embedding = nn.Parameter(torch.zeros(1, 1 + grid_side**2, embed_dim))
        else:
            self.register_buffer("position_embedding", sincos_position_embedding(grid_side, embed_dim))
        self.embedding_dropout = nn.Dropout(dropout)
        drop_path_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.transformer_encoder = nn.Sequential(
            *(
                TransformerEncoderBlock(embed_dim, num_heads, mlp_dim, attention_dropout, dropout, layer_norm_eps, rate)
                for rate in drop_path_rates
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=nn.LayerNorm(embed_dim, eps=layer_norm_eps),
                head=nn.Linear(embed_dim, num_classes),
            )
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as timm does for ViT: truncated normal(0.02) for tokens and linear weights,
        zero biases, and a zero classifier head (so training starts from uniform predictions)."""
        nn.init.trunc_normal_(self.class_embedding, std=0.02)
        if isinstance(self.position_embedding, nn.Parameter):
            nn.init.trunc_normal_(self.position_embedding, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch projection is a linear map of flattened patches: LeCun-normal on its fan-in (timm, JAX).
        patcher = self.patch_embedding.patcher
        nn.init.trunc_normal_(patcher.weight, std=math.sqrt(1.0 / patcher.weight[0].numel()))
        nn.init.zeros_(patcher.bias)
        if self.attention_init == "mimetic":
            for block in self.transformer_encoder:
                mimetic_init_(block.msa_block.qkv, block.msa_block.proj, block.msa_block.num_heads)
        self.reset_classifier(self.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier's linear layer with a zero-initialised one of ``num_classes`` outputs."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        old = self.classifier.head
        self.classifier.head = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        nn.init.zeros_(self.classifier.head.weight)
        nn.init.zeros_(self.classifier.head.bias)
        self.num_classes = num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn gradient checkpointing of the encoder blocks on or off (timm's method of the same name)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that weight decay should skip (besides biases and norm weights)."""
        return {"class_embedding", "position_embedding"}

    def patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """The (rows, columns) of patches that ``images`` (B, C, H, W) are cut into."""
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the encoder's input tokens (B, 1 + N, D): patches, class token, positions."""
        tokens = self.patch_embedding(images)
        class_token = self.class_embedding.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([class_token, tokens], dim=1)
        grid = self.patch_grid(images)
        return self.embedding_dropout(tokens + resample_position_embedding(self.position_embedding, grid))

    def drop_patches(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """In training with ``patch_drop_rate``: :func:`drop_patches` (tokens, kept patch indices (B, K)).
        Otherwise (tokens, None). Positions are already added, so the kept tokens still know where they sit."""
        if not self.training or not self.patch_drop_rate:
            return tokens, None
        return drop_patches(tokens, self.patch_drop_rate)

    def encode(self, tokens: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        """Run the encoder blocks on (B, 1 + N, D) tokens. With ``class_token_only`` the last block computes
        and returns the class token alone, (B, 1, D): the same values, for 7% fewer FLOPs in ViT-B/16."""
        last = len(self.transformer_encoder) - 1
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.transformer_encoder):
            only = class_token_only and index == last
            if checkpointed:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, only, use_reentrant=False)
            else:
                tokens = block(tokens, only)
        return tokens

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> encoded tokens (B, 1 + N, D), class token first, before the final norm
        (in training with ``patch_drop_rate``, the class token and the kept patches' tokens)."""
        tokens, _ = self.drop_patches(self.embed(images))
        return self.encode(tokens)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded tokens (B, 1 + N, D) -> what the classifier reads (B, D): the class token, or the mean
        patch token with ``pooling="mean"``."""
        return tokens[:, 1:].mean(dim=1) if self.pooling == "mean" else tokens[:, 0]

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded tokens (B, 1 + N, D) -> logits (B, num_classes), read off ``pool``."""
        return self.classifier(self.pool(tokens))

    def pre_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> what the classifier's linear head reads (B, D): pooled, normalised tokens.

        ``classifier.head(pre_logits(x))`` is ``forward(x)`` in eval mode (the frozen-backbone feature cache)."""
        tokens = self.encode(self.embed(images), class_token_only=self.pooling == "token")
        return self.classifier.norm(self.pool(tokens))

    def forward(
        self, images: torch.Tensor, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (B, 3, H, W) -> logits (B, num_classes).

        With ``return_tokens`` -> (logits, encoded tokens (B, 1 + K, D) before the final norm, kept patch indices
        (B, K) or None): what auxiliary losses read, from the same (and so the same compiled) forward pass.
        """
        tokens, kept = self.drop_patches(self.embed(images))
        # With class-token pooling only the class token reaches the classifier: the last block computes nothing else.
        tokens = self.encode(tokens, class_token_only=self.pooling == "token" and not return_tokens)
        logits = self.forward_head(tokens)
        return (logits, tokens, kept) if return_tokens else logits


POSITION_EMBEDDINGS = ("learned", "sincos")
POOLINGS = ("token", "mean")
ATTENTION_INITS = ("default", "mimetic")


def _check_arguments(**arguments: float) -> None:
    for name in (
        "num_classes",
        "image_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_dim",
    ):
        value = arguments[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ViT argument {name} must be a positive integer, got {value!r}")
    for name in ("dropout", "attention_dropout", "drop_path_rate", "patch_drop_rate"):
        if not 0.0 <= arguments[name] < 1.0:
            raise ValueError(f"ViT argument {name} must be a probability in [0, 1), got {arguments[name]!r}")
    if arguments["embed_dim"] % arguments["num_heads"]:
        raise ValueError(
            f"ViT embed_dim={arguments['embed_dim']} is not divisible by num_heads={arguments['num_heads']}; "
            "pick a width that is a multiple of the head count (e.g. 768 with 12 heads)"
        )
    if arguments["image_size"] % arguments["patch_size"]:
        raise ValueError(
            f"ViT image_size={arguments['image_size']} is not divisible by patch_size={arguments['patch_size']}; "
            "pick an image size that is a multiple of the patch size (e.g. 224 with 16)"
        )
