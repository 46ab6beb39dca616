"""Data pipeline speed per loader worker: vitlit's pipelines vs the reference one.

The reference is what the replaced notebook used: ``ImageFolder`` + PIL + ``Resize((224, 224))`` +
``ToTensor``. Every pipeline runs in this process on one thread (as one DataLoader worker does),
batches of 32 collated, a whole pass over the train split per round; the pipelines take turns in
every round, so the ratios hold on a busy machine.

    python -m benchmarks.data_pipeline                    # ${VITLIT_DATA_DIR:-data}/pizza_steak_sushi
    python -m benchmarks.data_pipeline --root ../shared/data/pizza_steak_sushi --repeats 5
    python -m benchmarks.data_pipeline --quick            # 64 images, one round
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision import transforms as reference_transforms

from benchmarks.timing import describe_machine, markdown_table, time_interleaved
from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.transforms import train_transform

BATCH_SIZE = 32


def reference_dataset(root: Path) -> Dataset:
    transform = reference_transforms.Compose([reference_transforms.Resize((224, 224)), reference_transforms.ToTensor()])
    return datasets.ImageFolder(root / "train", transform=transform)


def vitlit_dataset(root: Path, stage: str = "train", **options) -> tuple[Dataset, float]:
    """vitlit's dataset for ``stage`` and the seconds its set-up took (the cache decodes everything there)."""
    data = ImageFolderDataModule(root, batch_size=BATCH_SIZE, num_workers=0, **options)
    start = time.perf_counter()
    data.setup("fit")
    return data.datasets[stage], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = Path(os.environ.get("VITLIT_DATA_DIR", "data")) / "pizza_steak_sushi"
    parser.add_argument("--root", type=Path, default=default_root, help=f"image folder (default {default_root})")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per pipeline (median reported)")
    parser.add_argument("--quick", action="store_true", help="64 images, one round: a smoke test")
    args = parser.parse_args()
    if not (args.root / "train").is_dir():
        parser.error(f"no {args.root}/train; pass --root /path/to/pizza_steak_sushi or set VITLIT_DATA_DIR")
    torch.set_num_threads(1)  # what each DataLoader worker gets
    repeats = 1 if args.quick else args.repeats

    foundation_float = train_transform(224)  # normalised float32 in the worker, as before uint8 batches
    reference_name = "reference: ImageFolder + PIL Resize((224,224)) + ToTensor"
    pipelines: dict[str, Dataset] = {reference_name: reference_dataset(args.root)}
    full_decode_float, _ = vitlit_dataset(args.root, fast_decode=False)
    full_decode_float.transform = foundation_float
    pipelines["vitlit train, full decode, float32 normalised in the worker"] = full_decode_float
    pipelines["vitlit train, full decode, uint8"] = vitlit_dataset(args.root, fast_decode=False)[0]
    pipelines["vitlit train (default: draft decode, uint8)"] = vitlit_dataset(args.root)[0]
    pipelines["vitlit eval (draft decode, uint8)"] = vitlit_dataset(args.root, stage="val")[0]
    cached, cache_seconds = vitlit_dataset(args.root, cache=True)
    pipelines["vitlit train, data.cache=true"] = cached

    count = 64 if args.quick else None
    loaders = {}
    for name, dataset in pipelines.items():
        subset = Subset(dataset, range(min(count, len(dataset)))) if count else dataset
        loaders[name] = DataLoader(subset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    images = {name: len(loader.dataset) for name, loader in loaders.items()}
    seconds = time_interleaved(
        {name: lambda loader=loader: sum(1 for _ in loader) for name, loader in loaders.items()},
        torch.device("cpu"),
        repeats,
    )

    reference = images[reference_name] / seconds[reference_name]
    rows = []
    for name, value in seconds.items():
        throughput = images[name] / value
        rows.append([name, f"{throughput:.0f}", f"{throughput / reference:.2f}x", f"{value:.2f}"])
    print(
        f"\nData pipeline, one worker, batches of {BATCH_SIZE}, median of {repeats} passes over {args.root / 'train'}"
    )
    print(f"{describe_machine(torch.device('cpu'))}\n")
    print(markdown_table(["pipeline", "img/s per worker", "vs reference", "s per pass"], rows))
    print(f"\ndata.cache=true decoded {len(cached.decoded)} images (train and test) at set-up in {cache_seconds:.2f} s")


if __name__ == "__main__":
    main()
