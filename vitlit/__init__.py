"""vitlit: a hand-built Vision Transformer trained with Lightning and configured with Hydra."""

from vitlit.model import ViT

__all__ = ["ViT"]
__version__ = "0.1.0"
