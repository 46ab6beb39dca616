"""The default recipe (frozen ViT-B/16, new head) with and without the frozen-backbone feature cache, 3 and 30 epochs.

Each row is one ``train(cfg)`` run, what ``python train.py`` does, with its default callbacks (dashboards,
run report) and the test stage. The backbone's weights are random (``model.weights=null``, kept frozen):
the same compute as the ImageNet weights, with no download.

    python -m benchmarks.feature_cache                      # cached 3 and 30 epochs, uncached 3 epochs
    python -m benchmarks.feature_cache --uncached-epochs 3 30
    python -m benchmarks.feature_cache --quick              # model.net.depth=2: a smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from benchmarks.timing import describe_machine, markdown_table
from vitlit.training import train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RECIPE = ["model.weights=null", "model.freeze_backbone=true", "callbacks.progress_bar=null"]


def timed_run(epochs: int, cached: bool, extra: list[str]) -> tuple[float, float]:
    """Wall seconds of one run and its test accuracy."""
    overrides = [*RECIPE, f"trainer.max_epochs={epochs}", *([] if cached else ["callbacks.feature_cache=null"]), *extra]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as output_dir:
        with open_dict(cfg):
            cfg.paths.output_dir = output_dir
        start = time.perf_counter()
        metrics = train(cfg)
        return time.perf_counter() - start, metrics["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cached-epochs", type=int, nargs="+", default=[3, 30])
    parser.add_argument("--uncached-epochs", type=int, nargs="+", default=[3])
    parser.add_argument("--quick", action="store_true", help="a 2-block ViT-B/16: a smoke test")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    extra = [*(["model.net.depth=2"] if args.quick else []), *args.overrides]
    runs = [(epochs, False) for epochs in args.uncached_epochs] + [(epochs, True) for epochs in args.cached_epochs]
    results = {run: timed_run(*run, extra) for run in runs}
    baseline = results[runs[0]][0]
    rows = [
        [
            str(epochs),
            "cached" if cached else "uncached",
            f"{seconds:.1f} s",
            f"{seconds / baseline:.2f}x",
            f"{acc:.4f}",
        ]
        for (epochs, cached), (seconds, acc) in results.items()
    ]
    machine = describe_machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"\nThe default recipe, train(cfg) end to end (random frozen backbone): {machine}")
    print(f"overrides: {' '.join(RECIPE + extra)}\n")
    print(markdown_table(["epochs", "features", "wall time", f"vs {runs[0][0]} epochs uncached", "test acc"], rows))


if __name__ == "__main__":
    main()
