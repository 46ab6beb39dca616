"""Resumed runs that continue exactly where the checkpoint left them: the random number generators' state.

Lightning's checkpoints restore the model, optimiser, scheduler, loops and callbacks, but not the global
random state that shuffles the next epoch, draws its augmentations and its dropout masks; a resumed run
would then diverge from the run it continues. :class:`RandomStateCheckpoint` saves that state in each
checkpoint and puts it back when a run resumes from it.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def collect_random_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python random state as tensors and lists (loadable with weights_only)."""
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(numpy_keys.astype(np.int64)), numpy_pos, numpy_has_gauss, numpy_gauss],
        "python": [python_version, list(python_state), python_gauss],
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`collect_random_state`."""
    torch.set_rng_state(state["torch"])
    if state["torch.cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, python_state, python_gauss = state["python"]
    random.setstate((version, tuple(python_state), python_gauss))


class RandomStateCheckpoint(L.Callback):
    """Saves the global random state in every checkpoint and restores it when a run resumes from one.

    Lightning restores callback state before it sets up the optimisers, which is where it builds the
    resumed epoch's data iterator (``trainer.estimated_stepping_batches``), and its sanity check runs with
    an isolated random state; so the resumed run draws the same data order, augmentations and dropout
    masks as the run it continues. A run killed mid-epoch and resumed from ``last.ckpt`` (written at the
    end of each epoch) repeats the interrupted epoch exactly as it would have run.
    """

    def state_dict(self) -> dict[str, Any]:
        return collect_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_random_state(state_dict)
