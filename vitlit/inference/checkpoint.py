"""Reading vitlit checkpoints without Lightning: the network, its class names and its evaluation settings.

A checkpoint written by ``train.py`` holds the module's hyperparameters (``net``, ``class_names``, ``mean``,
``std``, ``test_time_flip``) and the data module's (``datamodule_hyper_parameters``: root, image size, crop
fractions, interpolation, JPEG draft decoding), so it alone rebuilds the model and the images it expects.
Checkpoints of older vitlit versions pass through :mod:`vitlit.inference.compat` first.
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

from vitlit.inference.compat import upgrade_checkpoint
from vitlit.models.vit import ViT

log = logging.getLogger(__name__)

# The data module's settings that define what the model sees at evaluation time.
EVAL_TRANSFORM_KEYS = ("image_size", "eval_crop_fraction", "interpolation", "mean", "std", "fast_decode")
NETWORK_PREFIX = "model."  # ViTClassifier.model: the ViT's weights in a checkpoint's state_dict


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

    Checkpoints of older vitlit versions come back with today's hyperparameters (:mod:`vitlit.inference.compat`).
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
        or not any(key.startswith(NETWORK_PREFIX) for key in state)
    ):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a vitlit checkpoint: it lacks the hyperparameters 'net' and 'class_names' or the "
            f"'model.*' weights of vitlit.training.module.ViTClassifier (top-level keys: {found}); {hint}"
        )
    return upgrade_checkpoint(checkpoint)


def checkpoint_class_names(checkpoint: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names in output order."""
    return tuple(checkpoint["hyper_parameters"]["class_names"])


def network_from_checkpoint(checkpoint: Mapping[str, Any]) -> ViT:
    """The trained :class:`ViT` (any model size), in eval mode on the CPU; training-only heads are left out."""
    with torch.device("meta"):  # no memory and no random initialisation for weights the checkpoint replaces
        network = ViT(num_classes=len(checkpoint_class_names(checkpoint)), **checkpoint["hyper_parameters"]["net"])
    state = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith(NETWORK_PREFIX)}
    network.load_state_dict({key.removeprefix(NETWORK_PREFIX): value for key, value in state.items()}, assign=True)
    return network.eval()


def data_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The data module's arguments saved with the checkpoint (empty for checkpoints that predate them)."""
    return dict(checkpoint.get("datamodule_hyper_parameters") or {})


def eval_transform_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation pipeline's settings the model was trained with: ``EVAL_TRANSFORM_KEYS`` -> value.

    Checkpoints without data module settings fall back to the model's image size and the defaults
    (ImageNet mean/std, crop fraction 0.875, bilinear, draft decoding), with a warning.
    """
    saved = data_settings(checkpoint)
    settings = {key: saved[key] for key in EVAL_TRANSFORM_KEYS if key in saved}
    if not saved:
        log.warning("the checkpoint does not record its data settings; using vitlit's defaults")
    settings.setdefault("image_size", checkpoint["hyper_parameters"]["net"].get("image_size", 224))
    settings.setdefault("fast_decode", True)  # the data modules' default since it was added
    return settings
