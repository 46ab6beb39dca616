"""Checks config values, before anything is built: against the type hints of the classes they configure, and
the numbers a user types against the ranges where they mean something (``VALUE_RANGES``: the one place where
ranges are written; the constructors do not check them again).

``data.batch_size=abc`` would otherwise fail deep inside a constructor as ``'<' not supported between
instances of 'str' and 'int'``; here it becomes ``data.batch_size='abc' is a str; ImageFolderDataModule
expects batch_size: int``. Hints this module does not understand (classes, callables) are not checked.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Config nodes without a _target_ that are keyword arguments of a known class.
NESTED_TARGETS = {"model.net": "vitlit.models.vit.ViT"}
SECTIONS = ("data", "model", "trainer")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else Any
        return all(_matches(element, item) for element in value)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # classes, callables, path-likes: left to the constructor


def _hints(target: str) -> tuple[str, dict[str, Any]]:
    obj = get_object(target)
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return getattr(obj, "__name__", target), typing.get_type_hints(function)
    except Exception:  # hints that do not resolve on this Python: nothing to check against
        return getattr(obj, "__name__", target), {}


def _describe(hint: Any) -> str:
    return (
        str(hint).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")
        if not isinstance(hint, type)
        else hint.__name__
    )


def _check_node(node: DictConfig, key: str, target: str, problems: list[str]) -> None:
    name, hints = _hints(target)
    for field in node:
        if not isinstance(field, str) or field.startswith("_") or field not in hints:
            continue
        full_key = f"{key}.{field}"
        try:
            value = (
                OmegaConf.to_container(node[field], resolve=True) if OmegaConf.is_config(node[field]) else node[field]
            )
        except OmegaConfBaseException:
            continue  # resolved later, in context (e.g. ${hydra:...})
        if isinstance(value, dict) and "_target_" in value:
            continue
        if not _matches(value, hints[field]):
            problems.append(
                f"{full_key}={value!r} is a {type(value).__name__}; {name} expects {field}: {_describe(hints[field])}"
            )


def check_config_types(cfg: DictConfig) -> None:
    """Raise one ``ValueError`` listing every value of ``data``, ``model`` and ``trainer`` of the wrong type."""
    problems: list[str] = []

    def visit(node: Any, key: str) -> None:
        if not isinstance(node, DictConfig):
            return
        target = node.get("_target_") if "_target_" in node else NESTED_TARGETS.get(key)
        if isinstance(target, str):
            try:
                _check_node(node, key, target, problems)
            except ImportError:
                return  # Hydra's instantiate names the missing target itself
        for field in node:
            if not isinstance(field, str) or field.startswith("_"):
                continue
            try:
                child = node[field]
            except OmegaConfBaseException:
                continue
            if isinstance(child, DictConfig):
                visit(child, f"{key}.{field}")
            elif isinstance(child, ListConfig):
                for index, item in enumerate(child):
                    visit(item, f"{key}.{field}[{index}]")

    for section in SECTIONS:
        if section in cfg:
            visit(cfg[section], section)
    if problems:
        raise ValueError(
            "config values of the wrong type:\n"
            + "\n".join(f"  {problem}" for problem in problems)
            + "\nFix them on the command line or in conf/ (quote strings that look like numbers)."
        )


def _fractions(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return bool(values) and all(0 < v <= 1 for v in values)


def _probability(value: Any) -> bool:
    return 0 <= value < 1


# Key -> (whether a value is possible, what it must be). Keys a config does not have are skipped.
VALUE_RANGES: dict[str, tuple[Any, str]] = {
    "data.batch_size": (lambda v: v >= 1, "at least 1"),
    "data.num_workers": (lambda v: v is None or v >= 0, "0 or more (null: one per CPU core)"),
    "data.eval_crop_fraction": (_fractions, "in (0, 1], or a list of such"),
    "data.train_crop_scale": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "[min, max] with 0 < min <= max <= 1",
    ),
    "data.horizontal_flip": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "data.random_erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "model.optimizer.lr": (lambda v: v > 0, "above 0"),
    "model.optimizer.weight_decay": (lambda v: v >= 0, "0 or more"),
    "model.label_smoothing": (_probability, "in [0, 1)"),
    "model.net.dropout": (_probability, "a probability in [0, 1)"),
    "model.net.attention_dropout": (_probability, "a probability in [0, 1)"),
    "model.net.drop_path_rate": (_probability, "a probability in [0, 1)"),
    "model.net.patch_drop_rate": (_probability, "in [0, 1)"),
    "model.scheduler.warmup": (lambda v: v >= 0, "0 or more (a step count, or a fraction below 1)"),
    "model.scheduler.min_lr": (lambda v: v >= 0, "0 or more"),
    "model.layer_decay": (lambda v: v is None or 0 < v <= 1, "in (0, 1], or null"),
    "model.relative_localization_weight": (lambda v: v >= 0, ">= 0 (0 disables it)"),
    "model.locality_guidance.weight": (lambda v: v >= 0, ">= 0"),
    "model.locality_guidance.steps": (lambda v: v >= 1, "at least 1"),
    "model.locality_guidance.size": (lambda v: v >= 8, "at least 8 (pixels)"),
    "model.locality_guidance.lr": (lambda v: v > 0, "above 0"),
    "data.val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "trainer.max_epochs": (lambda v: v is None or v == -1 or v >= 1, "at least 1 (-1: no limit)"),
    "trainer.max_steps": (lambda v: v is None or v == -1 or v >= 1, "at least 1 (-1: no limit)"),
    "trainer.accumulate_grad_batches": (lambda v: v >= 1, "at least 1"),
}


def check_config_values(cfg: DictConfig) -> None:
    """Raise one ``ValueError`` listing every number of ``VALUE_RANGES`` that cannot work (after the type check)."""
    problems = []
    for key, (possible, requirement) in VALUE_RANGES.items():
        try:
            node = OmegaConf.select(cfg, key, throw_on_missing=False)
            value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException:
            continue
        if value is None and OmegaConf.select(cfg, key, default="absent") == "absent":
            continue
        try:
            ok = possible(value)
        except TypeError:
            continue  # a wrong type: check_config_types names it
        if not ok:
            problems.append(f"{key}={value!r} must be {requirement}")
    if problems:
        raise ValueError(
            "config values that cannot work:\n"
            + "\n".join(f"  {problem}" for problem in problems)
            + "\nFix them on the command line or in conf/."
        )
