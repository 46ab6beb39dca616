"""Checkpoints in training: the LightningModule a checkpoint rebuilds (eval), checking that a checkpoint fits the
model before training from it (a clear error instead of a wall of size mismatches from ``load_state_dict``), or
loading only its backbone when asked. Reading the file itself is :mod:`vitlit.inference.checkpoint`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitlit.inference.checkpoint import read_checkpoint
from vitlit.training.module import ViTClassifier

log = logging.getLogger(__name__)

def classifier_from_checkpoint(checkpoint: Mapping[str, Any]) -> ViTClassifier:
    """The trained :class:`ViTClassifier` (any model size), in eval mode on the CPU."""
    module = ViTClassifier(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


HEAD_PREFIX = "model.classifier.head."
# Training-only auxiliary heads of ViTClassifier (instance_head: vitlit 06f6cff and before).
AUXILIARY_PREFIXES = ("relative_localization.", "locality_guidance.", "instance_head.")


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
