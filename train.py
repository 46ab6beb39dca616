"""Train a ViT: ``python train.py [overrides]``; ``python train.py -m key=a,b`` sweeps. See conf/train.yaml."""

import os

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vitlit.faults import NonFiniteLossError
from vitlit.training import train

# Errors whose message names the file or key and says what to do: a traceback through Lightning adds nothing.
USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteLossError, InstantiationException)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except USER_ERRORS as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise error.with_traceback(None) from None
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
