"""The LightningModule: a ViT classifier with its loss, metrics, optimiser and schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from vitlit.batch_mixing import batch_mixing
from vitlit.model import ViT

OptimizerFactory = Callable[[Iterable[dict[str, Any]]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]  # called as factory(optimizer, total_steps=...)


class ViTClassifier(L.LightningModule):
    """Trains a :class:`vitlit.model.ViT` for image classification.

    Args:
        net: keyword arguments of :class:`ViT` (all but ``num_classes``, which comes from ``class_names``).
        class_names: label names in label order; saved in checkpoints so a checkpoint alone can predict.
        optimizer: builds the optimiser from parameter groups, e.g. ``functools.partial(torch.optim.AdamW, lr=3e-4)``.
            Parameters with fewer than two dimensions and ``ViT.no_weight_decay()`` get weight decay 0.
        scheduler: builds the LR scheduler as ``scheduler(optimizer, total_steps=...)``; stepped every
            optimiser step. ``None`` keeps the learning rate constant.
        label_smoothing: cross-entropy label smoothing.
        freeze_backbone: train only the classifier's linear head; everything else is frozen and kept in
            eval mode (no dropout), as a feature extractor.
        mixup_alpha, cutmix_alpha: mix each training batch with MixUp (Zhang et al. 2018) and/or CutMix
            (Yun et al. 2019), Beta(alpha, alpha) mixing weights; with both above 0 each batch gets one of
            them at random; 0 disables each. The loss then uses soft targets; train/acc counts the true labels.
        test_time_flip: validation, test and prediction average the logits of each image and its mirror image.

    Batches are (images (B, 3, H, W), labels (B,)). Logged: ``{train,val,test}/{loss,acc}`` as exact
    epoch values over images, and ``val/acc_best``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        class_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        freeze_backbone: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        test_time_flip: bool = False,
    ):
        super().__init__()
        # The factories are code, not hyperparameters: the run's config records them.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        num_classes = len(class_names)
        self.model = ViT(num_classes=num_classes, **net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.freeze_backbone = freeze_backbone
        self.batch_mixing = batch_mixing(num_classes, mixup_alpha, cutmix_alpha)
        self.test_time_flip = test_time_flip
        if freeze_backbone:
            self.model.requires_grad_(False)
            self.model.classifier.head.requires_grad_(True)

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.example_input_array = torch.zeros(1, 3, self.model.image_size, self.model.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> logits (B, num_classes)."""
        return self.model(images)

    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation: ``forward``, averaged with the mirrored images' logits when ``test_time_flip``."""
        logits = self(images)
        if self.test_time_flip:
            logits = (logits + self(images.flip(-1))) / 2
        return logits

    def train(self, mode: bool = True) -> ViTClassifier:
        super().train(mode)
        if self.freeze_backbone and mode:
            self.model.eval()
            self.model.classifier.head.train()
        return self

    def _shared_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: MulticlassAccuracy
    ) -> torch.Tensor:
        images, labels = batch
        if stage == "train":
            targets = labels
            if self.batch_mixing is not None:
                images, targets = self.batch_mixing(images, labels)  # targets: (B, classes) probabilities
            logits = self(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        else:
            logits = self.evaluation_logits(images)
            loss = F.cross_entropy(logits, labels)
        accuracy(logits, labels)
        # batch_size makes the epoch loss a mean over images, not over batches; sync_dist averages it
        # across processes at epoch end (the accuracy metric objects sync themselves).
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True
        )
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute())

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Class probabilities (B, num_classes) for a batch of images, or of (images, labels)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.evaluation_logits(images).softmax(dim=-1)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into a weight-decay group and a no-weight-decay group."""
        skip = self.model.no_weight_decay()
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim <= 1 or name in skip else decay).append(parameter)
        groups = [
            {"params": decay, "name": "decay"},
            {"params": no_decay, "name": "no_decay", "weight_decay": 0.0},
        ]
        return [group for group in groups if group["params"]]

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("ViTClassifier was built without an optimizer; pass optimizer= to train it")
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}
