"""Multirun summaries (vitlit.training.sweep) and a real Optuna study (conf/hparams_search/optuna.yaml)."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RUN

from vitlit.training.sweep import FailedJob, sort_rows, swept_keys, write_summary


def row(job: int, acc: float | None, *overrides: str) -> dict:
    return {"job": job, "overrides": list(overrides), "status": "completed", "error": "", "folder": "", "val/acc": acc}


def test_rows_sort_best_first_and_jobs_without_the_metric_last():
    rows = [row(0, 0.5), row(1, None), row(2, 0.9), row(3, math.nan), row(4, 0.7)]
    assert [r["job"] for r in sort_rows(rows, "val/acc", "max")] == [2, 4, 0, 1, 3]
    assert [r["job"] for r in sort_rows(rows, "val/acc", "min")] == [0, 4, 2, 1, 3]


def test_failed_job_is_no_number_to_a_sweeper_and_keeps_the_root_cause():
    try:
        try:
            raise ValueError("embed_dim=64 is not divisible by num_heads=3")
        except ValueError as cause:
            raise RuntimeError("Error in call to target") from cause
    except RuntimeError as error:
        failed = FailedJob(error)
    assert failed.error == str(failed) == "ValueError: embed_dim=64 is not divisible by num_heads=3"
    with pytest.raises(TypeError, match="this job failed: ValueError: embed_dim=64"):
        float(failed)  # what makes the Optuna sweeper store the trial as FAIL (a NaN would stop the sweep)


def test_summary_has_one_column_per_overridden_key(tmp_path: Path):
    rows = [row(0, 0.5, "lr=0.1", "depth=2"), row(1, 0.75, "lr=0.2", "depth=2")]
    write_summary(rows, tmp_path / "summary.csv", ("val/acc",))
    with (tmp_path / "summary.csv").open() as file:
        written = list(csv.DictReader(file))
    assert [(r["job"], r["lr"], r["depth"], r["val/acc"]) for r in written] == [
        ("0", "0.1", "2", "0.5"),
        ("1", "0.2", "2", "0.75"),
    ]
    assert swept_keys(rows) == ["lr"]


def test_grid_with_a_failing_job_writes_a_summary_of_every_job(image_folder: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        *TINY_RUN,
        "debug=fast",
        "callbacks.model_summary=null",
        f"data.root={image_folder}",
        "model.net.num_heads=4,3",  # 3 heads do not divide the micro ViT's width 64: job 1 fails
        f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_the_summary_lists_both_jobs(sweep, result.stdout)


def assert_the_summary_lists_both_jobs(sweep: Path, stdout: str) -> None:
    """The sweep of ``model.net.num_heads=4,3``: job 0 completed, job 1 failed, in the CSV and the printed table."""
    with (sweep / "sweep_summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["job"], r["model.net.num_heads"], r["status"]) for r in rows] == [
        ("0", "4", "completed"),
        ("1", "3", "failed"),
    ]
    assert 0.0 <= float(rows[0]["val/acc_best"]) <= 1.0 and rows[0]["folder"] == str(sweep / "0")
    assert "not divisible by num_heads=3" in rows[1]["error"] and rows[1]["val/acc_best"] == ""
    assert "2 jobs, 1 failed, best val/acc_best first" in stdout


def optuna_sweep(image_folder: Path, tmp_path: Path, sweep: Path, *overrides: str) -> list[dict[str, str]]:
    """``train.py -m hparams_search=optuna`` with two 1-batch trials (the lr is searched, the batch size fixed),
    the study in ``tmp_path/logs/optuna.db``; returns the sweep's summary rows."""
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "hparams_search=optuna",
        *(arg for arg in TINY_RUN if not arg.startswith(("model.optimizer.lr=", "trainer.max_epochs="))),
        "debug=fast",  # one epoch of one batch per stage
        "callbacks.model_summary=null",
        f"data.root={image_folder}",
        f"paths.log_dir={tmp_path / 'logs'}",  # a new folder: the sweep must create it for SQLite
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        *overrides,
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (sweep / "sweep_summary.csv").open() as file:
        return sorted(csv.DictReader(file), key=lambda row: int(row["job"]))


def test_optuna_study_in_sqlite_continues_and_stores_failed_trials(image_folder: Path, tmp_path: Path):
    optuna = pytest.importorskip("optuna", reason='needs pip install -e ".[optuna]"')
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='needs pip install -e ".[optuna]"')
    storage = f"sqlite:///{tmp_path / 'logs' / 'optuna.db'}"
    searched = {"model.optimizer.lr", "model.optimizer.weight_decay", "model.label_smoothing"}
    state = optuna.trial.TrialState

    first = optuna_sweep(image_folder, tmp_path, tmp_path / "first")
    study = optuna.load_study(study_name="vit_train", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.trials  # a snapshot: Study.trials reads the storage again on every access
    assert [(trial.number, trial.state) for trial in trials] == [(0, state.COMPLETE), (1, state.COMPLETE)]
    for trial, row in zip(trials, first, strict=True):
        assert set(trial.params) == searched  # data.batch_size=4 on the command line fixes it
        assert all(float(row[key]) == value for key, value in trial.params.items())  # this trial ran as this job
        assert row["status"] == "completed" and trial.value == float(row["val/acc_best"])
        assert 0.0 <= trial.value <= 1.0

    # The same study again, now with a config that cannot be built: 3 heads do not divide the micro ViT's width 64.
    second = optuna_sweep(image_folder, tmp_path, tmp_path / "second", "model.net.num_heads=3")
    continued = optuna.load_study(study_name="vit_train", storage=storage)
    assert [(trial.number, trial.state) for trial in continued.trials] == [
        (0, state.COMPLETE),
        (1, state.COMPLETE),
        (2, state.FAIL),
        (3, state.FAIL),
    ]
    assert [(trial.params, trial.value) for trial in continued.trials[:2]] == [
        (trial.params, trial.value) for trial in trials
    ]
    assert all(trial.value is None and set(trial.params) == searched for trial in continued.trials[2:])
    assert [row["status"] for row in second] == ["failed", "failed"]
    assert all("not divisible by num_heads=3" in row["error"] for row in second)
    assert continued.best_value == max(trial.value for trial in trials)
