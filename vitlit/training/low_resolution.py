"""Train most steps at a lower resolution, the last ones at full size (progressive resizing; FixRes, Touvron et
al. 2019): a ViT's cost grows with its token count, so 128-pixel batches (64 tokens at patch 16) cost about a
third of 224-pixel ones (196 tokens), and the final full-size steps adapt the model to the size it is evaluated at.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L

from vitlit.models.layers import resized_square

log = logging.getLogger(__name__)


class LowResolutionTraining(L.Callback):
    """Downsamples each training batch to ``size`` x ``size`` for the first ``fraction`` of the run's optimizer
    steps (``trainer.estimated_stepping_batches``: what ``trainer.max_epochs`` or ``trainer.max_steps`` allows).

    The data pipeline still crops and augments at full size; the batch is resized on the device after it is
    normalised (antialiased bilinear), just before the training step. Evaluation always sees full-size images.
    The model must accept other input sizes (e.g. vitlit's ViT, which resamples its position embedding) and
    ``size`` must be a multiple of its patch size.
    """

    def __init__(self, size: int = 128, fraction: float = 0.8):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"LowResolutionTraining size must be a positive integer, got {size!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"LowResolutionTraining fraction must be in [0, 1], got {fraction!r}")
        self.size = size
        self.fraction = fraction
        self.low_resolution_steps = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        patch_size = getattr(getattr(pl_module, "model", None), "patch_size", 1)
        if self.size % patch_size:
            raise ValueError(
                f"LowResolutionTraining size={self.size} is not a multiple of the patch size {patch_size}; "
                f"pick e.g. {self.size - self.size % patch_size or patch_size}"
            )
        total = trainer.estimated_stepping_batches
        if math.isinf(total):
            raise ValueError(
                "LowResolutionTraining trains a fraction of the run at low resolution, but the run has no end: "
                "set trainer.max_epochs or trainer.max_steps"
            )
        self.low_resolution_steps = round(self.fraction * total)
        log.info(
            "training at %dx%d for the first %d of %d steps, then at full size",
            self.size,
            self.size,
            self.low_resolution_steps,
            total,
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, index: int) -> None:
        if trainer.global_step >= self.low_resolution_steps:
            return
        if not isinstance(batch, list):  # ViTClassifier.on_after_batch_transfer returns a list
            raise TypeError(f"LowResolutionTraining resizes list batches [images, labels], got {type(batch).__name__}")
        batch[0] = resized_square(batch[0], self.size)
