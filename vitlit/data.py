"""Image-folder data: layout checks, the optional dataset download, and the LightningDataModule.

Expected layout (torchvision ``ImageFolder`` compatible; classes are the sorted folder names)::

    root/train/<class>/*.jpg      required
    root/val/<class>/*.jpg        validation, when present
    root/test/<class>/*.jpg       test, when present

Validation uses ``val/`` when present, else ``test/``; testing uses ``test/`` when present, else ``val/``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from vitlit.data_checks import (
    BAD_IMAGE_POLICIES,
    check_batch_size,
    drop_bad_images,
    log_dataset_summary,
    to_rgb,
    warn_about_loose_files,
)
from vitlit.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_fractions, eval_transform, train_transform

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})


@dataclass(frozen=True)
class ImageFolderSplit:
    """One split folder: its class names (sorted) and (path, class index) samples."""

    path: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.samples:
            counts[self.classes[label]] += 1
        return counts


def is_image(path: Path, folder: Path) -> bool:
    # Broken links count as images here so that the decode check reports them instead of hiding them.
    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not hidden and (path.is_file() or path.is_symlink())


def scan_split(path: Path) -> ImageFolderSplit:
    """List ``path/<class>/**/<image>``; raise a clear error for a missing split or an empty class.

    Non-image files (``.DS_Store``, notes) and hidden files and folders are ignored; images directly in
    ``path`` (in no class folder) are ignored with a warning.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"split folder {path} does not exist; expected {path}/<class>/<image>.jpg")
    classes = tuple(sorted(entry.name for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith(".")))
    if not classes:
        raise ValueError(f"split folder {path} has no class folders; expected {path}/<class>/<image>.jpg")
    samples = []
    for label, name in enumerate(classes):
        images = sorted(str(p) for p in (path / name).rglob("*") if is_image(p, path / name))
        if not images:
            raise ValueError(
                f"class folder {path / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images to it or remove it"
            )
        samples.extend((image, label) for image in images)
    warn_about_loose_files(path, IMAGE_EXTENSIONS)
    return ImageFolderSplit(path, classes, tuple(samples))


def check_same_classes(reference: ImageFolderSplit, other: ImageFolderSplit) -> None:
    """Raise if two splits do not hold the same class folders (labels would silently disagree)."""
    if reference.classes != other.classes:
        only_reference = sorted(set(reference.classes) - set(other.classes))
        only_other = sorted(set(other.classes) - set(reference.classes))
        raise ValueError(
            f"class folders differ between {reference.path} and {other.path}: "
            f"only in {reference.path.name}/: {only_reference or 'none'}; "
            f"only in {other.path.name}/: {only_other or 'none'}. "
            "Every split needs the same class folders."
        )


def load_rgb(path: str | os.PathLike, draft_size: int | None = None) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W), upright as its EXIF orientation says.

    With ``draft_size``, JPEGs decode straight at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much
    cheaper than a full decode and a resize) while both sides stay at least ``draft_size``; other
    formats ignore it.
    """
    with Image.open(path) as image:
        if draft_size:
            image.draft(None, (draft_size, draft_size))
        ImageOps.exif_transpose(image, in_place=True)
        return pil_to_tensor(image if image.mode == "RGB" else to_rgb(image))


def load_all_rgb(paths: Sequence[str], draft_size: int | None = None) -> dict[str, torch.Tensor]:
    """Decode every image in ``paths`` (in threads: decoding releases the GIL) -> {path: uint8 (3, H, W)}."""
    with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
        return dict(zip(paths, pool.map(functools.partial(load_rgb, draft_size=draft_size), paths), strict=True))


class ImageFolderDataset(Dataset):
    """Decodes ``samples[i]`` to a uint8 RGB tensor (EXIF rotation applied) and applies ``transform``.

    Returns (image, label): image as produced by ``transform`` (3, S, S), label an int; with
    ``return_index`` (image, label, index): ``index`` is the sample's position in ``samples``, an id of the image.
    ``draft_size`` is passed to :func:`load_rgb`; ``decoded`` ({path: image}, e.g. from
    :func:`load_all_rgb`) serves images decoded earlier instead of reading the files again.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        draft_size: int | None = None,
        decoded: dict[str, torch.Tensor] | None = None,
        return_index: bool = False,
    ):
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size
        self.decoded = decoded
        self.return_index = return_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        image = self.decoded[path] if self.decoded is not None else load_rgb(path, self.draft_size)
        return (self.transform(image), label, index) if self.return_index else (self.transform(image), label)


def stratified_split(
    samples: Sequence[tuple[str, int]], fraction: float, seed: int = 0
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split (path, label) samples into (rest, held_out): ``round(fraction * n)`` of each class held out,
    drawn with ``seed``, at least one per class and never a whole class. Same inputs, same split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1) to carve a validation split, got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    rest, held_out = [], []
    for label in sorted({label for _, label in samples}):
        members = [sample for sample in samples if sample[1] == label]
        if len(members) < 2:
            raise ValueError(f"class {label} has {len(members)} training image; data.val_fraction needs at least 2")
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        order = torch.randperm(len(members), generator=generator).tolist()
        held_out += [members[i] for i in sorted(order[:count])]
        rest += [members[i] for i in sorted(order[count:])]
    return rest, held_out


def download_and_extract(url: str, root: Path, sha256: str, size: int | None = None) -> None:
    """Download the zip at ``url``, verify its SHA-256, and extract it so that ``root/train`` exists.

    Works in a temporary folder beside ``root`` and moves the result into place at the end, so an
    interrupted download never leaves a half-written dataset; an existing ``root`` is never touched.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-download-") as work:
        archive = Path(work) / "archive.zip"
        log.info("downloading %s to %s", url, root)
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as file:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    file.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            raise RuntimeError(
                f"no data at {root}, and downloading it from {url} failed ({error}). "
                f"If this machine is offline, copy the images to {root} "
                "(layout train/<class>/*.jpg, test/<class>/*.jpg) "
                "or point data.root=/path/to/images (or the VITLIT_DATA_DIR environment variable) at a local copy."
            ) from error
        if size is not None and archive.stat().st_size != size:
            raise RuntimeError(f"download from {url} has {archive.stat().st_size} bytes, expected {size}; try again")
        if digest.hexdigest() != sha256:
            raise RuntimeError(f"download from {url} has sha256 {digest.hexdigest()}, expected {sha256}; try again")
        extracted = Path(work) / "extracted"
        with zipfile.ZipFile(archive) as zip_file:
            zip_file.extractall(extracted)
        # Archives hold either train/ at their top or one folder that holds it.
        tops = [p for p in extracted.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        content = tops[0] if len(tops) == 1 and not (extracted / "train").is_dir() else extracted
        if not (content / "train").is_dir():
            raise RuntimeError(f"the archive from {url} has no train/ folder; it is not an image-folder dataset")
        if not root.exists():
            content.rename(root)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity where the OS has one, e.g. under SLURM or taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ImageFolderDataModule(L.LightningDataModule):
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
    ``train_index=True`` makes training batches (images, labels, indices), each image's index in the training
    set (0 to ``train_size - 1``), for ``model.instance_discrimination_weight``.
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
        train_index: bool = False,
    ):
        super().__init__()
        # Checkpoints keep these ("datamodule_hyper_parameters"): eval and predict rebuild the eval transform from them.
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"data.num_workers must be 0 (load in the main process) or more, got {num_workers}")
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"data.bad_images={bad_images!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
        self.bad_images = bad_images
        self.root = Path(root).expanduser().resolve()
        self.batch_size = batch_size
        self.num_workers = available_cpus() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.download = download
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_index = train_index
        self.mean, self.std = tuple(mean), tuple(std)
        fractions = crop_fractions(eval_crop_fraction)
        self.eval_transform = eval_transform(image_size, fractions, interpolation, mean, std, normalize=False)
        if train_augment:
            self.train_transform = train_transform(
                image_size,
                train_crop_scale,
                horizontal_flip,
                auto_augment,
                interpolation,
                mean,
                std,
                normalize=False,
                random_erasing=random_erasing,
            )
        elif len(fractions) == 1:
            self.train_transform = self.eval_transform
        else:  # one view: training batches stay (B, 3, S, S)
            self.train_transform = eval_transform(image_size, fractions[0], interpolation, mean, std, normalize=False)
        self.draft_size = round(image_size / min(fractions)) if fast_decode else None
        self.cache = cache
        self.drop_last = drop_last
        self.splits: dict[str, ImageFolderSplit] = {}
        self.datasets: dict[str, ImageFolderDataset] = {}

    def prepare_data(self) -> None:
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
        present = [name for name in ("val", "test") if (self.root / name).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"{self.root} has neither val/ nor test/; add one (laid out like {self.root}/train/<class>/*.jpg)"
            )
        return {"train": "train", "val": present[0], "test": present[-1]}

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
                return_index=self.train_index and stage_name == "train",
            )
        if self.val_fraction:
            rest, held_out = stratified_split(self.splits["train"].samples, self.val_fraction, self.split_seed)
            self.datasets["train"] = ImageFolderDataset(
                rest, self.train_transform, self.draft_size, decoded, return_index=self.train_index
            )
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

    def _loader(self, stage: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[stage],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        # Keep a partial batch when it is all there is (each process sees 1/world_size of the images).
        world_size = self.trainer.world_size if self.trainer is not None else 1
        full_batch = len(self.datasets["train"]) >= self.batch_size * world_size
        return self._loader("train", shuffle=True, drop_last=self.drop_last and full_batch)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
