"""DDP through train.py: two CPU processes (gloo) share one run folder and log what one process computes."""

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, TINY_RUN, compose_config, make_image_folder
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.training.module import ViTClassifier


def evaluate(checkpoint: Path, root: Path, stage: str) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a checkpoint over a whole split, in this one process."""
    module = ViTClassifier.load_from_checkpoint(checkpoint).eval()
    data = ImageFolderDataModule(root, batch_size=4, num_workers=0)
    data.setup()
    logits, labels = zip(*((module(x), y) for x, y in getattr(data, f"{stage}_dataloader")()), strict=True)
    logits, labels = torch.cat(logits), torch.cat(labels)
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "fsdp"])
def test_trainer_configs_build_lightning_strategies(trainer: str):
    cfg = compose_config(["data=image_folder", "data.root=unused", f"trainer={trainer}"])
    strategy = cfg.trainer.strategy
    expected = {"cpu": "auto", "gpu": "auto", "ddp": "DDPStrategy", "fsdp": "FSDPStrategy"}[trainer]
    assert (strategy if isinstance(strategy, str) else type(instantiate(strategy)).__name__) == expected


@torch.no_grad()
def test_ddp_on_two_cpu_processes_logs_what_one_process_computes(tmp_path: Path):
    # 8 validation images split evenly over the 2 ranks, so no rank pads its shard with repeats; 7 test images,
    # which DistributedSampler evens out by repeating one.
    layout = {"train": {"cat": 8, "dog": 8}, "val": {"cat": 4, "dog": 4}, "test": {"cat": 4, "dog": 3}}
    root = make_image_folder(tmp_path / "images", layout)
    run = tmp_path / "run"
    overrides = [*TINY_RUN, "trainer.max_epochs=1", "callbacks.model_summary=null", f"data.root={root}"]
    distributed = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={run}"]
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides, *distributed]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr

    metrics = json.loads((run / "metrics.json").read_text())["final"]
    accuracy, loss = evaluate(run / "checkpoints" / "last.ckpt", root, "val")
    assert metrics["val/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(loss, abs=1e-5)
    best = next((run / "checkpoints").glob("epoch_*.ckpt"))
    with (run / "test_predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in (root / "test").rglob("*.jpg"))
    right = sum(row["true_class"] == row["predicted_class"] for row in rows) / len(rows)
    assert right == pytest.approx(evaluate(best, root, "test")[0], abs=1e-6)  # every image once, none twice

    # One run folder, written by rank 0 only: no per-rank log, no stray outputs/ from the relaunched rank.
    assert sorted(p.name for p in run.iterdir()) == [
        ".hydra",
        "checkpoints",
        "config.yaml",
        "metrics.json",
        "tensorboard",
        "test_predictions.csv",
        "train.log",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "run"]
    assert [p.name for p in (run / "tensorboard").iterdir() if p.is_dir()] == []  # one TensorBoard run


def test_a_ddp_run_resumed_on_one_process_goes_on_down_its_schedule_to_min_lr(tmp_path: Path):
    # 16 training images in batches of 4: 2 steps per epoch on each of 2 ranks (a 10% warm-up of 4 steps rounds to
    # 0 steps: a plain cosine), then 4 steps per epoch on one process (the new 12-step schedule warms up for 1).
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 4, "dog": 4}})
    run = tmp_path / "run"
    overrides = [*TINY_RUN, "test=false", "callbacks.model_summary=null", f"data.root={root}", f"hydra.run.dir={run}"]
    overrides += ["model.scheduler.warmup=0.1", "model.scheduler.min_lr=1e-5", "trainer.accelerator=cpu"]
    train_py = [sys.executable, str(REPO_ROOT / "train.py"), *overrides]
    first = subprocess.run(
        [*train_py, "trainer.devices=2", "trainer.strategy=ddp"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    resumed = subprocess.run(
        [*train_py, "trainer.devices=1", "trainer.max_epochs=3", "ckpt_path=last"], cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert "schedule now spans 8 steps, was 4 (resumed at step 4)" in output
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rates = [event.value for event in sorted(events.Scalars("lr/decay"), key=lambda event: event.step)]
    assert len(rates) == 8 and all(a >= b for a, b in itertools.pairwise(rates))  # never back up
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 8
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)  # min_lr at the end
