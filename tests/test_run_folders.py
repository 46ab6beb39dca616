"""Runs started in the same second (two terminals, a job array) each get their own run folder; none is refused and
none writes into another's. A folder chosen with hydra.run.dir is still never reused without ckpt_path."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RUN, make_image_folder
from hydra import compose, initialize_config_dir

from vitlit.training.run_folder import RunFolder, claim_new_folder


def test_processes_racing_for_one_folder_name_each_get_their_own(tmp_path: Path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        claimed = pool.map(claim_new_folder, [tmp_path / "runs" / "2026-12-03_10-00-00"] * 8)
    assert sorted(Path(path).name for path in claimed) == sorted(
        ["2026-12-03_10-00-00", *(f"2026-12-03_10-00-00_{n}" for n in range(2, 9))]
    )
    assert all(Path(path).is_dir() for path in claimed)


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_a_taken_default_sweep_folder_gives_the_sweep_the_next_free_name(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VITLIT_LOG_DIR", str(tmp_path))
    cfg = hydra_config()
    taken = Path(cfg.hydra.sweep.dir)
    taken.mkdir(parents=True)
    (taken / "sweep_summary.csv").write_text("another sweep\n")
    RunFolder().on_multirun_start(cfg)
    assert cfg.hydra.sweep.dir == f"{taken}_2" and Path(cfg.hydra.sweep.dir).is_dir()
    assert f"hydra.sweep.dir={taken}_2" in cfg.hydra.overrides.hydra  # what every job's config is composed from
    assert (taken / "sweep_summary.csv").read_text() == "another sweep\n"


def test_two_runs_started_in_the_same_second_each_train_in_a_folder_of_their_own(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    runs = tmp_path / "logs" / "train" / "runs"
    # Every second of the next two minutes already has a run (a job array's earlier tasks): whenever the two
    # runs below start, in the same second or not, their default folder is taken.
    start = datetime.now()
    others = [runs / f"{start + timedelta(seconds=s):%Y-%m-%d_%H-%M-%S}" for s in range(-1, 120)]
    for other in others:
        other.mkdir(parents=True)
        (other / "train.log").write_text("another run\n")
    command = [sys.executable, str(REPO_ROOT / "train.py"), *TINY_RUN, f"data.root={root}", "trainer.max_epochs=1"]
    environment = {**os.environ, "VITLIT_LOG_DIR": str(tmp_path / "logs")}
    processes = [
        subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    new = sorted(set(runs.iterdir()) - set(others))
    assert len(new) == 2 and all(run.name.rsplit("_", 1)[1] in {"2", "3"} for run in new), new
    for run in new:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "train.log").read_text().count("Epoch: 1 | train_loss: ") == 1  # one run's log, not two
    assert all((other / "train.log").read_text() == "another run\n" for other in others)
    assert all(sorted(p.name for p in other.iterdir()) == ["train.log"] for other in others)


def test_a_chosen_run_folder_that_holds_a_run_is_still_refused(tmp_path: Path):
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit, match=f"{tmp_path / 'old'} already holds a run"):
        RunFolder().on_run_start(hydra_config(f"hydra.run.dir={tmp_path / 'old'}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no "old_2" either
