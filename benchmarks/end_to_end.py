"""End to end: one epoch of ``train.py`` (Lightning + Hydra) vs a plain PyTorch loop doing the same work.

Both sides build the model, the data module's loaders and AdamW with the same parameter groups,
warm-up + cosine schedule, label smoothing, gradient clipping and precision from one composed config,
then train one epoch, validate once and save a checkpoint. ``train.py``'s side is ``train(cfg)`` itself
(what ``python train.py`` calls) with its default callbacks and TensorBoard logger; the sanity check
and the test stage are off because the plain loop has neither. The two alternate in every round.

    python -m benchmarks.end_to_end                               # ViT-B/16 on pizza_steak_sushi, 1 round
    python -m benchmarks.end_to_end --repeats 2 trainer.precision=bf16-mixed
    python -m benchmarks.end_to_end --quick                       # model=vit_micro: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from benchmarks.timing import describe_machine, markdown_table
from vitlit.models.vit import ViT
from vitlit.training import train
from vitlit.training.trainer import resolve_precision

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# ~recipe: the from-scratch training step of every layer (ViT-B/16's default recipe trains its head only).
EPOCH_ONLY = ["~recipe", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "test=false"]


def compose_run(overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*EPOCH_ONLY, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def limited(loader: Iterable, limit: int | float | None) -> tuple[Iterable, int]:
    """``loader`` cut to Lightning's ``limit_*_batches`` (a count, or a fraction of the batches) and its length."""
    count = len(loader) if limit is None else int(limit) if isinstance(limit, int) else int(len(loader) * limit)
    return itertools.islice(loader, count), count


def plain_pytorch_epoch(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """The same epoch, written as a plain loop: train, validate, save model and optimiser."""
    L.seed_everything(cfg.seed, workers=True)
    cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    data = instantiate(cfg.data, _convert_="all")
    data.prepare_data()
    data.setup("fit")
    model = ViT(num_classes=len(data.class_names), **cfg.model.net).to(device)
    if cfg.model.compile:
        model.compile(dynamic=False)
    skip = model.no_weight_decay()
    decay = [p for name, p in model.named_parameters() if p.ndim > 1 and name not in skip]
    no_decay = [p for name, p in model.named_parameters() if p.ndim <= 1 or name in skip]
    optimizer = instantiate(cfg.model.optimizer)(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **({"fused": True} if cuda else {})
    )
    train_loader, train_steps = limited(data.train_dataloader(), cfg.trainer.limit_train_batches)
    val_loader, _ = limited(data.val_dataloader(), cfg.trainer.limit_val_batches)
    scheduler = instantiate(cfg.model.scheduler)(optimizer, total_steps=train_steps)
    precision = str(resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else None
    mean = torch.tensor(cfg.data.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std, device=device).view(1, 3, 1, 1)

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        images = (images.to(device, non_blocking=True).float() / 255 - mean) / std
        with autocast or contextlib.nullcontext():
            return model(images)

    model.train()
    for images, labels in train_loader:
        loss = F.cross_entropy(logits_of(images), labels.to(device), label_smoothing=cfg.model.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in val_loader:
            correct += (logits_of(images).argmax(dim=1).cpu() == labels).sum().item()
            total += len(labels)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, output_dir / "plain.ckpt")
    return {"val/acc": correct / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="rounds; each runs both sides once")
    parser.add_argument("--quick", action="store_true", help="model=vit_micro, one round: a smoke test")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both sides, e.g. data.batch_size=16")
    args = parser.parse_args()
    overrides = ["model=vit_micro", *args.overrides] if args.quick else args.overrides
    repeats = 1 if args.quick else args.repeats

    seconds: dict[str, list[float]] = {"train.py (Lightning + Hydra)": [], "plain PyTorch loop": []}
    with tempfile.TemporaryDirectory(prefix="vitlit-e2e-") as work:
        for round_index in range(repeats):
            for name in seconds:
                output_dir = Path(work) / f"{round_index}-{len(seconds[name])}-{name.split()[0]}"
                output_dir.mkdir()
                cfg = compose_run(overrides, output_dir)
                start = time.perf_counter()
                metrics = train(cfg) if name.startswith("train.py") else plain_pytorch_epoch(cfg, output_dir)
                seconds[name].append(time.perf_counter() - start)
                print(f"  {name}: {seconds[name][-1]:.1f} s, val/acc {metrics['val/acc']:.4f}", flush=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    plain = median["plain PyTorch loop"]
    rows = [
        [name, " / ".join(f"{value:.1f}" for value in seconds[name]), f"{value:.1f}", f"{value / plain:.3f}x"]
        for name, value in median.items()
    ]
    print(f"\nOne epoch (train + validation + checkpoint), {repeats} interleaved round(s), overrides {overrides}")
    print(f"{describe_machine(device)}\n")
    print(markdown_table(["side", "wall s per round", "median s", "vs plain loop"], rows))


if __name__ == "__main__":
    main()
