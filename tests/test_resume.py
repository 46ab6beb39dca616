"""Resume and reproducibility: seeds, ckpt_path=last after a crash mid-epoch, and the run-folder guard."""

import itertools
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, compose_config, make_image_folder
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlit.training import train
from vitlit.training.module import ViTClassifier
from vitlit.training.run_folder import RunFolder

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming

# 12 training images in batches of 4: 3 steps per epoch; the crash comes after step 4, mid epoch 2.
RUN = [*TINY_RUN, "test=false", "callbacks.model_summary=null"]
CRASH_AFTER_STEP = 4


class CrashAfterStep(L.Callback):
    """Stands in for a crash (a killed process): raises after optimiser step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crashed mid-epoch")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(image root, {name: (run folder, final metrics)}) for two uninterrupted runs and one crashed + resumed."""
    tmp = tmp_path_factory.mktemp("resume")
    root = make_image_folder(tmp / "images", {"train": {"cat": 6, "dog": 6}, "test": {"cat": 3, "dog": 3}})
    results = {}
    for name in ("first", "second"):
        results[name] = (tmp / name, train(compose_config([*RUN, f"data.root={root}"], output_dir=tmp / name)))

    crashed = compose_config([*RUN, f"data.root={root}"], output_dir=tmp / "resumed")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": f"{__name__}.CrashAfterStep", "step": CRASH_AFTER_STEP}
    with pytest.raises(RuntimeError, match="crashed mid-epoch"):
        train(crashed)
    resumed = compose_config([*RUN, f"data.root={root}", "ckpt_path=last"], output_dir=tmp / "resumed")
    results["resumed"] = (tmp / "resumed", train(resumed))
    return root, results


def test_the_same_seed_gives_identical_metrics(runs):
    _, results = runs
    assert results["first"][1] == results["second"][1]


def test_a_run_crashed_mid_epoch_and_resumed_ends_with_the_uninterrupted_metrics(runs):
    _, results = runs
    uninterrupted, resumed = results["first"][1], results["resumed"][1]
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert resumed[name] == pytest.approx(value, abs=1e-6), name


def val_acc_curve(run: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("val/acc")]


def test_the_resumed_run_continues_its_tensorboard_run(runs):
    _, results = runs
    resumed = results["resumed"][0]
    # Epoch 1 logged before the crash, epoch 2 after the resume, then the final value beside HPARAMS.
    assert val_acc_curve(resumed) == val_acc_curve(results["first"][0])
    assert [step for step, _ in val_acc_curve(resumed)] == [2, 5, 6]
    assert [p.name for p in (resumed / "tensorboard").iterdir() if p.is_dir()] == []


def test_last_checkpoint_is_the_last_epoch_and_rebuilds_the_model_alone(runs):
    _, results = runs
    checkpoint = torch.load(results["first"][0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 6  # written after every epoch
    assert checkpoint["hyper_parameters"]["class_names"] == ["cat", "dog"]
    assert checkpoint["hyper_parameters"]["net"]["embed_dim"] == 64
    module = ViTClassifier.load_from_checkpoint(results["first"][0] / "checkpoints" / "last.ckpt")
    assert module.hparams.class_names == ["cat", "dog"] and module.model.classifier.head.out_features == 2


def guard(run: Path, *overrides: str) -> None:
    """What RunFolder does when Hydra starts a run in ``run``."""
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.run.dir={run}", *overrides], return_hydra_config=True)
    RunFolder().on_run_start(cfg)


def test_a_new_run_never_writes_into_an_existing_run_folder(tmp_path: Path):
    guard(tmp_path / "new")  # a new folder is fine, and so is an existing empty one
    (tmp_path / "empty").mkdir()
    guard(tmp_path / "empty")
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit, match=f"{tmp_path / 'old'} already holds a run.*ckpt_path=last"):
        guard(tmp_path / "old")


def test_resuming_needs_a_checkpoint_in_the_run_folder(tmp_path: Path):
    with pytest.raises(SystemExit, match=f"ckpt_path=last found no checkpoint in {tmp_path}"):
        guard(tmp_path, "ckpt_path=last")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    guard(tmp_path, "ckpt_path=last")


def test_existing_run_folder_stops_train_py_before_it_writes(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("an earlier run\n")
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "data=image_folder",
        f"data.root={tmp_path}",
        f"hydra.run.dir={run}",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and f"{run} already holds a run" in result.stderr
    assert [p.name for p in run.iterdir()] == ["train.log"] and (run / "train.log").read_text() == "an earlier run\n"


def test_resuming_with_more_epochs_goes_on_down_the_schedule_to_min_lr_at_the_new_end(tmp_path: Path, caplog):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 6, "dog": 6}, "test": {"cat": 3, "dog": 3}})
    schedule = ["model.scheduler.warmup=2", "model.scheduler.min_lr=1e-5"]
    train(compose_config([*RUN, f"data.root={root}", *schedule], output_dir=tmp_path / "run"))
    longer = [*RUN, f"data.root={root}", *schedule, "trainer.max_epochs=4", "ckpt_path=last"]
    with caplog.at_level("INFO", logger="vitlit"):
        train(compose_config(longer, output_dir=tmp_path / "run"))
    assert "schedule now spans 12 steps, was 6 (resumed at step 6)" in caplog.text
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rates = [event.value for event in sorted(events.Scalars("lr/decay"), key=lambda event: event.step)]
    assert len(rates) == 12 and rates[1] < rates[2]  # warmup, then the peak at step 2
    assert all(a >= b for a, b in itertools.pairwise(rates[2:]))  # never back up, across the resume
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 12
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)  # min_lr at the end
