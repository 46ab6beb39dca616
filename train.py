"""Train a ViT: ``python train.py [overrides]``; ``python train.py -m key=a,b`` sweeps. See conf/train.yaml."""

import logging
import os
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vitlit.training.compat import removed_key_message
from vitlit.training.faults import NonFiniteLossError
from vitlit.training.pipeline import train
from vitlit.training.sweep import FailedJob, is_multirun

log = logging.getLogger("vitlit.train")

# Errors whose message names the file or key and says what to do: a traceback through Lightning adds nothing.
USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteLossError, InstantiationException)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as error:
        if is_multirun():
            # One failing job must not end a sweep: the sweep summary lists it and the other jobs still run.
            log.exception("this job failed; the sweep goes on")
            return FailedJob(error)
        if isinstance(error, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            # Hydra wraps errors raised while building a config's object; the user's message is the cause's.
            cause = error.__cause__ if isinstance(error, InstantiationException) else None
            shown = cause if isinstance(cause, USER_ERRORS) else error
            raise SystemExit(f"{type(shown).__name__}: {shown}") from None  # the message alone, exit status 1
        raise
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    if message := removed_key_message(sys.argv[1:]):
        sys.exit(message)
    main()
