"""Shared fixtures: tiny generated image folders and Hydra configs composed for tests."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
# Colours that make the tiny classes learnable, so accuracy is not a constant.
CLASS_COLOURS = {"cat": (200, 60, 40), "dog": (40, 80, 200), "owl": (60, 180, 60)}
# The default dataset's class names, for tests of the default run (identical images per class learn nothing).
CLASS_COLOURS |= {"pizza": (220, 160, 60), "steak": (120, 50, 40), "sushi": (235, 235, 225)}


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> None:
    """A noisy image of one colour, ``size`` as (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 30, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_image_folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """Write ``layout`` = {split: {class: count}} as root/split/class/i.jpg (sizes vary, 40..71 px)."""
    for split, classes in layout.items():
        for name, count in classes.items():
            for index in range(count):
                size = (40 + 7 * index % 32, 48 + 5 * index % 24)
                write_image(root / split / name / f"{index}.jpg", CLASS_COLOURS.get(name, (128, 128, 128)), size, index)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes: 6 train images each, 3 test images each (no val/)."""
    return make_image_folder(tmp_path / "images", {"train": {"cat": 6, "dog": 6}, "test": {"cat": 3, "dog": 3}})


def compose_config(overrides: list[str], output_dir: Path | None = None, config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml with ``overrides``, outputs under ``output_dir`` (Hydra's run dir is not set
    here)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


TINY_RUN = [
    "data=image_folder",
    "model=vit_micro",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "model.optimizer.lr=3e-3",
    "trainer.precision=32-true",  # the same numbers on every CPU (null picks bf16-mixed where bf16 is native)
    "callbacks.progress_bar=null",
    "callbacks.dashboards=null",  # pictures cost seconds per epoch; test_dashboards.py and test_eval_predict.py
    "callbacks.run_report=null",  # turn them back on
]


@pytest.fixture
def tiny_config(image_folder: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Build a config for a fast run of the micro ViT on ``image_folder``: ``tiny_config(*extra_overrides)``."""

    def build(*overrides: str) -> DictConfig:
        return compose_config([*TINY_RUN, f"data.root={image_folder}", *overrides], output_dir=tmp_path / "run")

    return build


@pytest.fixture
def real_data_dir() -> Path:
    """The shared real datasets (``VITLIT_DATA_DIR``; CI sets it to ../shared/data)."""
    value = os.environ.get("VITLIT_DATA_DIR")
    if not value or not (Path(value) / "pizza_steak_sushi" / "train").is_dir():
        pytest.skip("set VITLIT_DATA_DIR to a folder holding pizza_steak_sushi/ to run the integration tests")
    return Path(value).resolve()


def train_with_log(cfg: DictConfig) -> tuple[dict[str, float], str]:
    """Run ``vitlit.training.train(cfg)`` and return its metrics and the messages the vitlit loggers emitted."""
    from vitlit.training import train

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    vitlit_logger = logging.getLogger("vitlit")
    vitlit_logger.addHandler(handler)
    vitlit_logger.setLevel(logging.INFO)
    try:
        metrics = train(cfg)
    finally:
        vitlit_logger.removeHandler(handler)
    return metrics, "\n".join(records)


TORCHVISION_VIT_B_16_FILE = "vit_b_16-c867db91.pth"  # torchvision's ViT_B_16_Weights.IMAGENET1K_V1


def fill_torch_hub_cache(torch_home: Path):
    """Put a perturbed, randomly initialised torchvision ``vit_b_16`` state dict in ``torch_home``'s hub cache
    under the real file name, where torchvision's own download code finds it: (the file, the model in eval mode)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16()
    with torch.no_grad():
        for parameter in model.parameters():  # no zero class token, biases or head
            parameter.add_(torch.randn_like(parameter) * 0.02)
    path = torch_home / "hub" / "checkpoints" / TORCHVISION_VIT_B_16_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path, model.eval()


def checkpoint_eval_transform(checkpoint):
    """The tests' oracle for vitlit's evaluation pre-processing: the checkpoint's saved settings (a path, or what
    ``read_checkpoint`` returned) -> uint8 image (3, H, W) -> normalised float (3, S, S), or (V, 3, S, S) for
    several crop fractions, built from torchvision's transforms v2 directly."""
    import torch
    from torchvision.transforms import v2

    from vitlit.inference.checkpoint import eval_transform_settings, read_checkpoint

    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    settings = eval_transform_settings(checkpoint)
    size, fractions = settings["image_size"], settings.get("eval_crop_fraction", 0.875)
    fractions = [fractions] if isinstance(fractions, (int, float)) else list(fractions)
    mode = v2.InterpolationMode(settings.get("interpolation", "bilinear"))
    normalise = [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(settings.get("mean", (0.485, 0.456, 0.406)), settings.get("std", (0.229, 0.224, 0.225))),
    ]
    views = [
        v2.Compose([v2.Resize(round(size / f), interpolation=mode, antialias=True), v2.CenterCrop(size), *normalise])
        for f in fractions
    ]
    return views[0] if len(views) == 1 else lambda image: torch.stack([view(image) for view in views])
