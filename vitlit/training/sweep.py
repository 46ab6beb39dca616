"""Hydra multirun summary: ``sweep_summary.csv`` in the sweep folder and a table printed at the end.

Registered in ``conf/hydra/default.yaml`` as a Hydra callback, so every ``python train.py -m ...`` (grid or
Optuna, with any launcher) gets one row per job: its overrides, status and final metrics, best job first. Each job
writes ``job_status.json`` into its own folder, wherever it runs (a launcher such as hydra-submitit-launcher runs
every job in its own process, on its own node); the summary is built from the job folders, after each job (so a
crash keeps what finished) and once more when the sweep ends. Also here: what a failed
job returns to a sweeper (``FailedJob``) and the folder an Optuna SQLite study needs (``StorageFolder``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.table import Table

from vitlit.private_api import job_return_value
from vitlit.reporting.metrics_file import read_final_metrics
from vitlit.training.run_folder import process_rank

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.csv"
JOB_STATUS_FILE = "job_status.json"  # in each job's folder: job number, overrides, status, error
DEFAULT_METRICS = ("val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss")


class FailedJob:
    """What ``train.py`` returns for a multirun job that raised: the error, for the summary and the sweeper's log.

    Not a number on purpose: hydra-optuna-sweeper records a trial whose return value ``float()`` rejects as
    ``FAIL`` and goes on, while a NaN makes it call ``study.tell(FAIL, values=[nan])``, which Optuna refuses,
    and the whole sweep stops with the trial left ``RUNNING``.
    """

    def __init__(self, error: BaseException):
        self.error = describe(error)

    def __float__(self) -> float:
        raise TypeError(f"this job failed: {self.error}")

    def __str__(self) -> str:
        return self.error

    def __repr__(self) -> str:
        return f"FailedJob({self.error!r})"


def describe(error: BaseException) -> str:
    """``Type: message`` of the root cause (Hydra wraps errors raised while instantiating a config)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}"


def is_multirun() -> bool:
    """Whether the running Hydra job is one job of a multirun."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_row(job_return: JobReturn, output_dir: Path, metric_names: tuple[str, ...]) -> dict[str, Any]:
    """One summary row: the job number, its overrides (``key=value`` strings), status, error and metrics."""
    value = job_return_value(job_return)
    error = describe(value) if job_return.status == JobStatus.FAILED else getattr(value, "error", "")
    status = {
        "job": job_return.hydra_cfg.hydra.job.num,
        "overrides": list(job_return.overrides or []),
        "status": "failed" if error else "completed",
        "error": error,
    }
    return with_metrics(status, output_dir, metric_names)


def with_metrics(status: dict[str, Any], output_dir: Path, metric_names: tuple[str, ...]) -> dict[str, Any]:
    """A job's status row with its folder and final metrics (none for a job that did not complete)."""
    metrics = (read_final_metrics(output_dir) or {}) if status["status"] == "completed" else {}
    return {**status, "folder": str(output_dir), **{name: metrics.get(name) for name in metric_names}}


def unfinished_status(folder: Path) -> dict[str, Any]:
    """The status of a job folder without ``job_status.json``: running, or stopped from outside (time limit,
    out of memory, a killed node) before it could say how it ended."""
    hydra_files = folder / ".hydra"
    overrides = OmegaConf.load(hydra_files / "overrides.yaml")
    hydra_file = hydra_files / "hydra.yaml"
    number = OmegaConf.load(hydra_file).hydra.job.get("num") if hydra_file.is_file() else None
    return {
        "job": number if number is not None else -1,
        "overrides": [str(override) for override in overrides],
        "status": "unfinished",
        "error": f"no {JOB_STATUS_FILE}: running, or stopped before it ended (see {folder / 'train.log'})",
    }


def collect_rows(sweep_dir: Path, metric_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per job folder under ``sweep_dir`` (a folder holding ``.hydra/overrides.yaml``)."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        if ".submitit" in folder.relative_to(sweep_dir).parts:
            continue
        status_file = folder / JOB_STATUS_FILE
        status = json.loads(status_file.read_text()) if status_file.is_file() else unfinished_status(folder)
        rows.append(with_metrics(status, folder, metric_names))
    return rows


def sort_rows(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Best ``metric`` first (``mode`` max or min); failed jobs and jobs without the metric last, by job number."""

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row.get(metric)
        if value is None or math.isnan(value):
            return (1, 0.0, row["job"])
        return (0, -value if mode == "max" else value, row["job"])

    return sorted(rows, key=key)


def write_summary(rows: list[dict[str, Any]], path: Path, metric_names: tuple[str, ...]) -> None:
    """CSV with columns job, status, one column per overridden key, the metrics, error and folder."""
    keys = list(dict.fromkeys(key for row in rows for key in overrides_by_key(row)))
    columns = ["job", "status", *keys, *metric_names, "error", "folder"]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Jobs of a launcher end at the same time and each rewrites the summary: write whole files only.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**{c: row.get(c) for c in columns if c not in keys}, **overrides_by_key(row)})
    os.replace(partial, path)


def short(value: str) -> str:
    """An override value for the table: numbers to 4 significant digits (Optuna samples 16)."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def overrides_by_key(row: dict[str, Any]) -> dict[str, str]:
    return dict(override.split("=", 1) for override in row["overrides"])


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose value is not the same in every job."""
    by_job = [overrides_by_key(row) for row in rows]
    keys = dict.fromkeys(key for overrides in by_job for key in overrides)
    return [key for key in keys if len({overrides.get(key) for overrides in by_job}) > 1]


def summary_table(rows: list[dict[str, Any]], metric_names: tuple[str, ...], title: str) -> Table:
    """A rich table: job, one column per swept key, status (with the error's last line) and metrics."""
    keys = swept_keys(rows)
    table = Table(title=title)
    table.add_column("job", justify="right", no_wrap=True)
    for column in (*keys, "status"):
        table.add_column(column)
    for name in metric_names:
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        overrides = overrides_by_key(row)
        status = f"failed: {row['error'][:100]}" if row["error"] else row["status"]
        metrics = ["" if row[name] is None else f"{row[name]:.4f}" for name in metric_names]
        table.add_row(str(row["job"]), *(short(overrides.get(key, "")) for key in keys), status, *metrics)
    return table


class SweepSummary(Callback):
    """Each multirun job writes ``job_status.json`` (overrides, status, error) into its folder when it ends, in its
    own process; ``<sweep dir>/sweep_summary.csv`` is rebuilt from the job folders after each job and when the
    sweep ends, which also prints the sorted table.

    Args:
        metric: the column to sort by (the sweep's ``optimized_metric``).
        mode: ``max`` (accuracy) or ``min`` (loss).
        metrics: the metric columns.
    """

    def __init__(self, metric: str = "val/acc_best", mode: str = "max", metrics: list[str] | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"SweepSummary mode must be 'max' or 'min', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.metric_names = tuple(dict.fromkeys([metric, *(metrics or DEFAULT_METRICS)]))

    def summarise(self, sweep_dir: Path) -> list[dict[str, Any]]:
        """Rebuild ``sweep_summary.csv`` from the job folders under ``sweep_dir``; the rows, best first."""
        rows = sort_rows(collect_rows(sweep_dir, self.metric_names), self.metric, self.mode)
        if rows:
            write_summary(rows, sweep_dir / SUMMARY_FILE, self.metric_names)
        return rows

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or process_rank() != 0:
            return
        output_dir = Path(config.hydra.runtime.output_dir)
        row = job_row(job_return, output_dir, ())
        status = {key: row[key] for key in ("job", "overrides", "status", "error")}
        (output_dir / JOB_STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
        self.summarise(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = self.summarise(Path(config.hydra.sweep.dir))
        if not rows:
            return
        failed = sum(row["status"] != "completed" for row in rows)
        title = f"{len(rows)} jobs, {failed} failed, best {self.metric} first"
        get_console().print(summary_table(rows, self.metric_names, title))
        log.info("sweep summary: %s", Path(config.hydra.sweep.dir) / SUMMARY_FILE)


class StorageFolder(Callback):
    """Creates the folder of the sweeper's ``sqlite:///path/to/study.db`` before the sweep opens the study: SQLite
    creates the file but not its folder, so the first Optuna sweep in a new log folder would stop at once.

    Registered by ``conf/hparams_search/optuna.yaml``; Hydra runs ``on_multirun_start`` before it builds the sweeper.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
