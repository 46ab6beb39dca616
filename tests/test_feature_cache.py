"""A frozen backbone without augmentation runs once per image (FrozenFeatureCache), with the uncached run's metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, compose_config, make_image_folder, write_image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlit import ViT, ViTClassifier
from vitlit.models.attention_maps import attention_maps
from vitlit.reporting import dashboards
from vitlit.training import train
from vitlit.training.feature_cache import FeatureCache

FROZEN = ["model.freeze_backbone=true", "data.train_augment=false", "trainer.max_epochs=3", "seed=3"]


def final_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["final"]


@pytest.fixture(scope="module")
def cached_and_uncached(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("images"), {"train": {"cat": 6, "dog": 6}})
    for name, colour in (("cat", (200, 60, 40)), ("dog", (40, 80, 200))):
        for index in range(3):  # test images unlike the training ones (make_image_folder would repeat them)
            write_image(root / "test" / name / f"{index}.jpg", colour, (48, 48), seed=100 + index)
    runs, logs = {}, {}
    for name, extra in (("cached", []), ("uncached", ["callbacks.feature_cache=null"])):
        run = tmp_path_factory.mktemp(name)
        handler, logger = _Records(), logging.getLogger("vitlit")
        level, _ = logger.level, logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            train(compose_config([*TINY_RUN, f"data.root={root}", *FROZEN, *extra], run))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        runs[name], logs[name] = run, "\n".join(handler.messages)
    return runs, logs


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_cached_features_give_the_uncached_runs_metrics(cached_and_uncached):
    runs, _ = cached_and_uncached
    cached, uncached = final_metrics(runs["cached"]), final_metrics(runs["uncached"])
    assert cached.keys() == uncached.keys() and {"train/loss", "val/acc", "test/acc"} <= cached.keys()
    for name in cached:
        assert cached[name] == pytest.approx(uncached[name], rel=1e-5, abs=1e-6), name


def test_the_backbone_runs_once_per_image(cached_and_uncached):
    _, logs = cached_and_uncached
    assert "the frozen backbone runs once per image" in logs["cached"]
    # 12 training and 6 test images (validation and test both use test/), over 3 epochs, validation and test
    assert "feature cache: 18 images, backbone ran 18 times" in logs["cached"]
    assert "feature cache" not in logs["uncached"]


def test_the_cached_runs_checkpoint_holds_the_whole_model(cached_and_uncached):
    runs, _ = cached_and_uncached
    cached = ViTClassifier.load_from_checkpoint(runs["cached"] / "checkpoints" / "last.ckpt").eval()
    uncached = ViTClassifier.load_from_checkpoint(runs["uncached"] / "checkpoints" / "last.ckpt").eval()
    assert cached.feature_cache is None and cached.state_dict().keys() == uncached.state_dict().keys()
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(cached(images), uncached(images), atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["data.train_augment=true"], "data.train_augment=true: random augmentation"),
        (["model.batch_mixing.mixup_alpha=0.8"], "model.batch_mixing mixes training images"),
    ],
)
def test_with_random_inputs_the_normal_path_runs_and_the_log_says_why(tiny_config, caplog, overrides, reason):
    cfg = tiny_config("model.freeze_backbone=true", "data.train_augment=false", "trainer.max_epochs=1", *overrides)
    with caplog.at_level(logging.INFO, logger="vitlit"):
        train(cfg)
    assert f"frozen-backbone features are not cached: {reason}" in caplog.text
    assert "feature cache:" not in caplog.text


def test_the_cache_computes_only_new_images_and_returns_the_backbones_features():
    model = ViT(num_classes=3, image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_dim=64).eval()
    images = torch.randn(4, 3, 32, 32)
    cache = FeatureCache()
    first = cache(images[:3], model.pre_logits)
    again = cache(images[1:], model.pre_logits)  # images 1, 2 seen; image 3 new
    assert (cache.computed, cache.reused, len(cache)) == (4, 2, 4)
    with torch.no_grad():
        assert torch.allclose(first, model.pre_logits(images[:3]), atol=1e-6)
        assert torch.allclose(model.classifier.head(again), model(images[1:]), atol=1e-6)
    assert not again.requires_grad


def test_a_frozen_backbones_attention_maps_are_computed_once_per_stage_and_drawn_every_epoch(
    image_folder: Path, tmp_path: Path, monkeypatch
):
    calls = []

    def counting_attention_maps(*args):
        calls.append(args[2])
        return attention_maps(*args)

    monkeypatch.setattr(dashboards, "attention_maps", counting_attention_maps)
    with_dashboards = [option for option in TINY_RUN if not option.startswith("callbacks.dashboards")]
    overrides = [*with_dashboards, f"data.root={image_folder}", *FROZEN, "callbacks.dashboards.num_images=4"]
    train(compose_config(overrides, tmp_path / "run"))
    assert calls == ["rollout", "rollout"]  # validation once, not in each of the 3 epochs; test once
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("val/attention")) == 3 and len(events.Images("test/attention")) == 1
