"""Lightning's rich progress bar, mended for runs that a budget of steps ends (``trainer.max_epochs=-1``).

Lightning 2.6 writes the epoch as "Epoch 5/-2" there (Lightning-AI/pytorch-lightning#21925, fixed upstream by
#21924 after 2.6.6, the newest release these machines install); this subclass writes "Epoch 5", as the fix does.
Drop it once ``lightning`` is required at a release with the fix.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar


class RichProgressBar(LightningRichProgressBar):
    """``lightning.pytorch.callbacks.RichProgressBar`` without a negative epoch total when epochs are unlimited."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            description = description.replace(f"/{self.trainer.max_epochs - 1}", "", 1)
        return description
