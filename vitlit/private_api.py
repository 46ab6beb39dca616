"""Every call vitlit makes into another library's private API, each behind one small function.

When a release moves one of these, ``tests/test_private_api.py`` fails here, by name, instead of a run
failing somewhere deep. Imports nothing of vitlit; any layer may import it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` already ran (``nn.Module.compile`` keeps the compiled call in a private slot)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def mark_batch_dynamic(tensor: torch.Tensor) -> None:
    """Tell ``torch.compile`` that dim 0 (the batch) varies, so one graph serves every batch size."""
    torch._dynamo.mark_dynamic(tensor, 0)


def add_tensorboard_summary(writer: Any, summary: Any, step: int) -> None:
    """Write a ready-made protobuf ``Summary`` through a ``SummaryWriter`` (its public API writes PNG images only)."""
    writer._get_file_writer().add_summary(summary, step)


def job_return_value(job_return: Any) -> Any:
    """A Hydra ``JobReturn``'s value, or a failed job's exception (the public ``return_value`` re-raises it)."""
    return job_return._return_value


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX); elsewhere bf16 matmuls are emulated,
    hundreds of times slower than float32. torch answers only through these private checks."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def fit_loop_progress(checkpoint: Mapping[str, Any]) -> tuple[dict[str, int] | None, dict[str, Any]]:
    """A Lightning checkpoint's record of how far fitting got: (the epoch counters ``{"processed", "completed",
    ...}`` or None, the epoch loop's batch progress ``{"current": {...}, "is_last_batch": ...}`` or {})."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    return loop.get("epoch_progress", {}).get("current"), loop.get("epoch_loop.batch_progress", {})


def batches_started_in_epoch(trainer: Any) -> int:
    """How many training batches of the current epoch the trainer has started (the loop's progress counter)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


def at_last_batch_of_epoch(trainer: Any) -> bool:
    """Whether the training batch the trainer last ran was its epoch's last."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def set_up_training_data(trainer: Any) -> None:
    """Have the fit loop build its training loader now, as ``trainer.estimated_stepping_batches`` does when
    epochs end the run (with ``max_epochs=-1`` it returns ``max_steps`` and builds nothing)."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
