"""``train.py`` run as a user runs it: a subprocess with Hydra overrides on the command line."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, TINY_RUN
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def run_train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def scalar_tags(run: Path) -> set[str]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_train_script_writes_config_checkpoints_and_tensorboard_events(image_folder: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = run_train(
        *TINY_RUN, "callbacks.progress_bar=null", f"data.root={image_folder}", f"hydra.run.dir={run}", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert "Epoch: 1 | train_loss: " in output and "Epoch: 2 | train_loss: " in output
    assert "In sizes" in output and "Out sizes" in output and "model.transformer_encoder" in output  # model summary
    assert f"val   uses {image_folder / 'test'}" in output  # which split validation used
    assert "precision: 32-true" in output
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config["model"]["net"]["depth"] == 2
    resolved = OmegaConf.load(run / "config.yaml")  # the values the run used, interpolations resolved
    assert resolved.data.root == str(image_folder) and resolved.paths.output_dir == str(run)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "Epoch: 2 | train_loss: " in (run / "train.log").read_text()
    assert {"train/loss", "val/acc", "val/acc_best", "test/acc"} <= scalar_tags(run)
    assert not (tmp_path / "outputs").exists()  # nothing written outside the run folder


def test_multirun_gives_each_job_its_own_folder_and_tensorboard_run(image_folder: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    run_train(
        "-m",
        *TINY_RUN,
        "debug=fast",
        f"data.root={image_folder}",
        "model.optimizer.lr=1e-4,3e-4",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [job.name for job in jobs] == ["0", "1"]
    learning_rates = []
    for job in jobs:
        learning_rates.append(OmegaConf.load(job / ".hydra" / "config.yaml").model.optimizer.lr)
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert "val/acc_best" in scalar_tags(job)
    assert learning_rates == [1e-4, 3e-4]
