"""Checks that a checkpoint fits the model before training from it, and loads only its backbone when asked.

Without this, resuming from a checkpoint of another model size or class count fails deep inside
``load_state_dict`` with a wall of size mismatches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from vitlit.module import ViTClassifier

log = logging.getLogger(__name__)

HEAD_PREFIX = "model.classifier.head."


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors memory-mapped on the CPU; no code runs)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; give the path of a .ckpt file a run saved")
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


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
    state_dict = {k: v for k, v in read_checkpoint(path)["state_dict"].items() if not k.startswith(HEAD_PREFIX)}
    backbone_mismatches = [line for line in shape_mismatches(module, state_dict) if not line.startswith(HEAD_PREFIX)]
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
