"""The LightningModule and everything ``train(cfg)`` assembles: trainer, callbacks, checkpoints, sweeps."""

from vitlit.training.pipeline import train
from vitlit.training.resolvers import register_resolvers

register_resolvers()

__all__ = ["train"]
