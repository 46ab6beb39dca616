"""A Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") in plain PyTorch.

The module tree reads like the paper and like the notebook vitlit replaces::

    ViT
    ├─ patch_embedding      PatchEmbedding: Conv2d(3 -> D, kernel=stride=patch) + Flatten
    ├─ class_embedding      (1, 1, D) learned token prepended to the patch tokens
    ├─ position_embedding   (1, 1 + N, D) learned (or fixed 2D sin-cos), added to every token
    ├─ embedding_dropout    (then, in training with patch_drop_rate, a random subset of the patch tokens)
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

from vitlit.tokenizers import ConvStem, ShiftedPatchTokenization


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
        self,
        embed_dim: int = 768,
        num_heads: int = 12,
        attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
        locality: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.locality = locality
        if locality:
            # Locality self-attention (Lee et al. 2021): a learned softmax temperature, starting at the usual
            # 1 / sqrt(head_dim), and no token attends to itself, which sharpens attention on small datasets.
            self.log_scale = nn.Parameter(torch.tensor(math.log((embed_dim // num_heads) ** -0.5)))

    def scale(self) -> torch.Tensor | float:
        """The factor on q k^T: learned with ``locality``, else 1 / sqrt(head_dim)."""
        return self.log_scale.exp() if self.locality else (self.qkv.in_features // self.num_heads) ** -0.5

    def attention_mask(self, queries: int, keys: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (queries, keys) mask of allowed pairs, queries being the first tokens: with ``locality``
        everything but the diagonal; else None (all allowed)."""
        if not self.locality:
            return None
        return ~torch.eye(keys, dtype=torch.bool, device=device)[:queries]

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
        mask = self.attention_mask(q.shape[2], length, tokens.device)
        attended = attention(q, k, v, self.attention_dropout if self.training else 0.0, self.scale(), mask)
        return self.proj(attended.transpose(1, 2).reshape(batch, q.shape[2], width))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout: float = 0.0,
    scale: torch.Tensor | float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(scale q k^T) v for (B, heads, N, head_dim) tensors, with dropout on the weights.

    ``scale`` defaults to 1 / sqrt(head_dim) and may be a tensor (learned); ``mask`` is a boolean (Nq, Nk)
    tensor of the pairs that may attend (None: all).

    Fused (``scaled_dot_product_attention``) except for bfloat16 on the CPU, where two batched matmuls and a
    softmax are faster than SDPA's flash kernel (ViT-B/16 shapes, torch 2.14: 1.6-1.7x forward, 2.4x
    forward + backward; benchmarks/attention.py). The two agree to bfloat16 rounding.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if isinstance(scale, torch.Tensor):  # SDPA takes a float scale only: fold a learned one into q
        q, scale = q * scale.to(q.dtype), 1.0
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        weights = (q * scale) @ k.transpose(-2, -1)
        if mask is not None:
            weights = weights.masked_fill(~mask, float("-inf"))
        return F.dropout(weights.softmax(dim=-1), dropout) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


class MLPBlock(nn.Module):
    """Pre-norm feed-forward: LayerNorm -> Linear(D, M) -> GELU -> Linear(M, D), dropout after each Linear.

    With ``depthwise_conv`` a 3x3 depthwise convolution over the patch grid follows the first Linear
    (PVT v2's convolutional feed-forward, Wang et al. 2022; LocalViT, Li et al. 2021): each token mixes with
    its 8 neighbours, a locality prior that ViTs otherwise learn only from a lot of data. The class token
    skips the convolution. (B, N, D) -> (B, N, D). The caller adds the residual.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        mlp_dim: int = 3072,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
        depthwise_conv: bool = False,
    ):
        super().__init__()
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.fc1 = nn.Linear(embed_dim, mlp_dim)
        self.depthwise_conv = nn.Conv2d(mlp_dim, mlp_dim, 3, padding=1, groups=mlp_dim) if depthwise_conv else None
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(mlp_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``grid`` (rows, columns) lays the tokens after the first (the class token) out for ``depthwise_conv``;
        None: a square grid."""
        hidden = self.fc1(self.layer_norm(tokens))
        if self.depthwise_conv is not None and hidden.shape[1] > 1:
            hidden = torch.cat([hidden[:, :1], self._convolve(hidden[:, 1:], grid)], dim=1)
        hidden = self.dropout(self.gelu(hidden))
        return self.dropout(self.fc2(hidden))

    def _convolve(self, patches: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        batch, count, channels = patches.shape
        rows, columns = grid or (math.isqrt(count),) * 2
        if rows * columns != count:
            raise ValueError(f"{count} patch tokens do not fill a {rows}x{columns} grid: pass the grid")
        # (B, N, M) viewed as (B, M, rows, columns) is channels-last in memory: no copy either way.
        image = patches.view(batch, rows, columns, channels).permute(0, 3, 1, 2)
        return self.depthwise_conv(image).permute(0, 2, 3, 1).reshape(batch, count, channels)


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
        mlp_dropout: float = 0.0,
        layer_norm_eps: float = 1e-6,
        drop_path: float = 0.0,
        locality: bool = False,
        mlp_depthwise_conv: bool = False,
    ):
        super().__init__()
        self.msa_block = MultiheadSelfAttentionBlock(embed_dim, num_heads, attention_dropout, layer_norm_eps, locality)
        self.mlp_block = MLPBlock(embed_dim, mlp_dim, mlp_dropout, layer_norm_eps, mlp_depthwise_conv)
        self.drop_path = DropPath(drop_path)

    def forward(
        self, tokens: torch.Tensor, class_token_only: bool = False, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """With ``class_token_only`` the output is the class token's alone, (B, 1, D). ``grid``: the patch grid
        (rows, columns) for the MLP's depthwise convolution (None: square)."""
        attended = self.drop_path(self.msa_block(tokens, class_token_only))
        tokens = (tokens[:, :1] if class_token_only else tokens) + attended
        return tokens + self.drop_path(self.mlp_block(tokens, grid))


class ViT(nn.Module):
    """Vision Transformer classifier. Defaults build ViT-B/16 at 224x224 (86.6M parameters at 1000 classes).

    Args:
        num_classes: size of the classifier output.
        image_size: side of the square input the position embedding is laid out for.
        patch_size: side of each square patch; ``image_size`` must be a multiple of it.
        in_channels: image channels.
        embed_dim: token width D; must be divisible by ``num_heads``.
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_dim: hidden width M of each MLP block.
        embedding_dropout: dropout on tokens after adding position embeddings.
        attention_dropout: dropout on attention weights.
        mlp_dropout: dropout after each MLP linear layer.
        layer_norm_eps: epsilon of every LayerNorm (1e-6 as in torchvision, timm and JAX).
        drop_path_rate: stochastic depth rate of the last block; block i uses rate * i / (depth - 1)
            (DeiT, timm). 0 disables it.
        grad_checkpointing: recompute each encoder block's activations in the backward pass instead of
            storing them (less memory for large batches or ViT-L, about a third more compute).
        stem: how images become tokens: ``patch`` (the paper's linear patch projection), ``conv`` or
            ``shifted_patch`` (see :mod:`vitlit.tokenizers`; they help on small datasets).
        position_embedding: ``learned`` (the paper) or ``sincos``: fixed 2D sine-cosine positions (MoCo v3,
            Chen et al. 2021; Beyer et al. 2022), which need no learning (small datasets). Kept as a buffer of
            the same name, so checkpoints keep their layout.
        pooling: what the classifier reads: ``token`` (the class token, as the paper) or ``mean`` (the mean of
            the patch tokens, timm's ``global_pool="avg"``; Beyer et al. 2022).
        locality_self_attention: locality self-attention (Lee et al. 2021): a learned softmax temperature per
            block and no token attending to itself (small datasets).
        mlp_depthwise_conv: a 3x3 depthwise convolution over the patch grid inside every MLP block (PVT v2,
            Wang et al. 2022; LocalViT, Li et al. 2021): a locality prior for small datasets.
        patch_drop_rate: in training, drop this fraction of each image's patch tokens after the position
            embedding (:func:`drop_patches`): fewer tokens, faster steps; evaluation sees every token. 0 disables it.

    ``forward`` maps images (B, C, H, W) to logits (B, num_classes). Inputs of another size than
    ``image_size`` work too (same patch size): the position embedding is resampled on the fly.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        embedding_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        mlp_dropout: float = 0.1,
        layer_norm_eps: float = 1e-6,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        stem: str = "patch",
        position_embedding: str = "learned",
        pooling: str = "token",
        locality_self_attention: bool = False,
        mlp_depthwise_conv: bool = False,
        patch_drop_rate: float = 0.0,
    ):
        super().__init__()
        _check_arguments(
            num_classes=num_classes,
            image_size=image_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            embedding_dropout=embedding_dropout,
            attention_dropout=attention_dropout,
            mlp_dropout=mlp_dropout,
            drop_path_rate=drop_path_rate,
            patch_drop_rate=patch_drop_rate,
        )
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        num_patches = (image_size // patch_size) ** 2

        if stem not in STEMS:
            raise ValueError(f"ViT argument stem={stem!r} is not one of: {', '.join(STEMS)}")
        if position_embedding not in POSITION_EMBEDDINGS:
            choices = ", ".join(POSITION_EMBEDDINGS)
            raise ValueError(f"ViT argument position_embedding={position_embedding!r} is not one of: {choices}")
        if position_embedding == "sincos" and embed_dim % 4:
            raise ValueError(f"ViT position_embedding=sincos needs embed_dim divisible by 4, got {embed_dim}")
        if pooling not in POOLINGS:
            raise ValueError(f"ViT argument pooling={pooling!r} is not one of: {', '.join(POOLINGS)}")
        self.pooling = pooling
        if patch_drop_rate and mlp_depthwise_conv:
            raise ValueError(
                "ViT patch_drop_rate > 0 leaves holes in the patch grid that mlp_depthwise_conv convolves; "
                "turn one of them off (model.net.patch_drop_rate=0 or model.net.mlp_depthwise_conv=false)"
            )
        self.patch_embedding = STEMS[stem](in_channels, patch_size, embed_dim)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if position_embedding == "learned":
            self.position_embedding = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        else:
            self.register_buffer("position_embedding", sincos_position_embedding(image_size // patch_size, embed_dim))
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.patch_drop_rate = patch_drop_rate
        drop_path_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        locality = locality_self_attention
        self.transformer_encoder = nn.Sequential(
            *(
                TransformerEncoderBlock(
                    embed_dim,
                    num_heads,
                    mlp_dim,
                    attention_dropout,
                    mlp_dropout,
                    layer_norm_eps,
                    rate,
                    locality,
                    mlp_depthwise_conv,
                )
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
        if isinstance(self.patch_embedding, PatchEmbedding):
            # The patch projection is a linear map of flattened patches: LeCun-normal on its fan-in (timm, JAX).
            patcher = self.patch_embedding.patcher
            nn.init.trunc_normal_(patcher.weight, std=math.sqrt(1.0 / patcher.weight[0].numel()))
            nn.init.zeros_(patcher.bias)
        for block in self.transformer_encoder:
            conv = block.mlp_block.depthwise_conv
            if conv is not None:  # He-normal on the 3x3 fan-out, as PVT v2
                nn.init.normal_(conv.weight, std=math.sqrt(2.0 / conv.weight[0].numel()))
                nn.init.zeros_(conv.bias)
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

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that weight decay should skip (besides biases and norm weights)."""
        return {"class_embedding", "position_embedding"}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> encoded tokens (B, 1 + N, D), class token first, before the final norm
        (in training with ``patch_drop_rate``, the class token and the kept patches' tokens)."""
        tokens, _ = self.drop_patches(self.embed(images))
        return self.encode(tokens, grid=self.patch_grid(images))

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

    def encode(
        self, tokens: torch.Tensor, class_token_only: bool = False, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Run the encoder blocks on (B, 1 + N, D) tokens. With ``class_token_only`` the last block computes
        and returns the class token alone, (B, 1, D): the same values, for 7% fewer FLOPs in ViT-B/16.
        ``grid``: the patch grid (rows, columns), needed by ``mlp_depthwise_conv`` when it is not square."""
        last = len(self.transformer_encoder) - 1
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.transformer_encoder):
            only = class_token_only and index == last
            if checkpointed:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, only, grid, use_reentrant=False)
            else:
                tokens = block(tokens, only, grid)
        return tokens

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded tokens (B, 1 + N, D) -> logits (B, num_classes), read off the class token (or the mean of
        the patch tokens with ``pooling="mean"``)."""
        return self.classifier(self.pool(tokens))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded tokens (B, 1 + N, D) -> what the classifier reads (B, D): the class token, or the mean
        patch token with ``pooling="mean"``."""
        return tokens[:, 1:].mean(dim=1) if self.pooling == "mean" else tokens[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # With class-token pooling only the class token reaches the classifier: the last block computes nothing else.
        tokens, _ = self.drop_patches(self.embed(images))
        return self.forward_head(self.encode(tokens, self.pooling == "token", self.patch_grid(images)))


STEMS = {"patch": PatchEmbedding, "conv": ConvStem, "shifted_patch": ShiftedPatchTokenization}
POSITION_EMBEDDINGS = ("learned", "sincos")
POOLINGS = ("token", "mean")


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


def _check_arguments(**arguments: float) -> None:
    for name in (
        "num_classes",
        "image_size",
        "patch_size",
        "in_channels",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_dim",
    ):
        value = arguments[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ViT argument {name} must be a positive integer, got {value!r}")
    for name in ("embedding_dropout", "attention_dropout", "mlp_dropout", "drop_path_rate", "patch_drop_rate"):
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
