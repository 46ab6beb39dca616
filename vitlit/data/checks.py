"""Checks an image folder at set-up, so a bad file stops the run there and not mid-epoch in a worker.

- :func:`to_rgb` turns any mode PIL decodes (grayscale, 16-bit, palette, RGBA/LA, CMYK) into 8-bit RGB.
- :func:`find_bad_images` decodes every image once, in parallel, and remembers the verdicts by file
  size and modification time, so the next run over the same files checks nothing.
- :func:`drop_bad_images` applies ``data.bad_images``: ``error`` (stop, listing every bad file) or
  ``skip`` (train without them, with one warning listing them).
- :func:`log_dataset_summary` logs images per class and split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from vitlit.data.image_folder import ImageFolderSplit

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


def decode_problem(path: str) -> str | None:
    """Why ``path`` cannot be decoded, or None when it decodes. JPEGs decode at 1/8 scale: still every byte."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 8 or 1, image.height // 8 or 1))
            image.load()
    except Image.DecompressionBombError as error:
        return f"too large to decode safely ({error}); shrink the image, or raise PIL.Image.MAX_IMAGE_PIXELS"
    except FileNotFoundError:
        return "cannot be opened (a broken symbolic link?)"
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        return str(error).replace(f"'{path}'", "").strip() or type(error).__name__
    return None


def cache_file_for(root: Path) -> Path:
    """Where the verdicts for the images under ``root`` are kept: ``$XDG_CACHE_HOME/vitlit/image_checks/``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vitlit" / "image_checks" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"


def _read_cache(cache_file: Path) -> dict[str, list]:
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache_file: Path, cache: dict[str, list]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, suffix=".tmp", delete=False) as file:
            json.dump(cache, file)
        os.replace(file.name, cache_file)
    except OSError as error:  # a read-only home only costs the next run a re-check
        log.debug("could not write the image check cache %s: %s", cache_file, error)


def find_bad_images(paths: Iterable[str], cache_file: Path | None = None, workers: int = 1) -> dict[str, str]:
    """Decode every file in ``paths`` (``workers`` threads); return {path: problem} for those that fail.

    Verdicts are cached in ``cache_file`` by (size, mtime): an unchanged file is not decoded again.
    """
    cache = _read_cache(cache_file) if cache_file else {}
    verdicts: dict[str, list] = {}
    to_check: list[tuple[str, list]] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            verdicts[path] = [-1, -1, "cannot be opened (a broken symbolic link?)"]
            continue
        key = [stat.st_size, stat.st_mtime_ns]
        cached = cache.get(path)
        if isinstance(cached, list) and cached[:2] == key:
            verdicts[path] = cached
        else:
            to_check.append((path, key))
    if to_check:
        log.info("checking that %d images decode (cached for the next run)", len(to_check))
        with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
            problems = pool.map(decode_problem, [path for path, _ in to_check])
            for (path, key), problem in zip(to_check, problems, strict=True):
                verdicts[path] = [*key, problem]
    if cache_file and (to_check or set(verdicts) != set(cache)):
        _write_cache(cache_file, verdicts)
    return {path: verdict[2] for path, verdict in verdicts.items() if verdict[2] is not None}


def drop_bad_images(
    splits: Mapping[str, ImageFolderSplit],
    policy: str,
    root: Path,
    workers: int = 1,
    skip_option: str = "data.bad_images=skip",
) -> dict[str, ImageFolderSplit]:
    """Check every image of ``splits`` and apply ``policy`` (``error`` or ``skip``); return the kept splits.

    ``skip_option`` is how the command the user ran asks for ``skip``.
    """
    paths = sorted({path for split in splits.values() for path, _ in split.samples})
    bad = find_bad_images(paths, cache_file_for(root), workers)
    if not bad:
        return dict(splits)
    listing = "\n".join(f"  {path}: {problem}" for path, problem in sorted(bad.items()))
    if policy == "error":
        raise ValueError(
            f"{len(bad)} of {len(paths)} images cannot be decoded:\n{listing}\n"
            f"Replace or delete them, or pass {skip_option} to leave them out."
        )
    log.warning("skipping %d of %d images that cannot be decoded (%s):\n%s", len(bad), len(paths), skip_option, listing)
    kept = {}
    for name, split in splits.items():
        kept[name] = dataclasses.replace(split, samples=tuple(s for s in split.samples if s[0] not in bad))
        for class_name, count in kept[name].class_counts().items():
            if count == 0:
                raise ValueError(f"class folder {split.path / class_name} holds no image that decodes; add some")
    return kept


def dataset_summary(splits: Mapping[str, ImageFolderSplit]) -> str:
    """A table of images per class (rows) and split folder (columns), with totals."""
    names = list(splits)
    classes = next(iter(splits.values())).classes
    counts = {name: split.class_counts() for name, split in splits.items()}
    width = max(len("class"), *(len(c) for c in classes))
    rows = [f"{'class':<{width}}" + "".join(f"  {name:>6}" for name in names)]
    rows += [f"{c:<{width}}" + "".join(f"  {counts[name][c]:>6}" for name in names) for c in classes]
    rows.append(f"{'total':<{width}}" + "".join(f"  {len(splits[name].samples):>6}" for name in names))
    return "\n".join(rows)


def log_dataset_summary(splits: Mapping[str, ImageFolderSplit], root: Path) -> None:
    log.info("dataset %s: images per class and split\n%s", root, dataset_summary(splits))


def check_batch_size(batch_size: int, num_images: int, drop_last: bool) -> None:
    """Note a batch larger than the training set: the loader keeps its one partial batch even with ``drop_last``,
    since dropping it would leave an epoch with nothing to train on."""
    if batch_size <= num_images:
        return
    log.warning(
        "data.batch_size=%d is larger than the %d training images: each epoch is one batch of %d%s",
        batch_size,
        num_images,
        num_images,
        " (kept although data.drop_last=true, or no batch would be left)" if drop_last else "",
    )
