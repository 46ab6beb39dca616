"""The LightningModule: a ViT classifier with its loss, metrics, optimiser and schedule."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitlit.inference.compat import upgrade_module_hparams, upgrade_net
from vitlit.inference.predictor import average_logits, normalize
from vitlit.models.locality_guidance import LocalityGuidance, block_outputs
from vitlit.models.relative_localization import DenseRelativeLocalization
from vitlit.models.vit import ViT
from vitlit.models.weights import load_pretrained
from vitlit.private_api import is_compiled, mark_batch_dynamic, set_up_training_data
from vitlit.training.feature_cache import FeatureCache
from vitlit.training.schedule import resumed_total_steps

OptimizerFactory = Callable[[Iterable[dict[str, Any]]], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]  # called as factory(optimizer, total_steps=...)
BatchMixingFactory = Callable[[int], Callable | None]  # called as factory(num_classes)


class ViTClassifier(L.LightningModule):
    """Trains a :class:`vitlit.models.vit.ViT` for image classification.

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
        weights: a pretrained checkpoint for :func:`vitlit.models.weights.load_pretrained` (file, Hugging Face
            folder or ``torchvision:NAME``), loaded when the module is built. ``None`` starts from scratch.
        load_head: also load the checkpoint's classifier head when its classes match (count, and names where the
            checkpoint folder's config.json has them).
        layer_decay: layer-wise learning-rate decay (BEiT, MAE): block i of D gets ``lr * decay ** (D - i)``,
            the embeddings ``lr * decay ** (D + 1)``, the classifier ``lr``. ``None`` gives every layer ``lr``.
        mean, std: per-channel statistics that uint8 images are normalised with on the device (saved in
            checkpoints, so evaluation and prediction normalise as training did).
        compile: compile the network with ``torch.compile`` (static shapes) when the trainer sets the model up.
        batch_mixing: builds the training batches' MixUp / CutMix as ``batch_mixing(num_classes)``, e.g.
            ``functools.partial(vitlit.training.batch_mixing.batch_mixing, mixup_alpha=0.8)``; it may return
            None (off). The loss then uses soft targets; train/acc counts the true labels.
        test_time_flip: validation, test and prediction average the logits of each image and its mirror image.
        relative_localization_weight: weight of the dense relative localisation loss (Liu et al. 2021; see
            :mod:`vitlit.models.relative_localization`) added to the training loss; 0 disables it.
        locality_guidance: keyword arguments of :class:`vitlit.models.locality_guidance.LocalityGuidance` (all
            but the ViT's width, depth and class count), e.g. ``{"weight": 2.5, "steps": 1400}``: a small CNN is
            trained on the training batches when fitting starts, then some blocks' tokens imitate its features.
            ``None`` disables it.

    Batches are (images (B, 3, H, W), labels (B,)), evaluation batches also (B, V, 3, H, W) (V views of each
    image, see ``evaluation_logits``); images either uint8 in [0, 255], normalised on the
    device in ``on_after_batch_transfer`` (4x less host-to-device traffic than float32), or float tensors
    that are already normalised and pass through unchanged. ``forward`` accepts both too.
    Logged: ``{train,val,test}/{loss,acc}`` as exact epoch values over images, and ``val/acc_best``; with the
    localisation loss on, ``train/relative_localization`` too (``train/loss`` includes it, weighted); with
    locality guidance, ``train/locality_guidance``.
    """

    def __init__(
        self,
        net: dict[str, Any],
        class_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        freeze_backbone: bool = False,
        weights: str | None = None,
        load_head: bool = False,
        layer_decay: float | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        compile: bool = False,
        batch_mixing: BatchMixingFactory | None = None,
        test_time_flip: bool = False,
        relative_localization_weight: float = 0.0,
        locality_guidance: dict[str, Any] | None = None,
    ):
        super().__init__()
        net = upgrade_net(net)  # net arguments of older vitlit versions (Lightning's load_from_checkpoint)
        # The factories are code, not hyperparameters: the run's config records them.
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "batch_mixing"])
        num_classes = len(class_names)
        self.model = ViT(num_classes=num_classes, **net)
        if weights:
            load_pretrained(self.model, weights, load_head=load_head, class_names=class_names)
        self.layer_decay = layer_decay
        self.compile_model = compile
        # Buffers follow the module to its device and dtype; not persistent, as the hparams hold them.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.freeze_backbone = freeze_backbone
        self.batch_mixing = batch_mixing(num_classes) if batch_mixing is not None else None
        self.test_time_flip = test_time_flip
        self.relative_localization_weight = relative_localization_weight
        width = self.model.class_embedding.shape[-1]
        self.relative_localization = DenseRelativeLocalization(width) if relative_localization_weight > 0 else None
        self.locality_guidance = None
        if locality_guidance is not None:
            if self.model.patch_drop_rate:
                raise ValueError("model.locality_guidance needs every patch token: set model.net.patch_drop_rate=0")
            depth = len(self.model.transformer_encoder)
            self.locality_guidance = LocalityGuidance(width, depth, num_classes, **locality_guidance)
        if freeze_backbone:
            self.model.requires_grad_(False)
            self.model.classifier.head.requires_grad_(True)
            # Lightning restores each submodule's own mode after validation, so the backbone starts in eval mode
            # (no dropout in a frozen feature extractor) and train() below keeps it there.
            self.model.eval()
            self.model.classifier.head.train()

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.example_input_array = torch.zeros(1, 3, self.model.image_size, self.model.image_size)
        self.feature_cache: FeatureCache | None = None  # set by FrozenFeatureCache when the features repeat

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), uint8 or already normalised float -> logits (B, num_classes)."""
        if self.feature_cache is not None:  # a frozen backbone's features, computed once per image
            return self.model.classifier.head(self.feature_cache(self.normalize(images), self.model.pre_logits))
        return self.model(self.normalize(images))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images in [0, 255] -> float images normalised with ``mean``/``std``; float images pass unchanged."""
        return normalize(images, self.mean, self.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, rest = (batch, None) if isinstance(batch, torch.Tensor) else (batch[0], list(batch[1:]))
        images = self.normalize(images)
        if self.compile_model and not self.training and len(images) > 1:
            # One compiled eval graph for every batch size, so the last partial batch does not recompile.
            # Training batches stay static (the data module drops the last partial one).
            mark_batch_dynamic(images)
        return images if rest is None else [images, *rest]

    def configure_model(self) -> None:
        # nn.Module.compile compiles in place, so parameter names and checkpoints stay those of the plain model.
        # Static shapes: the training loader drops its last partial batch (see ImageFolderDataModule).
        if self.compile_model and not is_compiled(self.model):
            self.model.compile(dynamic=False)

    def evaluation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation: ``forward``, averaged with the mirrored images' logits when ``test_time_flip``.

        Images (B, V, 3, H, W) hold V views of each image (``data.eval_crop_fraction`` as a list): their
        logits are averaged too (:func:`vitlit.inference.predictor.average_logits`, as prediction does).
        """
        return average_logits(self, images, self.test_time_flip)

    def train(self, mode: bool = True) -> ViTClassifier:
        super().train(mode)
        if self.freeze_backbone and mode:
            self.model.eval()
            self.model.classifier.head.train()
        return self

    def _shared_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: MulticlassAccuracy
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch[0], batch[1]
        if stage == "train":
            targets = labels
            if self.batch_mixing is not None:
                images, targets = self.batch_mixing(images, labels)  # targets: (B, classes) probabilities
            if self.relative_localization is None and self.locality_guidance is None:
                logits = self(images)
                loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
            else:
                logits, loss = self._loss_with_auxiliaries(images, targets)
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
        return loss, logits

    def _loss_with_auxiliaries(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass (``ViT.forward``, compiled with ``compile``) feeds the classifier and the auxiliaries."""
        images = self.normalize(images)
        guidance = self.locality_guidance
        with block_outputs(self.model.transformer_encoder, guidance.blocks if guidance else []) as outputs:
            logits, tokens, kept = self.model(images, return_tokens=True)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        grid = self.model.patch_grid(images)
        if self.relative_localization is not None:
            localization = self.relative_localization(self.model.classifier.norm(tokens[:, 1:]), grid, kept)
            self.log("train/relative_localization", localization, on_step=False, on_epoch=True, batch_size=len(images))
            loss = loss + self.relative_localization_weight * localization
        if guidance is not None:
            imitation = guidance.loss(images, [outputs[block][:, 1:] for block in guidance.blocks], grid)
            self.log("train/locality_guidance", imitation, on_step=False, on_epoch=True, batch_size=len(images))
            loss = loss + guidance.weight * imitation
        return logits, loss

    def on_fit_start(self) -> None:
        guidance = self.locality_guidance
        if guidance is None or bool(guidance.guide_trained):  # trained already: a resumed run
            return
        trainer = self.trainer
        if trainer.datamodule is None:
            raise ValueError(
                "model.locality_guidance trains its guide on the data module's training batches: pass a "
                "LightningDataModule to trainer.fit (datamodule=...), or set model.locality_guidance=null"
            )
        # The random draws the guide's training makes must not depend on whether epochs or steps end the run:
        # when epochs do, configure_optimizers has built the fit loop's training loader by now; build it in both.
        set_up_training_data(trainer)
        if trainer.is_global_zero:
            guidance.fit_guide(
                trainer.datamodule.train_dataloader(),
                self.normalize,
                self.device,
                label_smoothing=self.label_smoothing,
                autocast=trainer.precision_plugin.forward_context,
            )
        # Every process imitates the same guide: rank 0's.
        guide_state = trainer.strategy.broadcast({k: v.cpu() for k, v in guidance.state_dict().items()}, src=0)
        guidance.load_state_dict(guide_state)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", self.train_acc)[0]

    # The logits go to callbacks' on_*_batch_end (confusion matrix, prediction grid, run report).
    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, logits = self._shared_step(batch, "val", self.val_acc)
        return {"loss": loss, "logits": logits}

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, logits = self._shared_step(batch, "test", self.test_acc)
        return {"loss": loss, "logits": logits}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict already holds the pretrained weights: rebuilding from a checkpoint must not need
        # the original file or a network. The run's config.yaml still records which weights were used.
        checkpoint["hyper_parameters"]["weights"] = None
        # The sanity check's validation never reaches val_acc_best (on_validation_epoch_end skips it), so
        # the best so far is kept across fit calls and, through the checkpoint, across resumes.
        if self.val_acc_best.update_called:
            checkpoint["val_acc_best"] = self.val_acc_best.compute()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_module_hparams(checkpoint.get("hyper_parameters", {}))  # raises on a removed option that mattered
        self.resumed_from = {key: checkpoint[key] for key in ("loops", "global_step") if key in checkpoint}
        if "val_acc_best" in checkpoint:
            self.val_acc_best.reset()
            self.val_acc_best(checkpoint["val_acc_best"])

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
        """Trainable parameters split into a weight-decay group and a no-weight-decay group, per layer when
        ``layer_decay`` is set (each group then carries ``lr_scale``, applied in ``configure_optimizers``)."""
        skip = self.model.no_weight_decay()
        depth = len(self.model.transformer_encoder)
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        named_parameters = list(self.model.named_parameters())
        # The auxiliary heads are grouped as part of the classifier (the last layer under layer decay).
        auxiliaries = {"relative_localization": self.relative_localization, "locality_guidance": self.locality_guidance}
        for name, head in auxiliaries.items():
            if head is not None:
                named_parameters += [(f"classifier.{name}.{key}", p) for key, p in head.named_parameters()]
        for name, parameter in named_parameters:
            if not parameter.requires_grad:
                continue
            layer = self._layer_id(name, depth) if self.layer_decay is not None else 0
            decays = not (parameter.ndim <= 1 or name in skip)
            if (layer, decays) not in groups:
                group = {"params": [], "name": ("decay" if decays else "no_decay")}
                if not decays:
                    group["weight_decay"] = 0.0
                if self.layer_decay is not None:
                    group["name"] += f"_layer{layer}"
                    group["lr_scale"] = self.layer_decay ** (depth + 1 - layer)
                groups[layer, decays] = group
            groups[layer, decays]["params"].append(parameter)
        return [groups[key] for key in sorted(groups, key=lambda key: (key[0], not key[1]))]

    @staticmethod
    def _layer_id(name: str, depth: int) -> int:
        """0 for the embeddings, i + 1 for encoder block i, depth + 1 for the classifier."""
        if name.startswith("transformer_encoder."):
            return int(name.split(".")[1]) + 1
        return depth + 1 if name.startswith("classifier.") else 0

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("ViTClassifier was built without an optimizer; pass optimizer= to train it")
        factory = self.optimizer_factory
        if self.device.type == "cuda" and _is_unset_fusable(factory):
            factory = functools.partial(factory, fused=True)  # one CUDA kernel for the whole update
        optimizer = factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        trainer = self.trainer
        if getattr(self, "resumed_from", None) and trainer.max_steps == -1:  # epochs, not max_steps, end the run
            # Lightning restores the loops after this call; the checkpoint's copy says how far the run got.
            epochs = trainer.max_epochs or 0
            total_steps = resumed_total_steps(self.resumed_from, total_steps, epochs, trainer.accumulate_grad_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}


# Optimisers whose CUDA ``fused=True`` implementation covers every dtype a run may train in.
FUSABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def _is_unset_fusable(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` builds an optimiser with a fused CUDA kernel and leaves ``fused`` to us."""
    if isinstance(factory, functools.partial):
        return factory.func in FUSABLE_OPTIMIZERS and "fused" not in factory.keywords
    return factory in FUSABLE_OPTIMIZERS
