"""Learning-rate schedules, built from torch's own schedulers."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup: float | int = 0.1,
    warmup_start_factor: float = 0.01,
    min_lr: float = 0.0,
) -> LRScheduler:
    """Linear warmup from ``warmup_start_factor * lr`` to ``lr``, then cosine decay to ``min_lr`` at ``total_steps``.

    ``warmup`` is a step count (int) or a fraction of ``total_steps`` (float below 1).
    Step it once per optimizer step.
    """
    if total_steps < 1:
        raise ValueError(f"warmup_cosine needs total_steps >= 1, got {total_steps}")
    warmup_steps = round(warmup * total_steps) if isinstance(warmup, float) and warmup < 1 else int(warmup)
    warmup_steps = min(warmup_steps, total_steps - 1)
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=min_lr)
    if warmup_steps <= 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup_steps)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warmup_steps])
