"""Train a ViT: ``python train.py [overrides]``; ``python train.py -m key=a,b`` sweeps. See conf/train.yaml."""

import logging

import hydra
from omegaconf import DictConfig

from vitlit.sweep import FailedJob, is_multirun
from vitlit.training import train

log = logging.getLogger("vitlit.train")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Exception as error:
        if not is_multirun():
            raise
        # One failing job must not end a sweep: the sweep summary lists it and the other jobs still run.
        log.exception("this job failed; the sweep goes on")
        return FailedJob(error)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
