"""What TensorBoard's HPARAMS table shows: the settings a run was compared on, not its whole config.

TensorBoard sorts the columns by name, so a whole resolved config buries the swept key among a hundred
``data/...`` columns and every trial looks alike. The table gets the keys this job overrides (Hydra's task
overrides: what a sweep varies) plus a short named list, without ``_target_``s, paths, URLs or hashes;
the full resolved config stays in the run folder (``.hydra/config.yaml``) and goes to the other loggers.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Always shown, whether overridden or not: (column, config key).
NAMED = (
    ("model/net/embed_dim", "model.net.embed_dim"),
    ("model/net/depth", "model.net.depth"),
    ("model/optimizer/lr", "model.optimizer.lr"),
    ("data/batch_size", "data.batch_size"),
    ("trainer/max_epochs", "trainer.max_epochs"),
    ("model/weights", "model.weights"),
    ("seed", "seed"),
)
HASH = re.compile(r"[0-9a-f]{7,64}")
NOT_COMPARED_KEYS = ("paths.", "hydra.", "ckpt_path", "logger.")


def task_overrides() -> tuple[list[str], str | None]:
    """The running Hydra job's task overrides and its ``model`` config choice ([], None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], None
    hydra = HydraConfig.get()
    return list(hydra.overrides.task), hydra.runtime.choices.get("model")


def swept_columns() -> set[str]:
    """The columns a running multirun job's sweep varies: the keys its command line sweeps (``key=a,b``, ranges,
    globs; read from ``<sweep dir>/multirun.yaml``) and the sweeper's ``params`` (Optuna's search space).
    Empty outside a multirun, or when the sweep's file cannot be read."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return set()
    sweep_file = Path(HydraConfig.get().sweep.dir) / "multirun.yaml"
    try:
        sweep = OmegaConf.load(sweep_file)
        overrides = OverridesParser.create().parse_overrides(list(sweep.hydra.overrides.task))
    except (OSError, HydraException, AttributeError):
        return set()
    keys = {override.get_key_element() for override in overrides if override.is_sweep_override()}
    keys |= set(OmegaConf.select(sweep, "hydra.sweeper.params", default=None) or {})
    return {key.lstrip("+~").replace(".", "/") for key in keys}


def is_location(value: str) -> bool:
    """A path, URL or hash: different in every run, or meaningless as a column."""
    return "/" in value or "\\" in value or "://" in value or bool(HASH.fullmatch(value))


def table_value(value: Any) -> bool | int | float | str:
    """A value TensorBoard's table can hold (bool, number or string)."""
    if isinstance(value, (bool, int, float)):
        return value
    if value is None:
        return "null"
    text = str(value)
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def weights_label(weights: Any) -> str:
    """``model.weights`` as a column value: a library name as it is, a file by its name alone."""
    if not weights:
        return "none"
    text = str(weights)
    return text if text.startswith(("torchvision:", "hf-hub:")) else PurePath(text).name


def compared_hparams(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """{column: value} for TensorBoard's HPARAMS tab: the named settings, then this job's overrides."""
    overrides, model_choice = task_overrides()
    table: dict[str, bool | int | float | str] = {}
    if model_choice:
        table["model"] = model_choice
    for column, key in NAMED:
        value = OmegaConf.select(cfg, key, default=None)
        table[column] = weights_label(value) if key == "model.weights" else table_value(value)
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.endswith("_target_") or key.startswith(NOT_COMPARED_KEYS) or key == "model.weights":
            continue
        if is_location(value):
            continue
        table[key.replace(".", "/")] = table_value(value)
    return table
