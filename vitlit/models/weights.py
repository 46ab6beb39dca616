"""Pretrained ViT checkpoints in: read a file, detect its format, convert its keys, load them into a ViT.

Formats read (detected from the keys): torchvision ``vit_b_16`` state dicts, timm ``vit_base_patch16_224``
checkpoints, Hugging Face ViT checkpoints with 4.x (``encoder.layer.N.attention.attention.query``) or 5.x
(``layers.N.attention.q_proj``) names, original Google ``.npz`` files (vision_transformer and big_vision
layouts), the state dicts of the notebook vitlit replaces (pytorch-deep-learning 08's hand-built ViT) and
vitlit's own state dicts or Lightning checkpoints (``vitlit.export`` writes torchvision and timm files).
Sources: a file or folder, ``torchvision:NAME`` or ``hf-hub:org/name`` (the Hugging Face Hub, through
``huggingface_hub`` and its cache). Files are read with ``safetensors``, ``numpy.load(allow_pickle=False)`` or
``torch.load(weights_only=True)``: a checkpoint can never run code.

The key tables themselves are data, in :mod:`vitlit.models.weight_formats`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vitlit.models.layers import resample_position_embedding
from vitlit.models.vit import ViT
from vitlit.models.weight_downloads import (
    CONFIG_FILE,
    HF_FILES,
    HUB_PREFIX,
    hub_checkpoint_path,
    torchvision_state_dict,
)
from vitlit.models.weight_formats import FORMATS, CheckpointFormat, Source

log = logging.getLogger(__name__)


@dataclass
class LoadedWeights:
    """What :func:`load_pretrained` did: the format it detected, how many tensors it copied, whether the
    classifier head came from the checkpoint, and the position-embedding grid it resampled from (if any)."""

    source: str
    format: str
    tensors: int
    head_loaded: bool
    resampled_from: tuple[int, int] | None = None


def read_weight_file(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a pretrained weight file (or a Hugging Face folder) into a flat {key: tensor} dict, without running code.

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
        f"({expected}). Supported: torchvision, timm, Hugging Face ViT, JAX .npz, the pytorch-deep-learning "
        "notebook's ViT and vitlit checkpoints."
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


def _short(number: float) -> str:
    return f"{number:g}".replace("e-0", "e-")  # 1e-5, not 1e-05: what a user types


def _warn_on_layer_norm_eps(model: ViT, checkpoint_format: CheckpointFormat) -> None:
    """The logits differ slightly from the original model's unless the LayerNorm eps is the checkpoint's."""
    expected, eps = checkpoint_format.layer_norm_eps, model.classifier.norm.eps
    if expected is None or eps == expected:
        return
    log.warning(
        "%s checkpoints are usually trained with LayerNorm eps %s, this ViT has %s: its logits differ slightly "
        "from the original model's. For the same logits set model.net.layer_norm_eps=%s (ViT(layer_norm_eps=%s))",
        checkpoint_format.name,
        _short(expected),
        _short(eps),
        _short(expected),
        _short(expected),
    )


def class_names_beside(weights: Path) -> list[str] | None:
    """The class names in the ``config.json`` of a folder's weights (``model.safetensors`` or a folder):
    transformers' ``id2label``, timm's ``label_names``; None without them (or with transformers' ``LABEL_i``)."""
    folder = weights if weights.is_dir() else weights.parent
    if not weights.is_dir() and weights.name not in HF_FILES:
        return None  # a loose weights file: a config.json beside it may describe anything
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(config.get("label_names"), list):
        names = [str(name) for name in config["label_names"]]
    elif isinstance(config.get("id2label"), dict):
        names = [str(config["id2label"][key]) for key in sorted(config["id2label"], key=int)]
    else:
        return None
    return None if all(re.fullmatch(r"LABEL_\d+", name) for name in names) else names


def _head_for_classes(
    head: dict[str, torch.Tensor], theirs: Sequence[str] | None, ours: Sequence[str] | None
) -> dict[str, torch.Tensor] | None:
    """The checkpoint's head for classes ``ours``: as it is, with its rows reordered when it names the same
    classes in another order, or None when it names other classes. Unnamed classes are taken as they come."""
    if theirs is None or ours is None or list(theirs) == list(ours):
        return head
    if sorted(theirs) != sorted(ours):
        log.warning(
            "not loading the classifier head: the checkpoint's classes (%s) are not this model's (%s)",
            ", ".join(theirs),
            ", ".join(ours),
        )
        return None
    order = [list(theirs).index(name) for name in ours]
    log.info("the checkpoint's classifier head names the same classes in another order: its rows are reordered")
    return {key: value[order] for key, value in head.items()}


def load_pretrained(
    model: ViT, source: str | os.PathLike, *, load_head: bool = False, class_names: Sequence[str] | None = None
) -> LoadedWeights:
    """Copy a pretrained checkpoint's weights into ``model`` (in place) and say what was loaded.

    Args:
        model: the ViT to fill; its depth, width and patch size must match the checkpoint's. Its
            LayerNorm eps stays as built; a warning says when the checkpoint's format uses another (the
            notebook 1e-5, Hugging Face 1e-12, the others 1e-6).
        source: a checkpoint file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.safetensors``, ``.npz``),
            a Hugging Face folder holding ``model.safetensors`` or ``pytorch_model.bin``,
            ``torchvision:NAME`` (e.g. ``torchvision:IMAGENET1K_V1``), downloaded through torchvision's cache,
            or ``hf-hub:org/name[@revision]`` (e.g. ``hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``),
            downloaded through huggingface_hub's cache (:func:`hub_checkpoint_path`).
        load_head: also copy the checkpoint's classifier head when its class count equals the model's.
            Otherwise the head is re-initialised to zeros (as in the ViT paper's fine-tuning).
        class_names: the model's classes in output order. When the checkpoint is a folder whose ``config.json``
            names its classes (an exported transformers or timm folder), ``load_head`` copies the head only for
            the same classes, its rows reordered to ``class_names``; other classes get a new head.

    The format is detected from the keys. A position embedding laid out for another image size is
    resampled to the model's grid with the interpolation the checkpoint's library uses.

    Raises:
        ValueError: unknown layout, missing or unexpected keys, another patch size or width, or a file
            that would need unpickling code.
        FileNotFoundError: no such file, or ``hf-hub:`` weights neither cached nor downloadable.
    """
    text = os.fspath(source)
    their_classes = None
    if text.startswith("torchvision:"):
        state = torchvision_state_dict(text.removeprefix("torchvision:"), model)
    else:
        path = hub_checkpoint_path(text.removeprefix(HUB_PREFIX)) if text.startswith(HUB_PREFIX) else Path(source)
        state = read_weight_file(path)
        their_classes = class_names_beside(path.expanduser())
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
    if head_loaded:
        head = _head_for_classes(head, their_classes, class_names) or {}
        head_loaded = bool(head)
    if load_head and not head_loaded and head_classes != model.num_classes:
        found = f"{head_classes} classes" if head else "no classifier head"
        log.warning(
            "not loading the classifier head: the checkpoint has %s, the model %d classes", found, model.num_classes
        )
    extra = [key for key in own if key not in backbone and not key.startswith("classifier.head.")]
    if extra:
        raise ValueError(
            f"{text}: the model has weights a {checkpoint_format.name} checkpoint does not hold: {few_keys(extra)}; "
            "build the ViT with the checkpoint's architecture to load these weights"
        )
    copied = len(backbone) + (len(head) if head_loaded else 0)
    model.reset_classifier(model.num_classes)
    new_head = {f"classifier.head.{name}": value for name, value in model.classifier.head.state_dict().items()}
    model.load_state_dict({**backbone, **(head if head_loaded else new_head)}, strict=True)
    _warn_on_layer_norm_eps(model, checkpoint_format)

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
