"""A checkpoint as the folder its library opens by itself, with a model card: ``python -m vitlit.export CKPT my_model/
--layout transformers`` (or ``--layout timm`` with a folder target). Upload it with ``hf upload org/name my_model/``.

Both libraries score one view of an image, so a checkpoint evaluated on several crops (``data.eval_crop_fraction`` as
a list) or with its mirror image (``model.test_time_flip=true``) is refused, naming the option, rather than written
as a folder that would score differently from ``vitlit.eval``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_fractions
from vitlit.inference.checkpoint import checkpoint_class_names, data_settings, eval_transform_settings
from vitlit.models.library_folders import Preprocessing, Shape, save_timm_folder, save_transformers_folder
from vitlit.models.vit import ViT
from vitlit.reporting.model_card import ModelFacts, model_card, run_folder_of

FOLDER_LAYOUTS = {"transformers": save_transformers_folder, "timm": save_timm_folder}
CARD_FILE = "README.md"


def writes_folder(output: Path, layout: str | None) -> bool:
    """Whether ``--layout`` with this output means a folder: always for transformers, for timm without a suffix."""
    return layout == "transformers" or (layout == "timm" and output.suffix == "")


def single_view_preprocessing(checkpoint: Mapping[str, Any], layout: str) -> Preprocessing:
    """The checkpoint's evaluation pre-processing; a ``ValueError`` naming the option when it averages views."""
    settings, hparams = eval_transform_settings(checkpoint), checkpoint["hyper_parameters"]
    fractions = crop_fractions(settings.get("eval_crop_fraction", 0.875))
    if len(fractions) > 1:
        raise ValueError(
            f"cannot export data.eval_crop_fraction={list(fractions)} to the {layout} layout: {layout} scores one "
            "crop of an image, this checkpoint averages several. Export it with --format onnx (its metadata lists a "
            "resize per view), or evaluate with one data.eval_crop_fraction"
        )
    if hparams.get("test_time_flip"):
        raise ValueError(
            f"cannot export model.test_time_flip=true to the {layout} layout: {layout} scores the image alone, this "
            "checkpoint averages it with its mirror image. Export it with --format onnx, which includes the flip"
        )
    return Preprocessing(
        image_size=settings["image_size"],
        crop_fraction=fractions[0],
        interpolation=settings.get("interpolation", "bilinear"),
        mean=tuple(hparams.get("mean", settings.get("mean", IMAGENET_MEAN))),
        std=tuple(hparams.get("std", settings.get("std", IMAGENET_STD))),
    )


def export_folder(
    checkpoint_path: str | os.PathLike,
    checkpoint: Mapping[str, Any],
    network: ViT,
    output: str | os.PathLike,
    layout: str,
) -> Path:
    """Write the ``layout`` (transformers or timm) folder of a read checkpoint, with its ``README.md`` card."""
    preprocessing = single_view_preprocessing(checkpoint, layout)
    shape = Shape.of(network)
    root = data_settings(checkpoint).get("root")
    facts = ModelFacts(
        name=Path(output).name,
        class_names=checkpoint_class_names(checkpoint),
        network={
            "depth": shape.depth,
            "embed_dim": shape.width,
            "num_heads": shape.heads,
            "mlp_dim": shape.mlp_dim,
            "patch_size": shape.patch_size,
            "pooling": shape.pooling,
        },
        parameters=sum(parameter.numel() for parameter in network.parameters()),
        preprocessing=preprocessing,
        dataset=Path(root).name if root else None,
    )
    card = model_card(layout, facts, run_folder_of(checkpoint_path))
    save = FOLDER_LAYOUTS[layout]
    return save(network, output, facts.class_names, preprocessing, texts={CARD_FILE: card})
