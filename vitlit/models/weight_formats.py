"""Checkpoint formats as data: one key table per library that publishes ViT weights.

Each table maps a parameter name of :class:`vitlit.models.vit.ViT` to the checkpoint's key (``{i}`` is the
block index); a tuple of keys is concatenated along dim 0 (Hugging Face keeps q, k and v apart, the model
fuses them). ``.npz`` entries also say how to turn a JAX kernel into a PyTorch weight.
:mod:`vitlit.models.weights` reads and converts with them; :mod:`vitlit.export` writes with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

Convert = Callable[[list[torch.Tensor]], torch.Tensor]


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


# JAX stores kernels input-major; PyTorch stores weights output-major.
def _jax_conv(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0].permute(3, 2, 0, 1)  # (h, w, in, out) -> (out, in, h, w)


def _jax_dense(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0].T


def _jax_qkv_kernel(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([kernel.flatten(1).T for kernel in tensors])  # 3 x (D, heads, head_dim) -> (3D, D)


def _jax_qkv_bias(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([bias.flatten() for bias in tensors])  # 3 x (heads, head_dim) -> (3D,)


def _jax_out_kernel(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0].permute(2, 0, 1).flatten(1)  # (heads, head_dim, D) -> (D, D)


@dataclass(frozen=True)
class Source:
    """Checkpoint key(s) one model parameter comes from, and how to combine or reshape them."""

    keys: tuple[str, ...]
    convert: Convert = _concat


def _linear(ours: str, theirs: str) -> dict[str, str]:
    """``ours.weight -> theirs.weight`` and ``ours.bias -> theirs.bias``."""
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


def _qkv(ours: str, theirs: str, names: tuple[str, str, str]) -> dict[str, tuple[str, ...]]:
    return {
        f"{ours}.weight": tuple(f"{theirs}.{name}.weight" for name in names),
        f"{ours}.bias": tuple(f"{theirs}.{name}.bias" for name in names),
    }


@dataclass(frozen=True)
class CheckpointFormat:
    """How one library names (and shapes) a ViT's parameters.

    ``signature`` is a key (in block 0) only this format has; ``prefixes`` are wrappers that may precede
    every key (DDP's ``module.``, Lightning's ``model.``, Hugging Face's ``vit.``); ``ignored`` are key
    prefixes dropped on purpose; ``resampling`` are the ``F.interpolate`` options the library itself uses
    to resample position embeddings, so a resampled checkpoint matches what that library would load;
    ``layer_norm_eps`` is the LayerNorm epsilon the library's ViTs use (Hugging Face: ``ViTConfig``'s default,
    which a ``config.json`` may override), or None where it varies: a model built with another eps gives
    slightly different logits, and loading warns.
    """

    name: str
    signature: str
    top: Mapping[str, str | tuple[str, ...] | Source]
    block: Mapping[str, str | tuple[str, ...] | Source]
    block_prefix: str
    head: Mapping[str, str | Source]
    prefixes: tuple[str, ...] = ("module.", "model.")
    ignored: tuple[str, ...] = ()
    resampling: Mapping[str, object] = field(default_factory=lambda: {"mode": "bicubic"})
    layer_norm_eps: float | None = None


TORCHVISION = CheckpointFormat(
    name="torchvision",
    signature="encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
    top={
        **_linear("patch_embedding.patcher", "conv_proj"),
        "class_embedding": "class_token",
        "position_embedding": "encoder.pos_embedding",
        **_linear("classifier.norm", "encoder.ln"),
    },
    block_prefix="encoder.layers.encoder_layer_{i}.",
    block={
        **_linear("msa_block.layer_norm", "ln_1"),
        "msa_block.qkv.weight": "self_attention.in_proj_weight",
        "msa_block.qkv.bias": "self_attention.in_proj_bias",
        **_linear("msa_block.proj", "self_attention.out_proj"),
        **_linear("mlp_block.layer_norm", "ln_2"),
        **_linear("mlp_block.fc1", "mlp.0"),
        **_linear("mlp_block.fc2", "mlp.3"),
    },
    head=_linear("classifier.head", "heads.head"),
    # torchvision.models.vision_transformer.interpolate_embeddings
    resampling={"mode": "bicubic", "align_corners": True},
    layer_norm_eps=1e-6,
)

TIMM = CheckpointFormat(
    name="timm",
    signature="blocks.0.attn.qkv.weight",
    top={
        **_linear("patch_embedding.patcher", "patch_embed.proj"),
        "class_embedding": "cls_token",
        "position_embedding": "pos_embed",
        **_linear("classifier.norm", "norm"),
    },
    block_prefix="blocks.{i}.",
    block={
        **_linear("msa_block.layer_norm", "norm1"),
        **_linear("msa_block.qkv", "attn.qkv"),
        **_linear("msa_block.proj", "attn.proj"),
        **_linear("mlp_block.layer_norm", "norm2"),
        **_linear("mlp_block.fc1", "mlp.fc1"),
        **_linear("mlp_block.fc2", "mlp.fc2"),
    },
    head=_linear("classifier.head", "head"),
    # timm.models.vision_transformer.checkpoint_filter_fn
    resampling={"mode": "bicubic", "antialias": True},
    layer_norm_eps=1e-6,
)

_HF_TOP = {
    **_linear("patch_embedding.patcher", "embeddings.patch_embeddings.projection"),
    "class_embedding": "embeddings.cls_token",
    "position_embedding": "embeddings.position_embeddings",
    **_linear("classifier.norm", "layernorm"),
}
_HF_BLOCK_NORMS = {
    **_linear("msa_block.layer_norm", "layernorm_before"),
    **_linear("mlp_block.layer_norm", "layernorm_after"),
}

HUGGINGFACE_5 = CheckpointFormat(
    name="huggingface (5.x names)",
    signature="layers.0.attention.q_proj.weight",
    top=_HF_TOP,
    block_prefix="layers.{i}.",
    block={
        **_HF_BLOCK_NORMS,
        **_qkv("msa_block.qkv", "attention", ("q_proj", "k_proj", "v_proj")),
        **_linear("msa_block.proj", "attention.o_proj"),
        **_linear("mlp_block.fc1", "mlp.fc1"),
        **_linear("mlp_block.fc2", "mlp.fc2"),
    },
    head=_linear("classifier.head", "classifier"),
    prefixes=("vit.", "module.", "model."),
    ignored=("pooler.",),  # ViTModel's dense+tanh pooler; the classifier never uses it
    layer_norm_eps=1e-12,
)

HUGGINGFACE_4 = CheckpointFormat(
    name="huggingface (4.x names)",
    signature="encoder.layer.0.attention.attention.query.weight",
    top=_HF_TOP,
    block_prefix="encoder.layer.{i}.",
    block={
        **_HF_BLOCK_NORMS,
        **_qkv("msa_block.qkv", "attention.attention", ("query", "key", "value")),
        **_linear("msa_block.proj", "attention.output.dense"),
        **_linear("mlp_block.fc1", "intermediate.dense"),
        **_linear("mlp_block.fc2", "output.dense"),
    },
    head=_linear("classifier.head", "classifier"),
    prefixes=("vit.", "module.", "model."),
    ignored=("pooler.",),
    layer_norm_eps=1e-12,
)


def _jax_block(attention: str, norm2: str, mlp: str) -> dict[str, Source]:
    qkv = tuple(f"{attention}/{name}" for name in ("query", "key", "value"))
    return {
        "msa_block.layer_norm.weight": Source(("LayerNorm_0/scale",)),
        "msa_block.layer_norm.bias": Source(("LayerNorm_0/bias",)),
        "msa_block.qkv.weight": Source(tuple(f"{key}/kernel" for key in qkv), _jax_qkv_kernel),
        "msa_block.qkv.bias": Source(tuple(f"{key}/bias" for key in qkv), _jax_qkv_bias),
        "msa_block.proj.weight": Source((f"{attention}/out/kernel",), _jax_out_kernel),
        "msa_block.proj.bias": Source((f"{attention}/out/bias",)),
        "mlp_block.layer_norm.weight": Source((f"{norm2}/scale",)),
        "mlp_block.layer_norm.bias": Source((f"{norm2}/bias",)),
        "mlp_block.fc1.weight": Source((f"{mlp}/Dense_0/kernel",), _jax_dense),
        "mlp_block.fc1.bias": Source((f"{mlp}/Dense_0/bias",)),
        "mlp_block.fc2.weight": Source((f"{mlp}/Dense_1/kernel",), _jax_dense),
        "mlp_block.fc2.bias": Source((f"{mlp}/Dense_1/bias",)),
    }


_JAX_TOP = {
    "patch_embedding.patcher.weight": Source(("embedding/kernel",), _jax_conv),
    "patch_embedding.patcher.bias": Source(("embedding/bias",)),
    "class_embedding": Source(("cls",)),
    "classifier.norm.weight": Source(("Transformer/encoder_norm/scale",)),
    "classifier.norm.bias": Source(("Transformer/encoder_norm/bias",)),
}
_JAX_HEAD = {
    "classifier.head.weight": Source(("head/kernel",), _jax_dense),
    "classifier.head.bias": Source(("head/bias",)),
}
# timm's .npz loader (_load_weights) resamples bilinearly, without antialiasing.
_JAX_RESAMPLING = {"mode": "bilinear"}

JAX = CheckpointFormat(
    name="jax npz (vision_transformer)",
    signature="Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
    top={**_JAX_TOP, "position_embedding": Source(("Transformer/posembed_input/pos_embedding",))},
    block_prefix="Transformer/encoderblock_{i}/",
    block=_jax_block("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    head=_JAX_HEAD,
    prefixes=("opt/target/",),
    ignored=("pre_logits/",),  # the representation layer of old IN-21k files; not part of ViT-B/16 at 1k
    resampling=_JAX_RESAMPLING,
    layer_norm_eps=1e-6,
)

BIG_VISION = CheckpointFormat(
    name="jax npz (big_vision)",
    signature="Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel",
    top={**_JAX_TOP, "position_embedding": Source(("pos_embedding",))},
    block_prefix="Transformer/encoderblock_{i}/",
    block=_jax_block("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
    head=_JAX_HEAD,
    prefixes=("params/",),
    resampling=_JAX_RESAMPLING,
    layer_norm_eps=1e-6,
)

VITLIT = CheckpointFormat(
    name="vitlit",
    signature="transformer_encoder.0.msa_block.qkv.weight",
    top={key: key for key in TIMM.top},
    block_prefix="transformer_encoder.{i}.",
    block={key: key for key in TIMM.block},
    head={key: key for key in TIMM.head},
    # ViTClassifier's training-only auxiliary heads, not part of the ViT (instance_head: vitlit <= 06f6cff).
    ignored=("relative_localization.", "locality_guidance.", "instance_head."),
)

# The hand-built ViT of the notebook vitlit replaces (mrdbourke/pytorch-deep-learning 08): vitlit's module names,
# but nn.MultiheadAttention (in_proj rows q, k, v, as torchvision's), Sequential indices in the MLP and the
# classifier, and nn.LayerNorm's default eps. Its classifier's LayerNorm is the encoder's only final norm, as ours.
NOTEBOOK = CheckpointFormat(
    name="notebook (pytorch-deep-learning 08)",
    signature="transformer_encoder.0.msa_block.multihead_attn.in_proj_weight",
    top={
        **_linear("patch_embedding.patcher", "patch_embedding.patcher"),
        "class_embedding": "class_embedding",
        "position_embedding": "position_embedding",
        **_linear("classifier.norm", "classifier.0"),
    },
    block_prefix="transformer_encoder.{i}.",
    block={
        **_linear("msa_block.layer_norm", "msa_block.layer_norm"),
        "msa_block.qkv.weight": "msa_block.multihead_attn.in_proj_weight",
        "msa_block.qkv.bias": "msa_block.multihead_attn.in_proj_bias",
        **_linear("msa_block.proj", "msa_block.multihead_attn.out_proj"),
        **_linear("mlp_block.layer_norm", "mlp_block.layer_norm"),
        **_linear("mlp_block.fc1", "mlp_block.mlp.0"),
        **_linear("mlp_block.fc2", "mlp_block.mlp.3"),
    },
    head=_linear("classifier.head", "classifier.1"),
    layer_norm_eps=1e-5,
)

FORMATS = (TORCHVISION, TIMM, HUGGINGFACE_5, HUGGINGFACE_4, JAX, BIG_VISION, NOTEBOOK, VITLIT)

# torchvision's ViT architectures, by (patch size, width, depth).
TORCHVISION_ARCHITECTURES = {
    (16, 768, 12): "vit_b_16",
    (32, 768, 12): "vit_b_32",
    (16, 1024, 24): "vit_l_16",
    (32, 1024, 24): "vit_l_32",
    (14, 1280, 32): "vit_h_14",
}
