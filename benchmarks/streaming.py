"""The folder path against LitData shards, on the same images: images/s per loader worker, time to first batch,
bytes on disk.

Copies the pizza_steak_sushi photos under new names into a temporary folder until it holds ``--images`` training
images (and a tenth as many test images), writes its shards (original bytes, ``vitlit.data.shards``), then reads
one epoch of training batches (the training pipeline, uint8, batches of 32) through each data module with
``--workers`` loader workers. The two paths take turns ``--repeats`` times; the table shows the median.

    python -m benchmarks.streaming                        # 2000 images, 1 worker, 3 rounds
    python -m benchmarks.streaming --images 500 --repeats 1
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.timing import describe_machine, markdown_table
from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.shards import optimize_image_folder
from vitlit.data.streaming import StreamingDataModule


def build_folder(source: Path, target: Path, train_images: int) -> Path:
    """``target/{train,test}/<class>/`` filled with copies of ``source``'s photos under new names."""
    by_class = [sorted(folder.rglob("*.jpg")) for folder in sorted((source / "train").iterdir()) if folder.is_dir()]
    for split, count in (("train", train_images), ("test", max(train_images // 10, 3))):
        for index in range(count):
            photos = by_class[index % len(by_class)]  # classes in turn: every split holds every class
            photo = photos[(index // len(by_class)) % len(photos)]
            destination = target / split / photo.parent.name / f"{index:06d}.jpg"
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, destination)
    return target


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def one_epoch(datamodule) -> tuple[float, float, int]:
    """(seconds to the first batch, seconds for the whole epoch, images) of the training loader."""
    start = time.perf_counter()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    first, images = None, 0
    for batch, _ in loader:
        first = first or time.perf_counter() - start
        images += len(batch)
    return first, time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", type=Path, default=Path(os.environ.get("VITLIT_DATA_DIR", "data")) / "pizza_steak_sushi"
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="loader workers (images/s is per worker)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # one loader worker's share of the machine

    print(describe_machine(torch.device("cpu")))
    with tempfile.TemporaryDirectory(prefix="vitlit-streaming-") as work:
        folder = build_folder(args.source, Path(work) / "images", args.images)
        start = time.perf_counter()
        shards = optimize_image_folder(folder, Path(work) / "shards", workers=os.cpu_count())
        optimize_seconds = time.perf_counter() - start
        settings = {"batch_size": 32, "num_workers": args.workers, "pin_memory": False, "image_size": 224}
        paths = {
            "folder (data=image_folder)": lambda: ImageFolderDataModule(folder, **settings),
            "LitData shards (data=streaming)": lambda: StreamingDataModule(str(shards), **settings),
        }
        results = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, build in paths.items():
                results[name].append(one_epoch(build()))
        sizes = {
            "folder (data=image_folder)": disk_bytes(folder),
            "LitData shards (data=streaming)": disk_bytes(shards),
        }
    rows = []
    for name, runs in results.items():
        first = statistics.median(run[0] for run in runs)
        rate = statistics.median(run[2] / run[1] for run in runs) / max(args.workers, 1)
        rows.append([name, f"{rate:.0f}", f"{first:.2f}", f"{sizes[name] / 2**20:.1f}"])
    print(
        f"{args.images} training images (pizza_steak_sushi copies), batch 32, train pipeline, "
        f"{args.workers} loader worker(s), median of {args.repeats}; shards written in {optimize_seconds:.1f} s"
    )
    print(markdown_table(["path", "images/s per worker", "first batch (s)", "on disk (MiB)"], rows))


if __name__ == "__main__":
    main()
