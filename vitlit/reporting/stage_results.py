"""What one evaluation stage (validation or test) produced: confusion matrix, per-class scores, a fixed image sample.

``StageResultsCallback`` collects it from the batches and logits of each validation epoch and test run;
the TensorBoard dashboards and the run report build on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitlit.reporting.figures import display_images


def sample_positions(total: int, count: int) -> list[int]:
    """``count`` positions spread evenly over ``range(total)``, first and last included.

    Image folders list samples class by class, so an even spread shows every class.
    """
    count = min(count, total)
    if count <= 0:
        return []
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


@dataclass
class StageSummary:
    """One stage's results. ``counts`` (C, C): rows true classes, columns predictions.
    ``images`` (K, 3, H, W) as the model saw them, ``labels`` (K,), ``probabilities`` (K, C)."""

    class_names: tuple[str, ...]
    counts: np.ndarray
    per_class: dict[str, dict[str, float]]
    images: torch.Tensor
    labels: list[int]
    probabilities: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.counts) / max(self.counts.sum(), 1))


class StageResults:
    """Accumulates a stage batch by batch: torchmetrics' confusion matrix and per-class precision, recall
    and F1 (synced across processes), and the images at ``num_images`` positions spread over the stage."""

    def __init__(self, class_names: Sequence[str], num_images: int = 16):
        self.class_names = tuple(class_names)
        self.num_images = num_images
        num_classes = len(self.class_names)
        self.metrics = MetricCollection(
            {
                "precision": MulticlassPrecision(num_classes, average=None),
                "recall": MulticlassRecall(num_classes, average=None),
                "f1": MulticlassF1Score(num_classes, average=None),
                "counts": MulticlassConfusionMatrix(num_classes),
            }
        )
        self.start(0)

    def start(self, total_samples: int, device: torch.device | str = "cpu") -> None:
        """Forget the last stage; ``total_samples`` is how many images this stage will see (on this process)."""
        self.metrics = self.metrics.to(device)
        self.metrics.reset()
        self.positions = set(sample_positions(total_samples, self.num_images))
        self.seen = 0
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []
        self.logits: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        """One batch: images (B, 3, H, W) as the model saw them (of (B, V, 3, H, W) views, the first), labels (B,),
        logits (B, C)."""
        if images.ndim == 5:
            images = images[:, 0]
        self.metrics.update(logits.detach(), labels)
        for index in range(len(labels)):
            if self.seen + index in self.positions:
                self.images.append(images[index].detach().cpu())
                self.labels.append(int(labels[index]))
                self.logits.append(logits[index].detach().float().cpu())
        self.seen += len(labels)

    def compute(self) -> StageSummary:
        """The stage's summary; every process must call it (the metrics sync across processes)."""
        values = {name: value.cpu() for name, value in self.metrics.compute().items()}
        counts = values["counts"].numpy().astype(np.int64)
        per_class = {
            name: {
                "precision": float(values["precision"][index]),
                "recall": float(values["recall"][index]),
                "f1": float(values["f1"][index]),
                "support": int(counts[index].sum()),
            }
            for index, name in enumerate(self.class_names)
        }
        images = torch.stack(self.images) if self.images else torch.empty(0, 3, 1, 1)
        probabilities = (
            torch.stack(self.logits).softmax(dim=-1).numpy() if self.logits else np.empty((0, len(self.class_names)))
        )
        return StageSummary(self.class_names, counts, per_class, images, list(self.labels), probabilities)


def display_sample(images: torch.Tensor, datamodule: object | None) -> np.ndarray:
    """Sample images as the model saw them -> uint8 (K, H, W, 3), un-normalised with the data module's mean/std."""
    hparams = getattr(datamodule, "hparams", None) or {}
    return display_images(images, hparams.get("mean", IMAGENET_MEAN), hparams.get("std", IMAGENET_STD))


def _stage_size(dataloaders: object, num_batches: object) -> int:
    """Images one process sees in a stage: the dataset's length, capped by ``limit_*_batches``."""
    loader = dataloaders[0] if isinstance(dataloaders, (list, tuple)) else dataloaders
    batches = num_batches[0] if isinstance(num_batches, (list, tuple)) else num_batches
    size = 0
    for sized in (getattr(loader, "sampler", None), loader.dataset):  # LitData's loader: no sampler, a sized dataset
        try:
            size = len(sized)
            break
        except TypeError:  # None, or an iterable without a length
            continue
    if batches is not None and math.isfinite(batches) and loader.batch_size:
        size = min(size, int(batches) * loader.batch_size)
    return size


class StageResultsCallback(L.Callback):
    """Feeds validation and test batches (and the logits their steps return) to a :class:`StageResults`
    per stage, and hands each finished stage's summary to :meth:`on_stage_end`. Sanity checks are skipped.

    Subclasses decide what to do with a summary; ``active`` (default True) turns the collection off for a stage.
    """

    def __init__(self, num_images: int = 16):
        self.num_images = num_images
        self.results: dict[str, StageResults] = {}
        self.summaries: dict[str, StageSummary] = {}

    def active(self, trainer: L.Trainer, stage: str) -> bool:
        return True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.results:
            class_names = pl_module.hparams["class_names"]
            self.results = {name: StageResults(class_names, self.num_images) for name in ("val", "test")}

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or not self.active(trainer, stage):
            return
        if stage == "val":
            size = _stage_size(trainer.val_dataloaders, trainer.num_val_batches)
        else:
            size = _stage_size(trainer.test_dataloaders, trainer.num_test_batches)
        self.results[stage].start(size, pl_module.device)

    def _update(self, trainer: L.Trainer, outputs: object, batch: object, stage: str, dataloader_idx: int) -> None:
        if trainer.sanity_checking or dataloader_idx != 0 or not self.active(trainer, stage):
            return
        if not isinstance(outputs, dict) or "logits" not in outputs:
            raise RuntimeError(
                f"{type(self).__name__} needs the module's {stage} step to return {{'logits': ...}} "
                "(vitlit.training.module.ViTClassifier does); disable the callback for other modules"
            )
        images, labels = batch[0], batch[1]
        self.results[stage].update(images, labels, outputs["logits"])

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or not self.active(trainer, stage):
            return
        self.summaries[stage] = self.results[stage].compute()
        self.on_stage_end(trainer, pl_module, stage, self.summaries[stage])

    def on_stage_end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, summary: StageSummary) -> None:
        """Called on every process when a validation epoch or a test run ends."""

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, outputs, batch, "val", dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, outputs, batch, "test", dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "test")
