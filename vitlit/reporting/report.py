"""The files every run leaves in its folder: curves.png, confusion_matrix.png, predictions.png, metrics.json,
and a short results table in the log.

``RunReport`` (a callback) records the per-epoch history and each stage's results while the trainer
runs; ``RunReport.write`` turns them into the files once the run is over (``train`` and ``evaluate``
call it). The history travels in checkpoints, so resumed runs and ``vitlit.eval`` can draw the curves.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from vitlit.reporting.figures import confusion_matrix_figure, curves_figure, prediction_grid_figure, save_figure
from vitlit.reporting.loggers import log_files
from vitlit.reporting.metrics_file import METRICS_FILE, write_metrics_file
from vitlit.reporting.stage_results import StageResultsCallback, StageSummary, display_sample

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
REPORT_FILES = ("curves.png", "confusion_matrix.png", "predictions.png", METRICS_FILE)


def device_description(trainer: L.Trainer) -> str:
    """e.g. ``cpu``, ``cuda:0 (NVIDIA H100 80GB HBM3) x 4``."""
    device = trainer.strategy.root_device
    text = str(device)
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    if trainer.num_devices > 1:
        text += f" x {trainer.num_devices}"
    return text


def results_table(metrics: Mapping[str, float], summary: StageSummary | None = None, stage: str = "") -> str:
    """Loss and accuracy per stage, then per-class precision/recall/F1 of ``summary``, as plain-text tables."""
    table = Table(title="Results", title_justify="left")
    table.add_column("stage")
    table.add_column("loss", justify="right")
    table.add_column("acc", justify="right")
    for name in STAGES:
        if f"{name}/loss" in metrics or f"{name}/acc" in metrics:
            loss, acc = metrics.get(f"{name}/loss"), metrics.get(f"{name}/acc")
            table.add_row(name, "" if loss is None else f"{loss:.4f}", "" if acc is None else f"{acc:.4f}")
    if "val/acc_best" in metrics:
        table.add_row("val (best)", "", f"{metrics['val/acc_best']:.4f}")
    tables = [table]
    if summary is not None and len(summary.class_names) <= 20:
        per_class = Table(title=f"Per class ({stage})", title_justify="left")
        for column in ("class", "precision", "recall", "f1", "images"):
            per_class.add_column(column, justify="left" if column == "class" else "right")
        for name, scores in summary.per_class.items():
            per_class.add_row(
                name, *(f"{scores[key]:.4f}" for key in ("precision", "recall", "f1")), str(scores["support"])
            )
        tables.append(per_class)
    console = Console(file=io.StringIO(), width=100, color_system=None)
    for item in tables:
        console.print(item)
    if summary is not None:
        total = int(summary.counts.sum())
        console.print(f"{stage}: {total - int(summary.counts.trace())} of {total} images misclassified")
    return console.file.getvalue().rstrip()


def write_report(
    folder: str | Path,
    *,
    metrics: Mapping[str, float],
    history: Sequence[Mapping[str, float]],
    stage: str | None,
    summary: StageSummary | None,
    datamodule: object | None,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the report files into ``folder`` and return the content of ``metrics.json``.

    ``summary`` (of ``stage``) draws the confusion matrix and the prediction grid; ``history`` the
    curves; a missing one skips its picture. ``info`` adds entries to metrics.json (epochs, device, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = {name: float(value) for name, value in sorted(metrics.items())}
    report: dict[str, Any] = {"final": final}
    with_val = [row for row in history if "val/acc" in row]
    if with_val:
        best = max(with_val, key=lambda row: row["val/acc"])  # the first epoch wins ties, like ModelCheckpoint
        report["best"] = {"epoch": best["epoch"], "val/acc": best["val/acc"]}
    report.update(info)
    if history:
        save_figure(curves_figure(history, final), folder / "curves.png")
    if summary is not None and len(summary.class_names):
        report["stage"] = stage
        report["per_class"] = summary.per_class
        report["confusion_matrix"] = {"classes": list(summary.class_names), "counts": summary.counts.tolist()}
        title = f"Confusion matrix ({stage}): accuracy {summary.accuracy:.4f}"
        matrix = confusion_matrix_figure(summary.counts, summary.class_names, title)
        save_figure(matrix, folder / "confusion_matrix.png")
        if len(summary.labels):
            images = display_sample(summary.images, datamodule)
            grid = prediction_grid_figure(images, summary.labels, summary.probabilities, summary.class_names)
            save_figure(grid, folder / "predictions.png")
    report["history"] = list(history)
    write_metrics_file(folder, report)
    log.info("%s", results_table(final, summary, stage or ""))
    log.info("report: %s", ", ".join(str(folder / name) for name in REPORT_FILES if (folder / name).exists()))
    return report


class RunReport(StageResultsCallback):
    """Records each epoch's ``{train,val}/{loss,acc}`` and each stage's results; ``write`` makes the report.

    The pictures show the test run when there was one, else the last validation epoch.
    """

    def __init__(self, num_images: int = 16):
        super().__init__(num_images)
        self.history: dict[int, dict[str, float]] = {}
        self.started = time.perf_counter()

    @property
    def state_key(self) -> str:
        return "RunReport"

    def _record(self, trainer: L.Trainer, stage: str) -> None:
        row = self.history.setdefault(trainer.current_epoch + 1, {"epoch": trainer.current_epoch + 1})
        for name, value in trainer.callback_metrics.items():
            if name.startswith(f"{stage}/"):
                row[name] = float(value)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # This and on_train_epoch_end run before ModelCheckpoint saves (Lightning calls checkpoint callbacks
        # last), so a checkpoint's history includes its own epoch.
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer, "val")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "train")

    def state_dict(self) -> dict[str, Any]:
        return {"history": [self.history[epoch] for epoch in sorted(self.history)]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning also restores callbacks when testing a checkpoint: keep the epochs this run recorded.
        for row in state_dict.get("history", []):
            self.history.setdefault(int(row["epoch"]), dict(row))

    def write(self, folder: str | Path, trainer: L.Trainer, metrics: Mapping[str, float], **info: Any) -> dict:
        """Write the report files into ``folder`` (on the main process only), attach them to the loggers that keep
        files (MLflow, W&B), and return metrics.json's content."""
        stage = "test" if "test" in self.summaries else "val" if "val" in self.summaries else None
        entries = {
            "epochs": len([row for row in self.history.values() if "train/loss" in row]),
            "wall_time_s": round(time.perf_counter() - self.started, 2),
            "device": device_description(trainer),
            "precision": str(trainer.precision),
            **info,
        }
        if not trainer.is_global_zero:
            return {}
        report = write_report(
            folder,
            metrics=metrics,
            history=self.state_dict()["history"],
            stage=stage,
            summary=self.summaries.get(stage),
            datamodule=trainer.datamodule,
            info=entries,
        )
        log_files(trainer.loggers, [Path(folder) / name for name in REPORT_FILES if (Path(folder) / name).exists()])
        return report
