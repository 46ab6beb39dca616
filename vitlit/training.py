"""``train(cfg) -> metrics``: build the data, model, trainer, callbacks and loggers from a Hydra config, fit, test.

No command-line code here: ``train.py`` calls this, and so can tests and notebooks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from vitlit.report import RunReport

log = logging.getLogger(__name__)

# Config sections whose values go to TensorBoard's HPARAMS tab.
HPARAM_SECTIONS = ("model", "data", "trainer", "seed")
# Final metrics shown beside the hyperparameters.
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss")


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str | int:
    """``None`` picks mixed precision on a CUDA GPU (bf16-mixed where supported, else 16-mixed), else 32-true."""
    if precision is not None:
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def instantiate_all(section: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` section; entries set to null are skipped."""
    if not section:
        return []
    return [instantiate(entry) for entry in section.values() if entry is not None and "_target_" in entry]


def _scalars(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model on the configured data, then test it with the best checkpoint.

    Returns the final metrics by name (``train/loss``, ``val/acc``, ``val/acc_best``, ``test/acc``, ...).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()  # the model's head size depends on the classes found here
    module = instantiate(cfg.model, class_names=list(datamodule.class_names), _convert_="all")

    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_all(cfg.get("callbacks")), logger=loggers or False, precision=precision
    )
    log.info("precision: %s", trainer.precision)
    if trainer.is_global_zero:
        # Hydra's .hydra/config.yaml keeps interpolations; this copy shows the values the run used.
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
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

    for callback in trainer.callbacks:
        if isinstance(callback, RunReport):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            callback.write(cfg.paths.output_dir, trainer, metrics, best_checkpoint=best or None)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    hparams = {key: value for key, value in resolved.items() if key in HPARAM_SECTIONS}
    final = {name: metrics[name] for name in HPARAM_METRICS if name in metrics}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics=final, step=fit_steps)
            logger.finalize("success")
    return metrics
