"""OmegaConf resolvers the configs use; registered when ``vitlit.training`` is imported (train.py does)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def is_set(value: Any) -> bool:
    """``${vitlit.is_set:${model.weights}}``: whether a key holds a value (not null): true when weights are given."""
    return value is not None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("vitlit.is_set"):
        OmegaConf.register_new_resolver("vitlit.is_set", is_set)
