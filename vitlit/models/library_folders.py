"""A ViT saved as the folder its library opens by itself, with the key tables of :mod:`weight_formats`.

- Hugging Face transformers (``AutoModelForImageClassification.from_pretrained(folder)``,
  ``pipeline("image-classification", model=folder)``): ``config.json`` (a ``ViTConfig`` with ``id2label``),
  ``model.safetensors`` under the 4.x names (``vit.encoder.layer.N.attention.attention.query``: transformers 4.x
  reads them as they are, 5.x converts them on load, as it does for the Hub's own ViT files) and
  ``preprocessor_config.json`` (a ``BitImageProcessor``: resize the shorter side, centre-crop, normalise).
- timm (``timm.create_model("local-dir:folder", pretrained=True)``): ``config.json`` (``architecture``,
  ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg``) and ``model.safetensors`` under timm's names.

A folder is written beside its target and renamed into place when complete: an existing folder with anything in it
is never touched, and a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vitlit.models.vit import ViT
from vitlit.models.weight_formats import HUGGINGFACE_4, TIMM, CheckpointFormat

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
TRANSFORMERS_PREFIX = "vit."  # ViTForImageClassification holds the encoder as .vit

# PIL's resampling filters by number (what transformers' image processors store as "resample").
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}

# timm's builder names, by (patch size, width, depth, image size); other shapes use vit_base_patch16_224's builder,
# which the config's model_args reshape: the name only picks timm's constructor.
TIMM_ARCHITECTURES = {
    (16, 192, 12, 224): "vit_tiny_patch16_224",
    (16, 384, 12, 224): "vit_small_patch16_224",
    (16, 768, 12, 224): "vit_base_patch16_224",
    (16, 768, 12, 384): "vit_base_patch16_384",
    (32, 768, 12, 224): "vit_base_patch32_224",
    (16, 1024, 24, 224): "vit_large_patch16_224",
}
TIMM_FALLBACK_ARCHITECTURE = "vit_base_patch16_224"

# timm builds mean pooling as global_pool="avg", whose final norm (fc_norm) follows the pooling.
TIMM_MEAN_POOLING = dataclasses.replace(
    TIMM,
    name="timm (global_pool=avg)",
    top={**{k: v for k, v in TIMM.top.items() if not k.startswith("classifier.norm")},
         "classifier.norm.weight": "fc_norm.weight", "classifier.norm.bias": "fc_norm.bias"},
)  # fmt: skip


@dataclass(frozen=True)
class Preprocessing:
    """How evaluation prepares an image: shorter side to ``resize`` (``image_size / crop_fraction``, rounded),
    centre crop ``image_size``, ``interpolation``, then (x / 255 - mean) / std per channel."""

    image_size: int
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    @property
    def resize(self) -> int:
        return round(self.image_size / self.crop_fraction)


@dataclass(frozen=True)
class Shape:
    """What a library's config needs of a ViT's architecture."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    layer_norm_eps: float
    pooling: str
    num_classes: int

    @classmethod
    def of(cls, model: ViT) -> Shape:
        block = model.transformer_encoder[0]
        return cls(
            image_size=model.image_size,
            patch_size=model.patch_size,
            width=model.class_embedding.shape[-1],
            depth=len(model.transformer_encoder),
            heads=block.msa_block.num_heads,
            mlp_dim=block.mlp_block.fc1.out_features,
            layer_norm_eps=model.classifier.norm.eps,
            pooling=model.pooling,
            num_classes=model.num_classes,
        )


def renamed_state_dict(model: ViT, checkpoint_format: CheckpointFormat, prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's weights under ``checkpoint_format``'s names, as contiguous CPU tensors; ``prefix`` goes before
    every name but the head's (``ViTForImageClassification`` keeps its encoder in ``vit.``, its ``classifier`` beside).

    A parameter the format keeps as several tensors (Hugging Face's q, k and v) is split into equal parts
    along dim 0, the inverse of the concatenation :func:`vitlit.models.weights.convert_state_dict` does.
    """
    rules = {ours: prefix + theirs for ours, theirs in checkpoint_format.top.items()}
    rules.update(checkpoint_format.head)
    for index in range(len(model.transformer_encoder)):
        block_prefix = prefix + checkpoint_format.block_prefix.format(i=index)
        for ours, theirs in checkpoint_format.block.items():
            names = (theirs,) if isinstance(theirs, str) else tuple(theirs)
            rules[f"transformer_encoder.{index}.{ours}"] = tuple(block_prefix + name for name in names)
    own = model.state_dict()
    unnamed = sorted(set(own) - set(rules))
    if unnamed:
        raise ValueError(f"cannot save as {checkpoint_format.name}: model keys without a name there: {unnamed[:5]}")
    state = {}
    for key, value in own.items():
        names = (rules[key],) if isinstance(rules[key], str) else rules[key]
        for name, part in zip(names, value.detach().cpu().chunk(len(names), dim=0), strict=True):
            state[name] = part.contiguous().clone()
    return state


def transformers_config(model: ViT, class_names: Sequence[str]) -> dict[str, Any]:
    """``config.json`` of a ``ViTForImageClassification`` with the model's shape and classes."""
    shape = Shape.of(model)
    if shape.pooling != "token":
        raise ValueError(
            f"cannot export model.net.pooling={shape.pooling} to the transformers layout: transformers' "
            "ViTForImageClassification always classifies the class token. Export it with --layout timm (a folder) "
            "or --format onnx, or train with model.net.pooling=token"
        )
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "image_size": shape.image_size,
        "patch_size": shape.patch_size,
        "num_channels": 3,
        "hidden_size": shape.width,
        "num_hidden_layers": shape.depth,
        "num_attention_heads": shape.heads,
        "intermediate_size": shape.mlp_dim,
        "hidden_act": "gelu",  # exact (erf) GELU, as nn.GELU()
        "layer_norm_eps": shape.layer_norm_eps,  # ViTConfig's default is 1e-12
        "qkv_bias": True,
        "hidden_dropout_prob": model.embedding_dropout.p,
        "attention_probs_dropout_prob": model.transformer_encoder[0].msa_block.attention_dropout,
        "initializer_range": 0.02,
        "encoder_stride": shape.patch_size,
        "problem_type": "single_label_classification",
        "id2label": {str(index): name for index, name in enumerate(class_names)},
        "label2id": {name: index for index, name in enumerate(class_names)},
        "torch_dtype": "float32",
    }


def image_processor_config(preprocessing: Preprocessing) -> dict[str, Any]:
    """``preprocessor_config.json``: transformers' ``BitImageProcessor`` resizes the shorter side and centre-crops
    as vitlit's evaluation does (``ViTImageProcessor`` resizes to a square instead); 4.x and 5.x both have it."""
    if preprocessing.interpolation not in PIL_RESAMPLE:
        raise ValueError(
            f"cannot export data.interpolation={preprocessing.interpolation} to the transformers layout: its image "
            f"processors resample with PIL's filters ({', '.join(PIL_RESAMPLE)})"
        )
    side = preprocessing.image_size
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": preprocessing.resize},
        "resample": PIL_RESAMPLE[preprocessing.interpolation],
        "do_center_crop": True,
        "crop_size": {"height": side, "width": side},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(value) for value in preprocessing.mean],
        "image_std": [float(value) for value in preprocessing.std],
    }


def timm_config(model: ViT, class_names: Sequence[str], preprocessing: Preprocessing) -> dict[str, Any]:
    """``config.json`` for ``timm.create_model("local-dir:...")``: the builder's name, the arguments that shape it,
    the class names and the evaluation pre-processing (``pretrained_cfg``)."""
    shape = Shape.of(model)
    if shape.layer_norm_eps != 1e-6:
        raise ValueError(
            f"cannot export model.net.layer_norm_eps={shape.layer_norm_eps:g} to the timm layout: timm's ViT "
            "builds its LayerNorms with eps 1e-6. Export it with --layout transformers or --format onnx"
        )
    global_pool = "token" if shape.pooling == "token" else "avg"
    architecture = TIMM_ARCHITECTURES.get(
        (shape.patch_size, shape.width, shape.depth, shape.image_size), TIMM_FALLBACK_ARCHITECTURE
    )
    side = shape.image_size
    return {
        "architecture": architecture,
        "num_classes": shape.num_classes,
        "num_features": shape.width,
        "global_pool": global_pool,
        "label_names": list(class_names),
        "model_args": {
            "img_size": side,
            "patch_size": shape.patch_size,
            "embed_dim": shape.width,
            "depth": shape.depth,
            "num_heads": shape.heads,
            "mlp_ratio": shape.mlp_dim / shape.width,
            "global_pool": global_pool,
        },
        "pretrained_cfg": {
            "tag": "vitlit",
            "input_size": [3, side, side],
            "fixed_input_size": True,
            "interpolation": preprocessing.interpolation,
            "crop_pct": preprocessing.crop_fraction,
            "crop_mode": "center",
            "mean": [float(value) for value in preprocessing.mean],
            "std": [float(value) for value in preprocessing.std],
            "num_classes": shape.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def write_folder(
    folder: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    configs: Mapping[str, Mapping[str, Any]],
    texts: Mapping[str, str] | None = None,
) -> Path:
    """Write ``state`` as ``model.safetensors``, each of ``configs`` as JSON and ``texts`` as they are into a new
    ``folder`` (an empty one is fine), all at once: it is assembled beside and renamed into place."""
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} already exists and is not an empty folder; choose a new folder name")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(dict(state), str(staging / WEIGHTS_FILE), metadata={"format": "pt", "exported_by": "vitlit"})
        for name, content in configs.items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
        for name, text in (texts or {}).items():
            (staging / name).write_text(text)
        if folder.exists():
            folder.rmdir()  # empty: checked above
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def save_transformers_folder(
    model: ViT,
    folder: str | os.PathLike,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    texts: Mapping[str, str] | None = None,
) -> Path:
    """A folder ``transformers`` opens as a ``ViTForImageClassification`` with its image processor."""
    configs = {
        CONFIG_FILE: transformers_config(model, class_names),
        IMAGE_PROCESSOR_FILE: image_processor_config(preprocessing),
    }
    return write_folder(folder, renamed_state_dict(model, HUGGINGFACE_4, TRANSFORMERS_PREFIX), configs, texts)


def save_timm_folder(
    model: ViT,
    folder: str | os.PathLike,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    texts: Mapping[str, str] | None = None,
) -> Path:
    """A folder ``timm.create_model("local-dir:<folder>", pretrained=True)`` builds and fills."""
    configs = {CONFIG_FILE: timm_config(model, class_names, preprocessing)}
    checkpoint_format = TIMM if model.pooling == "token" else TIMM_MEAN_POOLING
    return write_folder(folder, renamed_state_dict(model, checkpoint_format), configs, texts)
