"""Image folders as plain data: the layout scan, decoding, the dataset, a validation split, the download.

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
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2.functional import pil_to_tensor

try:  # phones' HEIC/HEIF photos, with the heif extra (pip install "vitlit[heif]")
    from pillow_heif import register_heif_opener
except ImportError:
    register_heif_opener = None
else:
    register_heif_opener()

log = logging.getLogger(__name__)

HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
HEIF_INSTALL = 'HEIC/HEIF photos need pillow-heif: pip install "vitlit[heif]"'
# What torchvision's ImageFolder reads (users migrate from it: the same folder gives the same dataset), and GIF.
IMAGE_EXTENSIONS = frozenset(IMG_EXTENSIONS) | {".gif"} | (HEIF_EXTENSIONS if register_heif_opener else frozenset())
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB copy of ``image``; 16-bit grayscale is scaled to 8 bits (PIL's ``convert`` would clip it to white)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.int64)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = (pixels.clip(0, 65535) * 255 + 32767) // 65535
        image = Image.fromarray(pixels.astype(np.uint8), mode="L")
    return image.convert("RGB")


def warn_about_loose_files(split_path: Path, image_extensions: Iterable[str]) -> None:
    """Log a note for images lying directly in a split folder: they belong to no class and are not used."""
    extensions = set(image_extensions)
    loose = sorted(p.name for p in split_path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if loose:
        log.warning(
            "%d images directly in %s belong to no class and are ignored (move them into %s/<class>/): %s",
            len(loose),
            split_path,
            split_path,
            ", ".join(loose[:10]) + (", ..." if len(loose) > 10 else ""),
        )


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


def images_in(folder: Path) -> tuple[list[Path], Counter[str]]:
    """The images under ``folder`` (recursively, sorted) and how many other files it holds per extension
    (``.txt``: 2, ``(none)``: 1); hidden files and folders are not counted."""
    images, ignored = [], Counter()
    for path in sorted(folder.rglob("*"), key=str):
        if is_image(path, folder):
            images.append(path)
        elif path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            ignored[path.suffix.lower() or "(none)"] += 1
    return images, ignored


def log_ignored_files(folder: Path, ignored: Counter[str]) -> None:
    """One warning naming how many files of which extensions under ``folder`` are not read as images."""
    if not ignored:
        return
    counts = ", ".join(f"{suffix} ({count})" for suffix, count in sorted(ignored.items()))
    heif = f"; {HEIF_INSTALL}" if HEIF_EXTENSIONS & ignored.keys() else ""
    log.warning(
        "ignored %d files in %s that are not images (%s): %s%s",
        ignored.total(),
        folder,
        ", ".join(sorted(IMAGE_EXTENSIONS)),
        counts,
        heif,
    )


def scan_split(path: Path) -> ImageFolderSplit:
    """List ``path/<class>/**/<image>``; raise a clear error for a missing split or an empty class.

    Non-image files (notes, ``.heic`` without pillow-heif) are ignored with one warning counting them per
    extension; hidden files and folders (``.DS_Store``) silently; images directly in ``path`` (in no class
    folder) with a warning naming them.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"split folder {path} does not exist; expected {path}/<class>/<image>.jpg")
    classes = tuple(sorted(entry.name for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith(".")))
    if not classes:
        raise ValueError(f"split folder {path} has no class folders; expected {path}/<class>/<image>.jpg")
    samples, ignored = [], Counter()
    for label, name in enumerate(classes):
        found, ignored_here = images_in(path / name)
        images, ignored = [str(p) for p in found], ignored + ignored_here
        if not images:
            others = f"; it holds {', '.join(sorted(ignored_here))} files" if ignored_here else ""
            heif = f" ({HEIF_INSTALL})" if HEIF_EXTENSIONS & ignored_here.keys() else ""
            raise ValueError(
                f"class folder {path / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}){others}{heif}; "
                "add images to it or remove it"
            )
        samples.extend((image, label) for image in images)
    warn_about_loose_files(path, IMAGE_EXTENSIONS)
    log_ignored_files(path, ignored)
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

    Returns (image, label): image as produced by ``transform`` (3, S, S), label an int.
    ``draft_size`` is passed to :func:`load_rgb`; ``decoded`` ({path: image}, e.g. from
    :func:`load_all_rgb`) serves images decoded earlier instead of reading the files again.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        draft_size: int | None = None,
        decoded: dict[str, torch.Tensor] | None = None,
    ):
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = self.decoded[path] if self.decoded is not None else load_rgb(path, self.draft_size)
        return self.transform(image), label


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


class DatasetDownloadError(RuntimeError):
    """The dataset is not on disk and cannot be downloaded (offline, a read-only or full disk, a bad archive)."""


def download_and_extract(url: str, root: Path, sha256: str, size: int | None = None) -> None:
    """Download the zip at ``url``, verify its SHA-256, and extract it so that ``root/train`` exists.

    Works in a temporary folder beside ``root`` and moves the result into place at the end, so an
    interrupted download never leaves a half-written dataset; an existing ``root`` is never touched.
    """
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        work_folder = tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-download-")
    except OSError as error:  # a read-only or full disk, no permission
        raise DatasetDownloadError(
            f"no data at {root}, and it cannot be downloaded into {root.parent} ({error.strerror}). Point "
            "data.root=/path/to/images (or the VITLIT_DATA_DIR environment variable) at a copy of the images, "
            "or at a folder on a writable disk to download into."
        ) from None
    with work_folder as work:
        archive = Path(work) / "archive.zip"
        log.info("downloading %s to %s", url, root)
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as file:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    file.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            raise DatasetDownloadError(
                f"no data at {root}, and downloading it from {url} failed ({error}). "
                f"If this machine is offline, copy the images to {root} "
                "(layout train/<class>/*.jpg, test/<class>/*.jpg) "
                "or point data.root=/path/to/images (or the VITLIT_DATA_DIR environment variable) at a local copy."
            ) from error
        if size is not None and archive.stat().st_size != size:
            raise DatasetDownloadError(
                f"download from {url} has {archive.stat().st_size} bytes, expected {size}; try again"
            )
        if digest.hexdigest() != sha256:
            raise DatasetDownloadError(
                f"download from {url} has sha256 {digest.hexdigest()}, expected {sha256}; try again"
            )
        extracted = Path(work) / "extracted"
        with zipfile.ZipFile(archive) as zip_file:
            zip_file.extractall(extracted)
        # Archives hold either train/ at their top or one folder that holds it.
        tops = [p for p in extracted.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        content = tops[0] if len(tops) == 1 and not (extracted / "train").is_dir() else extracted
        if not (content / "train").is_dir():
            raise DatasetDownloadError(
                f"the archive from {url} has no train/ folder; it is not an image-folder dataset"
            )
        if not root.exists():
            content.rename(root)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity where the OS has one, e.g. under SLURM or taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
