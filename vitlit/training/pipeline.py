"""``train(cfg) -> metrics``: config -> data module + module(model) -> trainer -> fit, test, report.

No command-line code here: ``train.py`` calls this, and so can tests and notebooks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vitlit.reporting.metrics_file import write_metrics_file
from vitlit.reporting.report import RunReport
from vitlit.training.checkpoints import check_checkpoint_fits, load_backbone
from vitlit.training.compared_hparams import compared_hparams, swept_columns
from vitlit.training.config_checks import check_config_types, check_config_values
from vitlit.training.faults import remove_unfinished_checkpoints
from vitlit.training.run_folder import process_rank
from vitlit.training.trainer import build_trainer, finish_loggers

log = logging.getLogger(__name__)

# Config sections whose values every logger gets as hyperparameters (TensorBoard's HPARAMS tab, MLflow params, ...).
HPARAM_SECTIONS = ("model", "data", "trainer", "seed")
# Final metrics shown beside the hyperparameters.
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss")


def resolve_checkpoint_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last`` means the newest of the run folder's ``checkpoints/last.ckpt`` (written after every epoch) and
    ``checkpoints/interrupted.ckpt`` (written on Ctrl-C or SIGTERM); any other value is returned as is."""
    if ckpt_path != "last":
        return ckpt_path
    if process_rank() == 0:
        remove_unfinished_checkpoints(run_dir / "checkpoints")
    candidates = [run_dir / "checkpoints" / name for name in ("last.ckpt", "interrupted.ckpt")]
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        raise FileNotFoundError(
            f"ckpt_path=last found neither {candidates[0]} nor {candidates[1]}; resume a run with "
            "hydra.run.dir=<its run folder> ckpt_path=last, or give ckpt_path=<path to a .ckpt file>"
        )
    return str(max(existing, key=lambda path: path.stat().st_mtime_ns))


@contextmanager
def intended_lightning_warnings_silenced() -> Iterator[None]:
    """Silence, for the length of a fit, two Lightning warnings about what vitlit does on purpose (the filters are
    restored afterwards: nothing process-wide is left behind)."""
    with warnings.catch_warnings():
        # The module, not the data module, normalises batches (its checkpoint holds mean/std).
        warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer` in `LightningModule` but")
        # A frozen backbone (no dropout in a feature extractor) and a locality guide (batch norm's running statistics)
        # are kept in eval mode on purpose: ViTClassifier.train(), LocalityGuidance.train().
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        yield


def _scalars(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model on the configured data, then test it with the best checkpoint.

    Returns the final metrics by name (``train/loss``, ``val/acc``, ``val/acc_best``, ``test/acc``, ...).
    """
    check_config_types(cfg)
    check_config_values(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()  # the model's head size depends on the classes found here
    module = instantiate(cfg.model, class_names=list(datamodule.class_names), _convert_="all")
    ckpt_path = resolve_checkpoint_path(cfg.get("ckpt_path"), Path(cfg.paths.output_dir))
    if ckpt_path and cfg.get("reinit_head"):
        load_backbone(module, ckpt_path)
        ckpt_path = None  # a new training from those weights, not a resume
    elif ckpt_path:
        check_checkpoint_fits(module, ckpt_path)

    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        # Hydra's .hydra/config.yaml keeps interpolations; this copy shows the values the run used.
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    with intended_lightning_warnings_silenced():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = _scalars(trainer.callback_metrics)
    fit_steps = trainer.global_step

    if cfg.get("test"):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if not best:
            log.warning("no best checkpoint was saved; testing the weights as they are after the last epoch")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(_scalars(trainer.callback_metrics))
        if trainer.is_global_zero:
            log.info(
                "Test: test_loss: %.4f | test_acc: %.4f (%s)",
                metrics["test/loss"],
                metrics["test/acc"],
                best or "last weights",
            )

    reports = [callback for callback in trainer.callbacks if isinstance(callback, RunReport)]
    for report in reports:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        report.write(cfg.paths.output_dir, trainer, metrics, best_checkpoint=best or None)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    hparams = {key: value for key, value in resolved.items() if key in HPARAM_SECTIONS}
    final = {name: metrics[name] for name in HPARAM_METRICS if name in metrics}
    finish_loggers(trainer, hparams, final, step=fit_steps, compared=compared_hparams(cfg), swept=swept_columns())
    if trainer.is_global_zero and not reports:  # the sweep summary (vitlit.training.sweep) reads its "final" metrics
        write_metrics_file(cfg.paths.output_dir, {"final": dict(sorted(metrics.items()))})
    return metrics
