"""TensorBoard's HPARAMS table: the job's overrides and a short named list, no _target_s, paths, URLs or hashes."""

from __future__ import annotations

import pytest
from conftest import compose_config

from vitlit.training import compared_hparams as module
from vitlit.training.compared_hparams import compared_hparams

NAMED_COLUMNS = {
    "model/net/embed_dim",
    "model/net/depth",
    "model/optimizer/lr",
    "data/batch_size",
    "trainer/max_epochs",
    "model/weights",
    "seed",
}


def test_outside_hydra_the_table_is_the_named_list():
    table = compared_hparams(compose_config([]))
    assert set(table) == NAMED_COLUMNS
    assert table["model/net/embed_dim"] == 768 and isinstance(table["model/optimizer/lr"], float)
    assert table["model/weights"] == "torchvision:IMAGENET1K_V1"  # the default recipe's; a library name stays


def test_a_jobs_overrides_join_the_table_but_not_locations_targets_or_hashes(monkeypatch: pytest.MonkeyPatch):
    overrides = [
        "model=vit_micro",
        "model.optimizer.lr=3e-3",
        "model.net.num_heads=4",
        "data.root=/data/pizza_steak_sushi",
        "model.optimizer._target_=torch.optim.SGD",
        "model.weights=/checkpoints/run/last.ckpt",
        "logger.wandb.id=0123abcd",
        "+tag=0a1b2c3d4e",
        "paths.log_dir=logs",
        "data.eval_crop_fraction=[0.875,1.0]",
    ]
    monkeypatch.setattr(module, "task_overrides", lambda: (overrides, "vit_micro"))
    table = compared_hparams(compose_config(overrides[:3]))
    assert set(table) == {"model", *NAMED_COLUMNS, "model/net/num_heads", "data/eval_crop_fraction"}
    assert table["model"] == "vit_micro" and table["model/optimizer/lr"] == pytest.approx(3e-3)
    assert table["model/weights"] == "none"  # the composed config's (micro: none); the override held a path
    assert table["data/eval_crop_fraction"] == "[0.875,1.0]" and table["model/net/num_heads"] == 4


def test_a_weights_file_shows_by_its_name():
    cfg = compose_config(["model=vit_micro", "model.weights=/checkpoints/run/last.ckpt"])
    assert compared_hparams(cfg)["model/weights"] == "last.ckpt"
