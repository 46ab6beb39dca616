"""An exponential moving average of the weights (EMA), evaluated and checkpointed in place of the live weights."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class ExponentialMovingAverage(EMAWeightAveraging):
    """Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`, fixed for testing after fitting.

    Validation uses the averaged weights and checkpoints store them as ``state_dict`` (the live weights
    under ``current_model_state``, for resuming). Lightning's callback restores the live weights whenever
    it loads a checkpoint after fitting, so ``trainer.test(ckpt_path="best")`` in the same run would test
    the live weights; this one restores them only when resuming a fit, so tests see the averaged weights.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
