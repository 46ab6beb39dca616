"""The learning-rate schedule: linear warmup, then cosine decay, as a function of the step and the run's length.

A resumed run rebuilds it for its own length (more or fewer epochs, another device count): the learning rate
goes on from the value it had and reaches ``min_lr`` at the new last step; it never climbs back up.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from vitlit.private_api import fit_loop_progress

log = logging.getLogger(__name__)


class WarmupCosine(LRScheduler):
    """Linear warmup from ``warmup_start_factor * lr`` to ``lr`` over ``warmup`` steps (a count, or a fraction of
    ``total_steps`` below 1), then cosine decay to ``min_lr`` at ``total_steps``. Step it once per optimizer step.

    The learning rate is computed from the step alone, so a resume of the same length is bit-identical. A
    checkpoint written for another length continues from its step: after warmup, a cosine from the learning
    rate it had down to ``min_lr`` at the new end.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup: float | int = 0.1,
        warmup_start_factor: float = 0.01,
        min_lr: float = 0.0,
    ):
        if total_steps < 1:
            raise ValueError(f"warmup_cosine needs total_steps >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.warmup = warmup
        self.warmup_steps = min(self._warmup_steps(warmup, total_steps), total_steps - 1)
        self.warmup_start_factor = warmup_start_factor
        self.min_lr = min_lr
        self.resumed_at: tuple[int, float] | None = None  # (step, decay factor there) after a change of length
        super().__init__(optimizer)

    @staticmethod
    def _warmup_steps(warmup: float | int, total_steps: int) -> int:
        return round(warmup * total_steps) if isinstance(warmup, float) and warmup < 1 else int(warmup)

    def factor(self, step: int) -> float:
        """Where the learning rate is at ``step``: in warmup a multiple of ``lr``; after it, 1 at ``lr`` and 0 at
        ``min_lr`` (the cosine's share)."""
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        start, value = self.resumed_at if self.resumed_at else (self.warmup_steps, 1.0)
        span = max(self.total_steps - start, 1)
        return value * 0.5 * (1 + math.cos(math.pi * min(max(step - start, 0), span) / span))

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step < self.warmup_steps:
            return [base * self.factor(step) for base in self.base_lrs]
        return [self.min_lr + (base - self.min_lr) * self.factor(step) for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "base_lrs": self.base_lrs,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "resumed_at": self.resumed_at,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        step = int(state_dict.get("last_epoch", 0))
        if "total_steps" not in state_dict:  # another scheduler's state (e.g. vitlit 06f6cff's SequentialLR)
            log.info(
                "the checkpoint's scheduler state is another scheduler's; the rebuilt schedule continues at step %d",
                step,
            )
            saved = None
        else:
            saved = WarmupCosine.__new__(WarmupCosine)
            saved.__dict__.update(self.__dict__)  # the same settings, at the saved length
            saved.total_steps = state_dict["total_steps"]
            computed = min(self._warmup_steps(self.warmup, saved.total_steps), saved.total_steps - 1)
            saved.warmup_steps = state_dict.get("warmup_steps", computed)
            saved.resumed_at = tuple(state_dict["resumed_at"]) if state_dict.get("resumed_at") else None
        if step > self.total_steps:
            raise ValueError(
                f"the checkpoint is at step {step}, past this run's last step ({self.total_steps}); resume with "
                "more trainer.max_epochs than it has done, or start a new run from it with reinit_head=false"
            )
        self.last_epoch = step
        if saved is not None and saved.total_steps != self.total_steps:
            log.info(
                "schedule now spans %d steps, was %d (resumed at step %d)", self.total_steps, saved.total_steps, step
            )
            if step >= saved.warmup_steps:  # past its warmup: the decay goes on from the rate it had
                self.warmup_steps = min(self.warmup_steps, step)
                self.resumed_at = (step, saved.factor(step))
        elif saved is not None:  # the same length: the same schedule, resumed or not
            self.warmup_steps, self.resumed_at = saved.warmup_steps, saved.resumed_at
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup: float | int = 0.1,
    warmup_start_factor: float = 0.01,
    min_lr: float = 0.0,
) -> WarmupCosine:
    """The schedule configs name (``model.scheduler._target_``); see :class:`WarmupCosine`."""
    return WarmupCosine(optimizer, total_steps, warmup, warmup_start_factor, min_lr)


def resumed_total_steps(checkpoint: dict[str, Any], total_steps: int, max_epochs: int, accumulate: int = 1) -> int:
    """The last step of a run resumed from ``checkpoint``: its steps so far plus what the epochs it has left take
    now. Lightning's estimate (``total_steps``: ``max_epochs`` times today's steps per epoch) is wrong when the
    epochs already done had another length (another device count, batch size or accumulation)."""
    epochs, batches = fit_loop_progress(checkpoint)
    if not epochs or "current" not in batches or max_epochs < 1 or total_steps % max_epochs:
        return total_steps  # max_steps caps the run, or a checkpoint without loop state: Lightning's estimate
    steps_per_epoch = total_steps // max_epochs
    if batches.get("is_last_batch"):  # written at the end of an epoch
        epochs_left, done_in_epoch = max_epochs - epochs["processed"], 0
    else:  # mid-epoch: that epoch goes on from the batch it had reached
        epochs_left, done_in_epoch = max_epochs - epochs["completed"], batches["current"]["completed"] // accumulate
    return max(checkpoint.get("global_step", 0) + epochs_left * steps_per_epoch - done_in_epoch, 1)
