"""One Lightning Trainer builder for training and evaluation: precision, loggers, callbacks from the config."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from omegaconf import DictConfig

from vitlit.private_api import cpu_has_native_bf16
from vitlit.reporting.loggers import close_loggers, log_final_hparams

log = logging.getLogger(__name__)


def resolve_precision(precision: str | int | None, accelerator: str = "auto") -> str | int:
    """``None`` picks mixed precision on a CUDA GPU (bf16-mixed where supported, else 16-mixed) and on a CPU
    with native bfloat16 (bf16-mixed), else 32-true; the choice and its reason are logged. An explicit bf16
    precision on a CPU that only emulates bfloat16 is kept, with a warning."""
    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    cpu = f"this CPU ({torch.backends.cpu.get_cpu_capability()})"
    if precision is None:
        if on_cuda:
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
            log.info("precision: %s: mixed precision on a CUDA GPU", precision)
        elif accelerator in ("auto", "cpu") and cpu_has_native_bf16():
            precision = "bf16-mixed"
            log.info("precision: bf16-mixed: %s computes bfloat16 natively (AVX512_BF16 or AMX)", cpu)
        else:
            precision = "32-true"
            log.info("precision: 32-true: %s has no native bfloat16 (it would be emulated, many times slower)", cpu)
        return precision
    log.info("precision: %s (trainer.precision)", precision)
    if "bf16" in str(precision) and not on_cuda and accelerator in ("auto", "cpu") and not cpu_has_native_bf16():
        log.warning(
            "trainer.precision=%s on %s, which has no native bfloat16 (AVX512_BF16 or AMX): bf16 matmuls are "
            "emulated there and run many times slower than 32-true; leave trainer.precision unset (null) to pick "
            "the fast one",
            precision,
            cpu,
        )
    return precision


def instantiate_all(section: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` section; entries set to null are skipped."""
    if not section:
        return []
    return [instantiate(entry) for entry in section.values() if entry is not None and "_target_" in entry]


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The ``cfg.trainer`` Trainer with ``cfg.callbacks`` and ``cfg.logger``, in the precision the hardware suits."""
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_all(cfg.get("callbacks")), logger=loggers or False, precision=precision
    )
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision") or "highest")
    return trainer


def finish_loggers(
    trainer: L.Trainer,
    hparams: Mapping[str, Any] | None = None,
    final: Mapping[str, float] | None = None,
    step: int = 0,
    compared: Mapping[str, Any] | None = None,
    swept: Collection[str] = (),
) -> None:
    """Give every logger the hyperparameters with the final metrics beside them (TensorBoard's HPARAMS tab:
    ``compared`` when given, ``swept`` columns first, MLflow params, W&B config, CSV hparams.yaml), then close them."""
    if hparams is not None:
        log_final_hparams(trainer.loggers, hparams, final or {}, step, compared, swept)
    close_loggers(trainer.loggers)
