"""vitlit: a hand-built Vision Transformer trained with Lightning and configured with Hydra.

The public surface: ``from vitlit import ViT, ViTClassifier, ImageFolderDataModule, load_pretrained, Predictor``, and
``vitlit.run(overrides)``, which trains as ``vitlit-train <overrides>`` does and returns the metrics (notebooks).
Names load on first use, so ``import vitlit.models`` stays free of Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ViT": "vitlit.models.vit",
    "load_pretrained": "vitlit.models.weights",
    "ImageFolderDataModule": "vitlit.data.datamodule",
    "ViTClassifier": "vitlit.training.module",
    "run": "vitlit.training.run_from_python",
    "Predictor": "vitlit.inference.predictor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vitlit' has no attribute {name!r}")
