"""Classifying images with a trained checkpoint, in plain PyTorch (no Lightning, torchmetrics or Hydra).

:class:`~vitlit.inference.predictor.Predictor` is the one place where "how vitlit classifies an image" is
written: the checkpoint's network, class names and evaluation views (resize and crop per view, normalisation,
test-time flip). ``vitlit.predict``, ``vitlit.demo``, the ONNX graph of ``vitlit.export`` and
``ViTClassifier.evaluation_logits`` use it or its pieces. ``Predictor`` loads torch on first use, so that
:mod:`vitlit.inference.compat` stays cheap for ``train.py``'s command line.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from vitlit.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'vitlit.inference' has no attribute {name!r}")
