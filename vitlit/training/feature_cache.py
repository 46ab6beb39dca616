"""A frozen backbone runs once per image: its features are cached, and only the classifier head trains on them.

With ``model.freeze_backbone=true`` and a training pipeline without random augmentation (the default
ViT-B/16 recipe), every epoch feeds the backbone the same pixels, and the frozen backbone (kept in eval
mode) gives the same features. :class:`FrozenFeatureCache` notices that at the start of fit and test and
gives the module a :class:`FeatureCache`: the first pass over the images computes the features, every
later one reads them. Batches, checkpoints, metrics and dashboards are those of the uncached run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import lightning as L
import torch

log = logging.getLogger(__name__)


class FeatureCache:
    """Features of a frozen backbone by image content: (B, ...) images -> (B, D) features, computing only
    the images it has not seen. The key is a hash of each image's exact values (dtype, shape, bytes)."""

    def __init__(self) -> None:
        self.features: dict[bytes, torch.Tensor] = {}
        self.computed = 0  # images the backbone ran on
        self.reused = 0

    def __len__(self) -> int:
        return len(self.features)

    @staticmethod
    def keys(images: torch.Tensor) -> list[bytes]:
        rows = images.detach().cpu().contiguous().flatten(1)
        header = f"{images.dtype}{tuple(images.shape[1:])}".encode()
        return [hashlib.blake2b(header + row.numpy().tobytes(), digest_size=16).digest() for row in rows]

    def __call__(self, images: torch.Tensor, backbone: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        keys = self.keys(images)
        missing = [index for index, key in enumerate(keys) if key not in self.features]
        if missing:
            with torch.no_grad():
                computed = backbone(images[missing])
            for index, feature in zip(missing, computed, strict=True):
                self.features[keys[index]] = feature
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        return torch.stack([self.features[key] for key in keys])


def why_not_cacheable(trainer: L.Trainer, module: L.LightningModule) -> str | None:
    """Why the backbone's features may change between epochs (then they are not cached), or None."""
    if not getattr(module, "freeze_backbone", False):
        return "model.freeze_backbone=false: the backbone trains"
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or getattr(datamodule, "hparams", {}).get("train_augment", True):
        return "data.train_augment=true: random augmentation gives the backbone new pixels every epoch"
    if module.batch_mixing is not None:
        return "model.batch_mixing mixes training images"
    if module.relative_localization is not None:
        return "model.relative_localization_weight > 0 reads every token"
    if module.model.patch_drop_rate > 0:
        return "model.net.patch_drop_rate > 0 drops random patches"
    return None


class FrozenFeatureCache(L.Callback):
    """Gives a frozen-backbone module a :class:`FeatureCache` for fit and test when its inputs repeat exactly;
    otherwise the normal path runs and the log says why. ``callbacks.feature_cache=null`` turns it off."""

    def __init__(self) -> None:
        self.cache: FeatureCache | None = None
        self.active = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        reason = why_not_cacheable(trainer, pl_module)
        if reason is not None:
            if getattr(pl_module, "freeze_backbone", False):  # without a frozen backbone there is nothing to say
                log.info("frozen-backbone features are not cached: %s; the backbone runs every step", reason)
        elif self.cache is None:
            self.cache = FeatureCache()
            log.info("the frozen backbone runs once per image: its features are cached and only the head trains")
        self.active = reason is None

    # Attached for the loops only: the model summary's example input and other one-off calls run the model.
    def _attach(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            pl_module.feature_cache = self.cache

    on_train_start = on_validation_start = on_test_start = _attach

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.active:
            log.info("feature cache: %d images, backbone ran %d times", len(self.cache), self.cache.computed)
        pl_module.feature_cache = None  # eval and predict after the run take the plain path
