"""Sharpness-aware minimisation (SAM; Foret et al. 2021) around any optimiser.

ViTs trained without pretraining land in sharp minima; SAM's flatter ones generalise better, more so
than stronger augmentation does (Chen et al. 2022, "When Vision Transformers Outperform ResNets without
Pretraining or Strong Data Augmentations").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer


class SharpnessAwareMinimization(Optimizer):
    """Each ``step`` moves the weights to the worst point within an L2 ball of radius ``rho`` (along the
    gradient), takes the gradient there, moves back and lets ``base`` update with that gradient.

    It costs two forward and backward passes per step: ``step`` takes a closure that zeroes the gradients,
    recomputes the loss and backpropagates (Lightning's automatic optimisation passes one). The wrapper
    shares ``param_groups`` and ``state`` with ``base``, so LR schedulers and checkpoints see the base
    optimiser's settings and state; its ``state_dict`` is the base optimiser's.
    Under FSDP each process normalises only its own shard of the gradient, so the whole step exceeds ``rho``.
    """

    def __init__(self, base: Optimizer, rho: float = 0.05):
        if rho <= 0:
            raise ValueError(f"model.sam_rho must be > 0 to use SAM (0 disables it), got {rho}")
        super().__init__(base.param_groups, base.defaults)
        self.base = base
        self.rho = rho
        self.param_groups, self.state = base.param_groups, base.state

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        if closure is None:
            raise ValueError("SharpnessAwareMinimization.step needs a closure that recomputes the loss and gradients")
        with torch.enable_grad():
            loss = closure()
        parameters = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not parameters:
            return loss
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        ascent = [p.grad * (self.rho / (norm + 1e-12)) for p in parameters]
        torch._foreach_add_(parameters, ascent)
        with torch.enable_grad():
            closure()
        torch._foreach_sub_(parameters, ascent)
        self.base.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups, self.state = self.base.param_groups, self.base.state
