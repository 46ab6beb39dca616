"""The bottom layer, plain PyTorch (no Lightning, no Hydra): the ViT, its weight formats, attention maps."""

from vitlit.models.vit import ViT
from vitlit.models.weights import load_pretrained

__all__ = ["ViT", "load_pretrained"]
