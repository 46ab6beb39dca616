"""Lightning callbacks of vitlit's own."""

from __future__ import annotations

import logging
from typing import ClassVar

import lightning as L

log = logging.getLogger(__name__)


class EpochSummary(L.Callback):
    """Logs one line per training epoch, e.g.
    ``Epoch: 1 | train_loss: 0.8303 | train_acc: 0.6758 | val_loss: 0.5308 | val_acc: 0.8362``.

    Runs after validation (Lightning calls ``on_train_epoch_end`` once the epoch's validation is done).
    """

    metrics: ClassVar[dict[str, str]] = {
        "train_loss": "train/loss",
        "train_acc": "train/acc",
        "val_loss": "val/loss",
        "val_acc": "val/acc",
    }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        values = trainer.callback_metrics
        parts = [f"Epoch: {trainer.current_epoch + 1}"]
        parts += [f"{label}: {float(values[key]):.4f}" for label, key in self.metrics.items() if key in values]
        log.info(" | ".join(parts))
