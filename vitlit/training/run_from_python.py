"""Training from Python: ``vitlit.run(overrides)`` trains as ``python train.py <overrides>`` does (notebooks),
and ``train_config(overrides)`` composes the config it runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from vitlit.configs import CONFIG_DIR
from vitlit.training.pipeline import train
from vitlit.training.run_folder import chosen_by_user, run_folder_for


def train_config(overrides: Sequence[str] = (), output_dir: str | os.PathLike | None = None) -> DictConfig:
    """conf/train.yaml composed with ``overrides`` (``python train.py`` syntax), outside a Hydra app.

    Hydra's run folder does not exist under its compose API, so ``paths.output_dir`` is set here:
    ``output_dir`` when given, which must be new or empty unless the run resumes (``ckpt_path=...``); else a
    new folder where the command line would put it, ``<paths.log_dir>/train/runs/<date>_<time>`` (numbered
    when that name is taken). ``hydra.run.dir=...`` among the overrides chooses it as well.
    """
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    chosen = output_dir is not None or chosen_by_user(cfg, "hydra.run.dir")
    folder = Path(output_dir if output_dir is not None else cfg.hydra.run.dir).expanduser().absolute()
    folder = run_folder_for(folder, chosen, cfg.get("ckpt_path"))
    with open_dict(cfg):
        del cfg["hydra"]  # the training code reads no Hydra settings; its ${hydra:...} values are unset here
        cfg.paths.output_dir = str(folder)
    return cfg


@contextmanager
def _run_log(output_dir: Path) -> Iterator[None]:
    """What the command line logs, for the length of one run: ``<output_dir>/train.log`` and, unless the
    caller set up logging, vitlit's messages (the epoch lines) on stdout."""
    root, vitlit_logger = logging.getLogger(), logging.getLogger("vitlit")
    output_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(output_dir / "train.log")
    to_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    to_file.setLevel(logging.INFO)
    to_stdout = None if root.handlers or vitlit_logger.handlers else logging.StreamHandler(sys.stdout)
    level = vitlit_logger.level
    vitlit_logger.setLevel(logging.INFO)
    root.addHandler(to_file)  # Lightning's records too, as in the command line's train.log
    if to_stdout is not None:
        vitlit_logger.addHandler(to_stdout)
    try:
        yield
    finally:
        root.removeHandler(to_file)
        to_file.close()
        if to_stdout is not None:
            vitlit_logger.removeHandler(to_stdout)
        vitlit_logger.setLevel(level)


def run(overrides: Sequence[str] = (), output_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Train as ``python train.py <overrides>`` does and return the final metrics by name.

    ``vitlit.run(["model=vit_micro", "data=image_folder", "data.root=my_images", "trainer.max_epochs=2"])``
    returns ``{"val/acc": ..., "val/acc_best": ..., "test/acc": ..., ...}`` and writes the usual run folder
    (checkpoints, TensorBoard events, train.log, metrics.json, curves.png, ...) into ``output_dir``, by default
    a new folder ``outputs/train/runs/<date>_<time>`` under the current folder (``VITLIT_LOG_DIR`` moves
    ``outputs``). Bad input raises ``ValueError`` or ``FileNotFoundError`` naming the key or file.
    """
    cfg = train_config(overrides, output_dir)
    with _run_log(Path(cfg.paths.output_dir)):
        return train(cfg)
