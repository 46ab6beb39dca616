"""Train a ViT: ``vitlit-train [overrides]`` (or ``python train.py``, ``python -m vitlit.train``); ``-m key=a,b``
sweeps. See conf/train.yaml; ``--config-dir <folder>`` adds configs of your own.

Hydra composes the config before torch and Lightning are imported (they load inside :func:`main`), so
``--help``, ``--cfg job`` and a misspelled key are answered at once.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from vitlit.configs import CONFIG_DIR
from vitlit.inference.compat import removed_key_message
from vitlit.user_errors import user_errors_as_messages

log = logging.getLogger("vitlit.train")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> Any:
    """One training run (or sweep job): the metric named by ``optimized_metric``, for a sweeper."""
    from vitlit.training.pipeline import train
    from vitlit.training.sweep import FailedJob, is_multirun

    if is_multirun():
        try:
            metrics = train(cfg)
        except Exception as error:
            # One failing job must not end a sweep: the sweep summary lists it and the other jobs still run.
            log.exception("this job failed; the sweep goes on")
            return FailedJob(error)
    else:
        with user_errors_as_messages():  # "Error: ..." and exit status 1, no traceback
            metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


def command_line() -> None:
    """The ``vitlit-train`` command: a renamed or removed key is named before Hydra composes anything."""
    if message := removed_key_message(sys.argv[1:]):
        sys.exit(f"Error: {message}")
    main()


if __name__ == "__main__":
    command_line()
