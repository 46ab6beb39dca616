"""Image folders -> LitData shards, once: ``python -m vitlit.streaming optimize <image folder> <output dir>``.

Each split folder present (``train/``, ``val/``, ``test/``) becomes ``<output dir>/<split>/`` (LitData's
``index.json`` and ``chunk-*.bin``); one sample is ``{"image": encoded bytes, "label": int, "name": "<class>/<file>"}``.
``<output dir>/classes.json`` holds the class names (label order) and the images per split, so the shard set
alone says what its labels mean. Work happens in ``<output dir>.partial/``, renamed to ``<output dir>`` when
every split is written: an output that exists is complete. A rerun after a crash keeps the splits the partial
folder already finished (LitData writes a split's ``index.json`` last) and writes the rest.

LitData (``pip install 'vitlit[streaming]'``) is imported only when shards are written or read.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vitlit.data.checks import BAD_IMAGE_POLICIES, drop_bad_images
from vitlit.data.image_folder import ImageFolderSplit, available_cpus, check_same_classes, load_rgb, scan_split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASSES_FILE = "classes.json"
DEFAULT_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
INSTALL_HINT = "pip install 'vitlit[streaming]'  (or: pip install litdata)"


def import_litdata() -> Any:
    """The ``litdata`` module, or one ``ImportError`` saying how to install it."""
    try:
        import litdata
    except ImportError as error:
        raise ImportError(
            f"data=streaming and vitlit.data.shards need LitData, which is not installed ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from error
    return litdata


def encode_sample(sample: tuple[str, int, str], short_side: int | None = None) -> dict[str, Any]:
    """(path, label, name) -> one shard sample: the file's bytes, or with ``short_side`` a JPEG (quality 95)
    whose shorter side is at most ``short_side`` (EXIF rotation applied; never enlarged)."""
    path, label, name = sample
    if short_side is None:
        data = Path(path).read_bytes()
    else:
        image = load_rgb(path, draft_size=short_side)
        height, width = image.shape[1:]
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        if min(height, width) > short_side:
            scale = short_side / min(height, width)
            pil = pil.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
    return {"image": data, "label": label, "name": name}


def _checked_splits(root: Path, bad_images: str, workers: int) -> dict[str, ImageFolderSplit]:
    """The split folders of ``root`` with every image checked; ``bad_images`` says what undecodable ones do."""
    splits = {name: scan_split(root / name) for name in SPLITS if (root / name).is_dir()}
    if "train" not in splits:
        raise FileNotFoundError(f"no {root / 'train'}; expected {root}/train/<class>/*.jpg (and val/ or test/)")
    for split in splits.values():
        check_same_classes(splits["train"], split)
    return drop_bad_images(splits, bad_images, root, workers, skip_option="--bad-images skip")


def _check_split_written(split_dir: Path, expected: int) -> None:
    """Raise unless LitData's index of ``split_dir`` lists ``expected`` samples: a worker that died (LitData
    goes on without it) would otherwise leave a split that looks complete."""
    index = json.loads((split_dir / "index.json").read_text()) if (split_dir / "index.json").is_file() else {}
    written = sum(chunk.get("chunk_size", 0) for chunk in index.get("chunks", []))
    if written != expected:
        (split_dir / "index.json").unlink(missing_ok=True)  # a rerun writes this split again
        raise RuntimeError(
            f"LitData wrote {written} of {expected} samples into {split_dir} (a worker failed: see its traceback "
            "above); run the same command again to rewrite this split"
        )


def optimize_image_folder(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    short_side: int | None = None,
    workers: int | None = None,
    bad_images: str = "error",
    chunk_bytes: str = "64MB",
    overwrite: bool = False,
    start_method: str | None = DEFAULT_START_METHOD,
) -> Path:
    """Write the LitData shards of every split of the image folder ``root`` into ``output_dir``; return it.

    ``workers`` processes encode and write (default: one per CPU core); ``bad_images`` is ``error`` (stop,
    naming every file that does not decode) or ``skip`` (leave them out, with a warning). An existing complete
    ``output_dir`` is refused unless ``overwrite``. ``start_method`` starts the workers: fork where the OS has it
    (a second, not spawn's seconds per worker of importing torch), else LitData's default.
    """
    litdata = import_litdata()
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images={bad_images!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be at least 1 pixel, got {short_side}")
    root, output = Path(root).expanduser().resolve(), Path(output_dir).expanduser().resolve()
    if output.exists():
        if not overwrite:
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it, or choose another output folder")
        shutil.rmtree(output)
    workers = workers or available_cpus()
    splits = _checked_splits(root, bad_images, workers)
    partial = output.with_name(output.name + ".partial")
    settings = {"source": str(root), "short_side": short_side}
    settings_file = partial / "settings.json"
    if partial.exists() and (not settings_file.is_file() or json.loads(settings_file.read_text()) != settings):
        log.info("%s was started with other settings or another source; starting it again", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings))
    for name, split in splits.items():
        split_dir = partial / name
        if (split_dir / "index.json").is_file():
            log.info("%s: already written by an earlier run, kept", split_dir)
            continue
        shutil.rmtree(split_dir, ignore_errors=True)
        inputs = [(path, label, str(Path(path).relative_to(split.path))) for path, label in split.samples]
        log.info("writing %d %s images into %s with %d workers", len(inputs), name, split_dir, workers)
        litdata.optimize(
            fn=functools.partial(encode_sample, short_side=short_side),
            inputs=inputs,
            output_dir=str(split_dir),
            chunk_bytes=chunk_bytes,
            num_workers=min(workers, len(inputs)),
            reorder_files=False,  # keep the folder's order: the shards then list classes in turn
            start_method=start_method,
        )
        _check_split_written(split_dir, len(inputs))
    classes = {
        "classes": list(splits["train"].classes),
        "splits": {name: len(split.samples) for name, split in splits.items()},
        **settings,
    }
    settings_file.unlink()
    (partial / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")
    partial.rename(output)
    log.info("wrote %s: %s", output, ", ".join(f"{name} {count}" for name, count in classes["splits"].items()))
    return output


def read_classes_file(input_dir: str, cache_dir: str | None = None, storage_options: dict | None = None) -> dict:
    """``<input_dir>/classes.json`` of a shard set, local or in object storage (``s3://``, ``gs://``, ...):
    ``{"classes": [...], "splits": {split: count}, ...}``."""
    if "://" not in input_dir:
        path = Path(input_dir).expanduser() / CLASSES_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {path}: {input_dir} is not a vitlit shard set; write one with "
                "python -m vitlit.streaming optimize <image folder> <output dir>"
            )
        return json.loads(path.read_text())
    import_litdata()
    from litdata.streaming.downloader import get_downloader

    local_dir = Path(cache_dir or Path.home() / ".cache" / "vitlit" / "shards").expanduser()
    local = local_dir / input_dir.replace("://", "/") / CLASSES_FILE
    local.parent.mkdir(parents=True, exist_ok=True)
    remote = f"{input_dir.rstrip('/')}/{CLASSES_FILE}"
    try:
        downloader = get_downloader(input_dir, str(local.parent), [], storage_options or {})
        downloader.download_file(remote, str(local))
    except Exception as error:  # each storage backend raises its own kinds (botocore, obstore, fsspec, ...)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"could not read {remote} ({reason}); check the address, the network and the credentials LitData "
            "reads (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or data.storage_options)"
        ) from None
    return json.loads(local.read_text())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitlit.streaming", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("optimize", help="write the LitData shards of an image folder")
    command.add_argument("root", help="image folder: root/train/<class>/*.jpg (and val/, test/)")
    command.add_argument("output_dir", help="where the shards go (must not exist, unless --overwrite)")
    command.add_argument("--short-side", type=int, default=None, help="re-encode as JPEG at this shorter side")
    command.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")
    command.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES, default="error")
    command.add_argument("--chunk-bytes", default="64MB", help="shard size (LitData's chunk_bytes)")
    command.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    command.add_argument("--start-method", default=DEFAULT_START_METHOD, help="fork, spawn or forkserver")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        optimize_image_folder(
            args.root,
            args.output_dir,
            args.short_side,
            args.workers,
            args.bad_images,
            args.chunk_bytes,
            args.overwrite,
            args.start_method,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as error:
        parser.exit(1, f"error: {error}\n")


if __name__ == "__main__":
    main()
