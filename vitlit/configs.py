"""vitlit's Hydra configs: where they are (``CONFIG_DIR``) and the OmegaConf resolvers they use.

The configs live in the repository's top-level ``conf/``; a wheel ships them inside the package as
``vitlit/conf/`` (pyproject.toml maps one to the other), so every command finds them wherever it runs.
Importing this module is cheap (no torch, no Lightning): the commands compose their config before the
heavy imports, so ``--help`` and a misspelled key are answered at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _config_dir() -> Path:
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):  # an installed wheel, then a source checkout
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"vitlit's configs are neither in {package / 'conf'} nor in {package.parent / 'conf'}")


CONFIG_DIR = _config_dir()


def is_set(value: Any) -> bool:
    """``${vitlit.is_set:${model.weights}}``: whether a key holds a value (not null): true when weights are given."""
    return value is not None


def devices_per_node(devices: Any) -> int:
    """``${vitlit.devices_per_node:${trainer.devices}}``: the GPUs (and tasks) a SLURM job asks for on each node.
    A scheduler needs a number before the job starts: ``auto`` cannot be resolved yet."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if not isinstance(devices, str) and hasattr(devices, "__len__"):  # a list of device indices
        return len(devices)
    raise ValueError(
        f"hydra/launcher=slurm needs trainer.devices as a number of GPUs per node, got {devices!r}: add trainer=gpu "
        "(one GPU) or trainer=ddp trainer.devices=N"
    )


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("vitlit.is_set"):
        OmegaConf.register_new_resolver("vitlit.is_set", is_set)
    if not OmegaConf.has_resolver("vitlit.devices_per_node"):
        OmegaConf.register_new_resolver("vitlit.devices_per_node", devices_per_node)


register_resolvers()
