"""The LightningModule and everything ``train(cfg)`` assembles: trainer, callbacks, checkpoints, sweeps.

``vitlit.training.train`` loads Lightning on first use: Hydra's callbacks (``run_folder``, ``sweep``) live here
and are built for every command, predict and the demo included, which never need Lightning.
"""

from __future__ import annotations

from typing import Any

import vitlit.configs  # noqa: F401  (registers the resolvers the configs use)

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from vitlit.training.pipeline import train

        return train
    raise AttributeError(f"module 'vitlit.training' has no attribute {name!r}")
