"""Train a ViT: ``python train.py [overrides]``; ``python train.py -m key=a,b`` sweeps. See conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from vitlit.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
