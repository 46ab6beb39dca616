"""Pretrained ViT checkpoints in, trained models out: one key table per checkpoint format.

Formats read (detected from the keys): torchvision ``vit_b_16`` state dicts, timm ``vit_base_patch16_224``
checkpoints, Hugging Face ViT checkpoints with 4.x (``encoder.layer.N.attention.attention.query``) or 5.x
(``layers.N.attention.q_proj``) names, original Google ``.npz`` files (vision_transformer and big_vision
layouts) and vitlit's own state dicts or Lightning checkpoints (``vitlit.export`` writes torchvision and
timm files). Files are read with ``safetensors``, ``numpy.load(allow_pickle=False)`` or
``torch.load(weights_only=True)``: a checkpoint can never run code.

Each table maps a parameter name of :class:`vitlit.model.ViT` to the checkpoint's key (``{i}`` is the block
index); a tuple of keys is concatenated along dim 0 (Hugging Face keeps q, k and v apart, the model fuses
them). ``.npz`` entries also say how to turn a JAX kernel into a PyTorch weight.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vitlit.model import ViT, resample_position_embedding

log = logging.getLogger(__name__)

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
    to resample position embeddings, so a resampled checkpoint matches what that library would load.
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
)

VITLIT = CheckpointFormat(
    name="vitlit",
    signature="transformer_encoder.0.msa_block.qkv.weight",
    top={key: key for key in TIMM.top},
    block_prefix="transformer_encoder.{i}.",
    block={key: key for key in TIMM.block},
    head={key: key for key in TIMM.head},
    ignored=("relative_localization.",),  # ViTClassifier's training-only auxiliary head, not part of the ViT
)

FORMATS = (TORCHVISION, TIMM, HUGGINGFACE_5, HUGGINGFACE_4, JAX, BIG_VISION, VITLIT)

# torchvision's ViT architectures, by (patch size, width, depth).
TORCHVISION_ARCHITECTURES = {
    (16, 768, 12): "vit_b_16",
    (32, 768, 12): "vit_b_32",
    (16, 1024, 24): "vit_l_16",
    (32, 1024, 24): "vit_l_32",
    (14, 1280, 32): "vit_h_14",
}
HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedWeights:
    """What :func:`load_pretrained` did: the format it detected, how many tensors it copied, whether the
    classifier head came from the checkpoint, and the position-embedding grid it resampled from (if any)."""

    source: str
    format: str
    tensors: int
    head_loaded: bool
    resampled_from: tuple[int, int] | None = None


def read_checkpoint(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (or a Hugging Face folder) into a flat {key: tensor} dict, without running code.

    ``.safetensors`` via safetensors, ``.npz`` via ``numpy.load(allow_pickle=False)``, anything else via
    ``torch.load(weights_only=True)``. Training checkpoints that wrap the weights (``state_dict``,
    ``model``, ``state_dict_ema``) are unwrapped.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / name for name in HF_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} is a folder without {' or '.join(HF_FILES)}; point at the weights file")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return _unstack_scanned_blocks({key: torch.from_numpy(arrays[key].copy()) for key in arrays.files})
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds more than tensors (code or custom classes), so it was not loaded: vitlit only reads "
            "checkpoints with torch.load(weights_only=True). Re-save its state_dict, or use safetensors."
        ) from error
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    tensors = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors; expected a state dict")
    return tensors


def _unstack_scanned_blocks(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """big_vision's scanned layout stacks every block in ``Transformer/encoderblock/*`` (depth first): split it."""
    out = {}
    for key, value in arrays.items():
        head, marker, tail = key.partition("Transformer/encoderblock/")
        if not marker:
            out[key] = value
            continue
        for index, block_value in enumerate(value.unbind(0)):
            out[f"{head}Transformer/encoderblock_{index}/{tail}"] = block_value
    return out


def detect_format(state: Mapping[str, torch.Tensor]) -> tuple[CheckpointFormat, str]:
    """The checkpoint format whose signature key ``state`` has, and the prefix in front of its keys."""
    for candidate in FORMATS:
        for prefix in ("", *candidate.prefixes):
            if prefix + candidate.signature in state:
                return candidate, prefix
    keys = sorted(state)
    shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} keys)" if len(keys) > 6 else "")
    expected = "; ".join(f"{candidate.name}: {candidate.signature}" for candidate in FORMATS)
    raise ValueError(
        f"unknown checkpoint layout: unexpected keys {shown}; missing the keys every known format has "
        f"({expected}). Supported: torchvision, timm, Hugging Face ViT, JAX .npz and vitlit checkpoints."
    )


def few_keys(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_state_dict(
    state: Mapping[str, torch.Tensor], model: ViT, checkpoint_format: CheckpointFormat, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rename (and reshape) a checkpoint's tensors into the model's names.

    Returns (backbone, head): the converted tensors outside and inside the classifier head (the head
    empty when the checkpoint has none). Raises ``ValueError`` naming missing and unexpected keys.
    """
    state = {key.removeprefix(prefix): value for key, value in state.items()}
    rules = dict(checkpoint_format.top)
    for index in range(len(model.transformer_encoder)):
        block_prefix = checkpoint_format.block_prefix.format(i=index)
        for ours, theirs in checkpoint_format.block.items():
            source = _as_source(theirs)
            rules[f"transformer_encoder.{index}.{ours}"] = Source(
                tuple(block_prefix + key for key in source.keys), source.convert
            )

    if checkpoint_format is VITLIT:  # vitlit's own names: the tensors of options such as mlp_depthwise_conv too
        extra = (key for key in model.state_dict() if key not in rules and not key.startswith("classifier.head."))
        rules.update({key: key for key in extra})

    used: set[str] = set()
    backbone, missing = {}, []
    for ours, theirs in rules.items():
        source = _as_source(theirs)
        if all(key in state for key in source.keys):
            backbone[ours] = source.convert([state[key] for key in source.keys])
            used.update(source.keys)
        else:
            missing.extend(key for key in source.keys if key not in state)
    head = {}
    head_sources = {ours: _as_source(theirs) for ours, theirs in checkpoint_format.head.items()}
    if all(key in state for source in head_sources.values() for key in source.keys):
        for ours, source in head_sources.items():
            head[ours] = source.convert([state[key] for key in source.keys])
            used.update(source.keys)
    unexpected = [key for key in state if key not in used and not key.startswith(tuple(checkpoint_format.ignored))]
    if missing or unexpected:
        depth = len(model.transformer_encoder)
        raise ValueError(
            f"the {checkpoint_format.name} checkpoint does not fit this ViT (depth {depth}): "
            f"missing keys: {few_keys(missing) or 'none'}; unexpected keys: {few_keys(unexpected) or 'none'}. "
            "Build the ViT with the checkpoint's depth, width and patch size (e.g. model=vit_b16 for ViT-B/16)."
        )
    return backbone, head


def _as_source(theirs: str | tuple[str, ...] | Source) -> Source:
    if isinstance(theirs, Source):
        return theirs
    return Source((theirs,) if isinstance(theirs, str) else tuple(theirs))


def _fit_position_embedding(
    position_embedding: torch.Tensor, model: ViT, checkpoint_format: CheckpointFormat
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Resample the checkpoint's position grid to the model's, as the checkpoint's own library would."""
    if position_embedding.ndim == 2:  # some exports drop the leading batch dimension
        position_embedding = position_embedding.unsqueeze(0)
    if position_embedding.shape[1] == model.position_embedding.shape[1]:
        return position_embedding, None
    side = math.isqrt(position_embedding.shape[1] - 1)
    model_side = model.image_size // model.patch_size
    resampled = resample_position_embedding(
        position_embedding, (model_side, model_side), **checkpoint_format.resampling
    )
    return resampled, (side, side)


def torchvision_weights(name: str, patch_size: int, width: int, depth: int):
    """torchvision's weights enum member ``name`` (e.g. ``IMAGENET1K_V1``) of the ViT with this patch size,
    width and depth (``ViT_B_16_Weights.IMAGENET1K_V1`` for ViT-B/16). Nothing is downloaded here."""
    from torchvision.models import get_model_weights

    architecture = TORCHVISION_ARCHITECTURES.get((patch_size, width, depth))
    if architecture is None:
        raise ValueError(
            f"torchvision has no ViT with patch {patch_size}, width {width} and depth {depth}; "
            f"it has {', '.join(TORCHVISION_ARCHITECTURES.values())}"
        )
    weights_enum = get_model_weights(architecture)
    try:
        return weights_enum[name]
    except KeyError:
        choices = ", ".join(member.name for member in weights_enum)
        raise ValueError(f"torchvision:{name} is not a weight of {architecture}; choose one of {choices}") from None


def torchvision_state_dict(name: str, model: ViT) -> dict[str, torch.Tensor]:
    """Download (or read from torchvision's cache, ``$TORCH_HOME/hub/checkpoints``) the weights ``name`` of
    the torchvision ViT shaped like ``model``."""
    width = model.classifier.norm.normalized_shape[0]
    weights = torchvision_weights(name, model.patch_size, width, len(model.transformer_encoder))
    log.info("torchvision weights %s (%s), ImageNet-1k acc@1 %s", weights, weights.url, _acc1(weights))
    return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)


def _acc1(weights) -> str:
    metrics = weights.meta.get("_metrics", {})
    return str(next(iter(metrics.values()), {}).get("acc@1", "?"))


def load_pretrained(model: ViT, source: str | os.PathLike, *, load_head: bool = False) -> LoadedWeights:
    """Copy a pretrained checkpoint's weights into ``model`` (in place) and say what was loaded.

    Args:
        model: the ViT to fill; its depth, width and patch size must match the checkpoint's. Its
            LayerNorm eps stays as built (1e-6; Hugging Face configs default to 1e-12).
        source: a checkpoint file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.safetensors``, ``.npz``),
            a Hugging Face folder holding ``model.safetensors`` or ``pytorch_model.bin``, or
            ``torchvision:NAME`` (e.g. ``torchvision:IMAGENET1K_V1``), downloaded through torchvision's cache.
        load_head: also copy the checkpoint's classifier head when its class count equals the model's.
            Otherwise the head is re-initialised to zeros (as in the ViT paper's fine-tuning).

    The format is detected from the keys. A position embedding laid out for another image size is
    resampled to the model's grid with the interpolation the checkpoint's library uses.

    Raises:
        ValueError: unknown layout, missing or unexpected keys, another patch size or width, or a file
            that would need unpickling code.
    """
    text = os.fspath(source)
    if text.startswith("torchvision:"):
        state = torchvision_state_dict(text.removeprefix("torchvision:"), model)
    else:
        state = read_checkpoint(source)
    checkpoint_format, prefix = detect_format(state)
    backbone, head = convert_state_dict(state, model, checkpoint_format, prefix)

    backbone["position_embedding"], resampled_from = _fit_position_embedding(
        backbone["position_embedding"], model, checkpoint_format
    )
    own = model.state_dict()
    for key, value in backbone.items():
        if value.shape != own[key].shape:
            what = "patch size" if key.startswith("patch_embedding") else "shape"
            raise ValueError(
                f"{text}: {key} has {what} {tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in "
                "the model; build the ViT with the checkpoint's patch size, width and MLP size"
            )

    head_classes = head["classifier.head.bias"].shape[0] if head else None
    head_loaded = load_head and head_classes == model.num_classes
    if load_head and not head_loaded:
        found = f"{head_classes} classes" if head else "no classifier head"
        log.warning(
            "not loading the classifier head: the checkpoint has %s, the model %d classes", found, model.num_classes
        )
    extra = [key for key in own if key not in backbone and not key.startswith("classifier.head.")]
    if extra:
        raise ValueError(
            f"{text}: the model has weights a {checkpoint_format.name} checkpoint does not hold: {few_keys(extra)}; "
            "build the ViT without the options that add them (e.g. model.net.mlp_depthwise_conv=false, "
            "model.net.locality_self_attention=false) to load these weights"
        )
    copied = len(backbone) + (len(head) if head_loaded else 0)
    model.reset_classifier(model.num_classes)
    new_head = {f"classifier.head.{name}": value for name, value in model.classifier.head.state_dict().items()}
    model.load_state_dict({**backbone, **(head if head_loaded else new_head)}, strict=True)

    result = LoadedWeights(text, checkpoint_format.name, copied, head_loaded, resampled_from)
    log.info(
        "loaded %d tensors from %s (%s)%s; classifier head: %s",
        result.tensors,
        text,
        result.format,
        f"; position embedding resampled from {resampled_from[0]}x{resampled_from[1]} patches"
        if resampled_from
        else "",
        "loaded from the checkpoint" if head_loaded else f"new, zero-initialised, {model.num_classes} classes",
    )
    return result
