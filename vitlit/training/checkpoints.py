"""Reading vitlit checkpoints: the classifier, its class names and its eval transform (eval, predict), and
checking that a checkpoint fits the model before training from it (a clear error instead of a wall of size
mismatches from ``load_state_dict``), or loading only its backbone when asked.

A checkpoint written by ``train.py`` holds the module's hyperparameters (``net``, ``class_names``)
and the data module's (``datamodule_hyper_parameters``: root, image size, crop fraction,
interpolation, mean, std), so it alone rebuilds the model and the images it expects.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from vitlit.data.transforms import eval_transform
from vitlit.training.compat import upgrade_checkpoint
from vitlit.training.module import ViTClassifier

log = logging.getLogger(__name__)

# The data module's settings that define what the model sees at evaluation time.
EVAL_TRANSFORM_KEYS = ("image_size", "eval_crop_fraction", "interpolation", "mean", "std")


def _check_zip_records(path: Path) -> None:
    """Raise if a record of the zip archive torch.save writes fails its CRC (torch.load does not check them, so a
    corrupted file would load as silently wrong weights). Costs one read of the file; other formats pass."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        if (bad := archive.testzip()) is not None:
            raise ValueError(f"its record {bad} fails its checksum")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file on the CPU; raise a clear error if it is missing or not a vitlit checkpoint.

    Checkpoints of older vitlit versions come back with today's hyperparameters (:mod:`vitlit.training.compat`).
    """
    path = Path(path).expanduser()
    hint = "pass ckpt_path=<run folder>/checkpoints/last.ckpt (or epoch_NNN.ckpt), as written by train.py"
    if path.is_dir():
        inside = [str(p) for p in sorted(path.rglob("*.ckpt"))]
        found = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise ValueError(f"ckpt_path={path} is a folder, not a checkpoint file{found}; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; {hint}")
    try:
        _check_zip_records(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many kinds (UnpicklingError, RuntimeError, IndexError, ...)
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().split("\n")[0] or type(error).__name__
        raise ValueError(
            f"{path} is not a vitlit checkpoint: it cannot be read ({reason}; truncated, corrupt or written by "
            f"another program?); {hint}"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if (
        not isinstance(hparams, Mapping)
        or not {"net", "class_names"} <= hparams.keys()
        or not isinstance(state, Mapping)
        or not any(key.startswith("model.") for key in state)
    ):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a vitlit checkpoint: it lacks the hyperparameters 'net' and 'class_names' or the "
            f"'model.*' weights of vitlit.training.module.ViTClassifier (top-level keys: {found}); {hint}"
        )
    return upgrade_checkpoint(checkpoint)


def classifier_from_checkpoint(checkpoint: Mapping[str, Any]) -> ViTClassifier:
    """The trained :class:`ViTClassifier` (any model size), in eval mode on the CPU."""
    module = ViTClassifier(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


def class_names(checkpoint: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(checkpoint["hyper_parameters"]["class_names"])


def data_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The data module's arguments saved with the checkpoint (empty for checkpoints that predate them)."""
    return dict(checkpoint.get("datamodule_hyper_parameters") or {})


def eval_transform_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The eval transform's settings the model was trained with: ``EVAL_TRANSFORM_KEYS`` -> value.

    Checkpoints without data module settings fall back to the model's image size and the defaults
    (ImageNet mean/std, crop fraction 0.875, bilinear), with a warning.
    """
    saved = data_settings(checkpoint)
    settings = {key: saved[key] for key in EVAL_TRANSFORM_KEYS if key in saved}
    if len(settings) < len(EVAL_TRANSFORM_KEYS):
        missing = [key for key in EVAL_TRANSFORM_KEYS if key not in settings]
        log.warning("the checkpoint does not record the data settings %s; using vitlit's defaults", missing)
        settings.setdefault("image_size", checkpoint["hyper_parameters"]["net"].get("image_size", 224))
    return settings


def checkpoint_eval_transform(checkpoint: Mapping[str, Any]) -> v2.Compose:
    """uint8 image (3, H, W) -> the normalised (3, S, S) input the checkpoint's model expects."""
    settings = eval_transform_settings(checkpoint)
    return eval_transform(
        settings["image_size"],
        crop_fraction=settings.get("eval_crop_fraction", 0.875),
        **{key: settings[key] for key in ("interpolation", "mean", "std") if key in settings},
    )


HEAD_PREFIX = "model.classifier.head."
# Training-only auxiliary heads of ViTClassifier (instance_head: vitlit 06f6cff and before).
AUXILIARY_PREFIXES = ("relative_localization.", "instance_head.")


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def shape_mismatches(module: ViTClassifier, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """One line per parameter whose shape differs, or that only one side has."""
    own = module.state_dict()
    lines = [
        f"{name}: {_shape(state_dict[name])} in the checkpoint, {_shape(tensor)} in this run's model"
        for name, tensor in own.items()
        if name in state_dict and _shape(state_dict[name]) != _shape(tensor)
    ]
    lines += [f"{name}: missing from the checkpoint" for name in own if name not in state_dict]
    lines += [f"{name}: in the checkpoint, not in this run's model" for name in state_dict if name not in own]
    return lines


def check_checkpoint_fits(module: ViTClassifier, path: str | Path) -> None:
    """Raise a ``ValueError`` naming both shapes when the checkpoint at ``path`` was written by another model."""
    checkpoint = read_checkpoint(path)
    mismatches = shape_mismatches(module, checkpoint["state_dict"])
    if not mismatches:
        return
    their_classes = checkpoint.get("hyper_parameters", {}).get("class_names")
    classes = ""
    if their_classes is not None and list(their_classes) != list(module.hparams.class_names):
        classes = (
            f"The checkpoint knows {len(their_classes)} classes ({', '.join(their_classes)}); this run's data has "
            f"{len(module.hparams.class_names)} ({', '.join(module.hparams.class_names)}). "
        )
    shown = "\n".join(f"  {line}" for line in mismatches[:8]) + ("\n  ..." if len(mismatches) > 8 else "")
    raise ValueError(
        f"checkpoint {path} does not fit this run's model:\n{shown}\n{classes}"
        "Resume with the model= and data that wrote it, or start a new training from its backbone with a "
        "new classifier head: add reinit_head=true."
    )


def load_backbone(module: ViTClassifier, path: str | Path) -> None:
    """Load every weight of the checkpoint at ``path`` but the classifier head, which starts again from zero."""
    # Training-only auxiliary heads start again as well: the new run may or may not have them.
    fresh = (HEAD_PREFIX, *AUXILIARY_PREFIXES)
    state_dict = {k: v for k, v in read_checkpoint(path)["state_dict"].items() if not k.startswith(fresh)}
    backbone_mismatches = [line for line in shape_mismatches(module, state_dict) if not line.startswith(fresh)]
    if backbone_mismatches:
        shown = "\n".join(f"  {line}" for line in backbone_mismatches[:8])
        raise ValueError(
            f"the backbone of checkpoint {path} does not fit this run's model (another model size?):\n{shown}\n"
            "Pick the model= that wrote it."
        )
    module.load_state_dict(state_dict, strict=False)
    module.model.reset_classifier(module.model.num_classes)
    log.info(
        "loaded the backbone from %s; the classifier head (%d classes) starts from zero and training starts at epoch 1",
        path,
        module.model.num_classes,
    )
