"""vitlit: a hand-built Vision Transformer trained with Lightning and configured with Hydra."""

from vitlit.model import ViT
from vitlit.weights import load_pretrained

__all__ = ["ViT", "load_pretrained"]
__version__ = "0.1.0"
