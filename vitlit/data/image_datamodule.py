"""What the image-folder and the streaming data modules share: the batches and their loaders.

Both turn the same transform arguments (``image_size``, crops, flips, augmentation, ``mean``/``std``,
``fast_decode``: see :func:`vitlit.data.transforms.pipelines`) into the same uint8 pipelines, resolve the same
loader settings, and let validation read ``val/`` when present, else ``test/``, and testing ``test/`` when
present, else ``val/``. Only where the images come from differs (files, or LitData shards).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import lightning as L
import torch

from vitlit.data.image_folder import available_cpus
from vitlit.data.transforms import pipeline_settings, pipelines


def stage_sources(present: Collection[str], where: str) -> dict[str, str]:
    """Which split each stage reads, given the evaluation splits ``present`` (of ``val``, ``test``):
    ``{"train": "train", "val": "val"|"test", "test": "test"|"val"}``. ``where`` names the data in the error."""
    found = [name for name in ("val", "test") if name in present]
    if not found:
        raise FileNotFoundError(f"{where} has neither val/ nor test/; add one (laid out like train/)")
    return {"train": "train", "val": found[0], "test": found[-1]}


class ImageDataModule(L.LightningDataModule):
    """Base of the data modules: call :meth:`configure_batches` after ``save_hyperparameters()``; implement
    ``_loader(stage, drop_last)``. Batches are (images uint8 (B, 3, S, S) or (B, V, 3, S, S), labels (B,))."""

    def configure_batches(self, batch_size: int, num_workers: int | None, pin_memory: bool | None) -> None:
        """The loader settings (``num_workers=None``: every CPU core this process may use; ``pin_memory=None``: when
        CUDA is available) and the pipelines the saved hyperparameters describe."""
        self.batch_size = batch_size
        self.num_workers = available_cpus() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.mean, self.std = tuple(self.hparams["mean"]), tuple(self.hparams["std"])
        self.train_transform, self.eval_transform, self.draft_size = pipelines(**pipeline_settings(self.hparams))

    def _loader(self, stage: str, drop_last: bool) -> Any:
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        return self._loader("val", drop_last=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", drop_last=False)
