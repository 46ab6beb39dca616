"""The LightningModule and everything ``train(cfg)`` assembles: trainer, callbacks, checkpoints, sweeps."""

from vitlit.training.pipeline import train

__all__ = ["train"]
