"""The LightningDataModule: train / validation / test loaders over an image folder.

Expected layout (torchvision ``ImageFolder`` compatible; classes are the sorted folder names)::

    root/train/<class>/*.jpg      required
    root/val/<class>/*.jpg        validation, when present
    root/test/<class>/*.jpg       test, when present

Validation uses ``val/`` when present, else ``test/``; testing uses ``test/`` when present, else ``val/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader

from vitlit.data.checks import BAD_IMAGE_POLICIES, check_batch_size, drop_bad_images, log_dataset_summary
from vitlit.data.image_datamodule import ImageDataModule, stage_sources
from vitlit.data.image_folder import (
    ImageFolderDataset,
    ImageFolderSplit,
    available_cpus,
    check_same_classes,
    download_and_extract,
    load_all_rgb,
    scan_split,
    stratified_split,
)
from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


class ImageFolderDataModule(ImageDataModule):
    """Train/validation/test loaders over an image folder (see the module docstring for the layout).

    Batches are (images uint8 (B, 3, S, S), labels int64 (B,)); the LightningModule normalises the
    images on the device with ``mean``/``std`` (a quarter of float32's host-to-device traffic).
    A list of ``eval_crop_fraction`` makes evaluation batches (B, V, 3, S, S), one view per fraction
    (multi-scale test-time augmentation: the module averages their logits).
    ``download`` (``{url, sha256, size}``) fetches the dataset when ``root`` does not exist.
    ``num_workers=None`` uses every CPU core this process may run on; ``pin_memory=None`` pins when CUDA is available.
    ``bad_images``: ``error`` stops at set-up listing every image that does not decode; ``skip`` drops them.
    ``fast_decode`` decodes JPEGs at a reduced scale that keeps at least the largest eval resize size
    (``image_size / eval_crop_fraction``, 256 for 224) on both sides. ``cache`` decodes every image once at
    set-up and keeps it in memory (shared with the loader workers), so no epoch reads a file again.
    ``drop_last`` drops the last partial training batch, so every step has the same shape (no
    ``torch.compile`` recompilation) and no step rests on a handful of images.
    ``train_augment=False`` trains on the eval pipeline (its first view), as a frozen feature extractor usually does.
    ``val_fraction`` > 0 validates on that fraction of ``train/`` instead (stratified by class, drawn with
    ``split_seed``) and trains on the rest, so choices made on validation never see ``val/`` or ``test/``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        image_size: int = 224,
        train_crop_scale: Sequence[float] = (0.08, 1.0),
        horizontal_flip: float = 0.5,
        auto_augment: str | None = None,
        random_erasing: float = 0.0,
        eval_crop_fraction: float | Sequence[float] = 0.875,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        download: dict | None = None,
        bad_images: str = "error",
        train_augment: bool = True,
        fast_decode: bool = True,
        cache: bool = False,
        drop_last: bool = True,
        val_fraction: float = 0.0,
        split_seed: int = 0,
    ):
        super().__init__()
        # Checkpoints keep these ("datamodule_hyper_parameters"): eval and predict rebuild the eval transform from them.
        self.save_hyperparameters()
        self.configure_batches(batch_size, num_workers, pin_memory)
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"data.bad_images={bad_images!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
        self.bad_images = bad_images
        self.root = Path(root).expanduser().resolve()
        self.download = download
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.cache = cache
        self.drop_last = drop_last
        self.splits: dict[str, ImageFolderSplit] = {}
        self.datasets: dict[str, ImageFolderDataset] = {}

    def prepare_data(self) -> None:
        if self.root.is_file():
            raise NotADirectoryError(
                f"data.root={self.root} is a file, not a folder; point data.root at a folder laid out like "
                "<root>/train/<class>/*.jpg (a .zip must be extracted first)"
            )
        if self.root.exists():
            return
        if not self.download:
            raise FileNotFoundError(
                f"no image folder at {self.root}; expected {self.root}/train/<class>/*.jpg and "
                f"{self.root}/val/ or {self.root}/test/. Point data.root=/path/to/images at your data."
            )
        download_and_extract(self.download["url"], self.root, self.download["sha256"], self.download.get("size"))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class folder names of the train split, in label order."""
        return self._split("train").classes

    def _split(self, name: str) -> ImageFolderSplit:
        if name not in self.splits:
            self.splits[name] = scan_split(self.root / name)
        return self.splits[name]

    def stage_folders(self) -> dict[str, str]:
        """Which split folder each stage reads: {"train": "train", "val": "val"|"test", "test": "test"|"val"}."""
        return stage_sources([name for name in ("val", "test") if (self.root / name).is_dir()], str(self.root))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        folders = self.stage_folders()
        train = self._split("train")
        for folder in folders.values():
            check_same_classes(train, self._split(folder))
        self.splits = drop_bad_images(self.splits, self.bad_images, self.root, workers=min(available_cpus(), 8))
        check_batch_size(self.batch_size, len(self.splits["train"].samples), self.drop_last)
        decoded = None
        if self.cache:
            paths = sorted({path for folder in set(folders.values()) for path, _ in self.splits[folder].samples})
            decoded = load_all_rgb(paths, self.draft_size)
            megabytes = sum(image.numel() for image in decoded.values()) / 2**20
            log.info("cached %d decoded images in memory (%.0f MiB)", len(decoded), megabytes)
        for stage_name, folder in folders.items():
            transform = self.train_transform if stage_name == "train" else self.eval_transform
            self.datasets[stage_name] = ImageFolderDataset(
                self.splits[folder].samples,
                transform,
                self.draft_size,
                decoded,
            )
        if self.val_fraction:
            rest, held_out = stratified_split(self.splits["train"].samples, self.val_fraction, self.split_seed)
            self.datasets["train"] = ImageFolderDataset(rest, self.train_transform, self.draft_size, decoded)
            self.datasets["val"] = ImageFolderDataset(held_out, self.eval_transform, self.draft_size, decoded)
            log.info(
                "val   uses %d images carved from %s (data.val_fraction=%s, data.split_seed=%d); train keeps %d",
                len(held_out),
                train.path,
                self.val_fraction,
                self.split_seed,
                len(rest),
            )
            folders = {"test": folders["test"]}
        log.info("classes: %s", ", ".join(train.classes))
        for stage_name, folder in folders.items():
            split = self.splits[folder]
            counts = ", ".join(f"{name} {count}" for name, count in split.class_counts().items())
            log.info("%-5s uses %s (%d images: %s)", stage_name, split.path, len(split.samples), counts)
        log_dataset_summary(self.splits, self.root)

    def _loader(self, stage: str, drop_last: bool) -> DataLoader:
        return DataLoader(
            self.datasets[stage],
            batch_size=self.batch_size,
            shuffle=stage == "train",
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        # Keep a partial batch when it is all there is (each process sees 1/world_size of the images).
        world_size = self.trainer.world_size if self.trainer is not None else 1
        full_batch = len(self.datasets["train"]) >= self.batch_size * world_size
        return self._loader("train", drop_last=self.drop_last and full_batch)
