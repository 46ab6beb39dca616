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


def test_tensorboard_marks_the_swept_columns_so_its_table_shows_them_first(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from vitlit.reporting.loggers import log_tensorboard_hparams

    logger = TensorBoardLogger(tmp_path, name="", version="", default_hp_metric=False)
    columns = {"data/batch_size": 4, "model": "vit_micro", "model/optimizer/lr": 3e-3, "seed": 42}
    log_tensorboard_hparams(logger, columns, {"val/acc_best": 0.5}, step=7, swept={"model/optimizer/lr"})
    logger.finalize("success")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name: info.differs for info in experiment.hparam_infos} == {
        "data/batch_size": False,
        "model": False,
        "model/optimizer/lr": True,
        "seed": False,
    }
    assert [info.name.tag for info in experiment.metric_infos] == ["val/acc_best"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/optimizer/lr"].number_value == pytest.approx(3e-3)
    assert [(event.step, event.value) for event in events.Scalars("val/acc_best")] == [(7, 0.5)]
