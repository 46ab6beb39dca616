"""Never lose work: atomic checkpoint files, a resumable checkpoint on Ctrl-C or SIGTERM, a clean stop on NaN/Inf loss.

All three are Lightning plug-ins, switched on in ``conf/trainer/default.yaml`` and ``conf/callbacks/default.yaml``.
A NaN/Inf loss on one DDP rank stops every rank at the same step, with the same message.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vitlit.private_api import batches_started_in_epoch

log = logging.getLogger(__name__)

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, syncs it to disk, then renames it into place.

    A crash or a full disk while saving leaves the previous file at ``path`` intact and no partial file behind.
    Remote paths (``s3://`` ...) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(descriptor, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def remove_unfinished_checkpoints(folder: Path) -> None:
    """Delete the temporary files of checkpoints whose writing a killed process (``kill -9``, power loss) never
    finished: ``.<name>.ckpt.<random>.tmp``. The finished checkpoints beside them are whole and stay."""
    for path in sorted(folder.glob(".*.ckpt.*.tmp")) if folder.is_dir() else []:
        log.info("removing %s, a checkpoint whose writing was cut off", path)
        path.unlink(missing_ok=True)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(L.Callback):
    """Stops training before the backward pass of a NaN or infinite loss, naming the step and the learning rate.

    The weights are never updated with that loss, and the checkpoints already written stay as they are. With
    several processes (DDP, FSDP) every rank stops at the same step with the same message, naming the rank(s) that
    saw the bad loss: one all-reduce of ``world_size`` numbers per step shares every rank's loss. Stopping one rank
    alone would leave the others waiting in their next collective.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        losses = _loss_on_every_rank(trainer, loss)
        bad = {rank: value for rank, value in enumerate(losses) if not math.isfinite(value)}
        if not bad:
            return
        if len(losses) == 1:
            what = f"{bad[0]}"
        else:
            ranks = ", ".join(f"{value} on rank {rank}" for rank, value in bad.items())
            what = f"{ranks} (of {len(losses)} processes)"
        rates = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        last = _newest_checkpoint(trainer)
        if len(losses) > 1:  # rank 0 wrote the checkpoints; name its file on every rank
            last = trainer.strategy.broadcast(last, src=0)
        raise NonFiniteLossError(
            f"training loss is {what} at step {trainer.global_step} (epoch {trainer.current_epoch + 1}, "
            f"batch {batches_started_in_epoch(trainer)}); learning rate {rates[0]:.3g}. "
            f"Stopped without applying it. Last good checkpoint: {last or 'none saved yet'}. "
            "Try a lower model.optimizer.lr, a longer warm-up (model.scheduler.warmup) or trainer.precision=32-true."
        )


def _loss_on_every_rank(trainer: L.Trainer, loss: torch.Tensor) -> list[float]:
    """This step's loss on every process, in rank order (one all-reduce when there are several, none otherwise)."""
    if trainer.world_size == 1:
        return [float(loss.detach())]
    # Each rank fills its own slot; a sum puts every rank's loss in every rank's vector (NaN + 0 stays NaN).
    losses = torch.zeros(trainer.world_size, device=loss.device)
    losses[trainer.global_rank] = loss.detach().float()
    return trainer.strategy.reduce(losses, reduce_op="sum").tolist()


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C or SIGTERM, finish the current batch, save ``interrupted.ckpt`` and exit; resume with ``ckpt_path=``.

    Lightning stops at the end of the batch on SIGTERM; a first Ctrl-C is turned into that SIGTERM (a second
    Ctrl-C stops at once, as Python does). The checkpoint goes beside the other checkpoints.
    """

    filename = "interrupted.ckpt"

    def __init__(self) -> None:
        self._previous_sigint: Any = None
        self._cause = "SIGTERM"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning handles SIGTERM only off Windows; signal handlers can only be set from the main thread.
        if (
            trainer.world_size == 1
            and sys.platform != "win32"
            and threading.current_thread() is threading.main_thread()
        ):
            self._previous_sigint = signal.signal(signal.SIGINT, self._stop_after_this_batch)

    def _stop_after_this_batch(self, signum: int, frame: Any) -> None:
        self._restore_sigint()  # a second Ctrl-C interrupts at once
        self._cause = "Ctrl-C"
        log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to stop now)")
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's own graceful stop

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.sanity_checking:
            return
        checkpoint = trainer.checkpoint_callback
        folder = Path(getattr(checkpoint, "dirpath", None) or trainer.default_root_dir)
        path = folder / self.filename
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning(
                "training interrupted by %s at step %d (epoch %d); saved a resumable checkpoint to %s. "
                "Resume with: python train.py <the same overrides> hydra.run.dir=%s ckpt_path=last",
                "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else self._cause,
                trainer.global_step,
                trainer.current_epoch + 1,
                path,
                folder.parent,
            )


def _newest_checkpoint(trainer: L.Trainer) -> str:
    """The most recently written checkpoint file of any checkpoint callback, or ""."""
    paths = {
        getattr(callback, name, "")
        for callback in trainer.checkpoint_callbacks
        for name in ("last_model_path", "best_model_path")
    }
    existing = [Path(path) for path in paths if path and Path(path).is_file()]
    return str(max(existing, key=lambda path: path.stat().st_mtime_ns)) if existing else ""
