"""End-to-end runs of ``train(cfg)`` on a tiny generated image folder with the micro ViT."""

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, compose_config, make_image_folder, train_with_log
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import train as train_script
from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.training import train
from vitlit.training.module import ViTClassifier

EPOCH_LINE = re.compile(
    r"^Epoch: (\d+) \| train_loss: \d+\.\d{4} \| train_acc: [01]\.\d{4} "
    r"\| val_loss: \d+\.\d{4} \| val_acc: [01]\.\d{4}$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 2-epoch run shared by the tests below: (image root, run folder, returned metrics, log text)."""
    tmp = tmp_path_factory.mktemp("training")
    root = make_image_folder(tmp / "images", {"train": {"cat": 6, "dog": 6}, "test": {"cat": 3, "dog": 3}})
    cfg = compose_config([*TINY_RUN, f"data.root={root}"], output_dir=tmp / "run")
    metrics, log_text = train_with_log(cfg)
    return root, tmp / "run", metrics, log_text


def hand_accuracy(checkpoint: Path, root: Path, stage: str) -> float:
    module = ViTClassifier.load_from_checkpoint(checkpoint).eval()  # the checkpoint alone rebuilds the model
    data = ImageFolderDataModule(root, batch_size=5, num_workers=0)
    data.setup()
    correct = total = 0
    with torch.no_grad():
        for images, labels in getattr(data, f"{stage}_dataloader")():
            correct += (module(images).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    return correct / total


def test_each_epoch_logs_one_summary_line(finished_run):
    *_, log_text = finished_run
    assert EPOCH_LINE.findall(log_text) == ["1", "2"]


def test_run_returns_final_and_best_metrics(finished_run):
    _, _, metrics, _ = finished_run
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"):
        assert name in metrics
    assert 0.0 <= metrics["val/acc"] <= metrics["val/acc_best"] <= 1.0


def test_run_saves_the_best_and_the_last_checkpoint(finished_run):
    _, run, _, _ = finished_run
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    assert len([name for name in checkpoints if name.startswith("epoch_")]) == 1


def test_validation_accuracy_is_exact_over_images_not_a_mean_of_batch_means(finished_run):
    root, run, metrics, _ = finished_run  # 6 validation images in batches of 4 and 2
    assert metrics["val/acc"] == pytest.approx(hand_accuracy(run / "checkpoints" / "last.ckpt", root, "val"))


def test_test_accuracy_is_that_of_the_best_checkpoint(finished_run):
    root, run, metrics, _ = finished_run
    best = next((run / "checkpoints").glob("epoch_*.ckpt"))
    assert metrics["test/acc"] == pytest.approx(hand_accuracy(best, root, "test"))


def test_tensorboard_has_curves_learning_rate_and_real_hparams_metrics(finished_run):
    _, run, metrics, _ = finished_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"}
    assert expected <= scalars
    assert any(tag.startswith("lr") for tag in scalars)
    assert "hp_metric" not in scalars
    assert [event.step for event in events.Scalars("val/acc")][:2] == [2, 5]  # one point per epoch (3 steps each)
    assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert {"val/acc_best", "val/loss", "test/acc"} <= metric_tags
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model/optimizer/lr"].number_value == pytest.approx(3e-3)
    assert session.hparams["data/batch_size"].number_value == 4


def test_hydra_main_returns_the_optimized_metric(tiny_config):
    cfg = tiny_config("debug=fast")
    value = train_script.main.__wrapped__(cfg)
    assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_overfit_preset_memorises_a_batch(tiny_config):
    metrics = train(tiny_config("debug=overfit", "trainer.max_epochs=15", "model.optimizer.lr=3e-3", "test=false"))
    assert metrics["train/acc"] == 1.0
    assert metrics["train/loss"] < 0.3


def test_freeze_backbone_changes_only_the_classifier_head(tiny_config, tmp_path):
    cfg = tiny_config("debug=fast", "model.freeze_backbone=true", "model.optimizer.lr=0.1")
    train(cfg)
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building the module
    initial = ViTClassifier(net=dict(cfg.model.net), class_names=["cat", "dog"]).state_dict()
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    changed = {name for name, value in trained.items() if not torch.equal(value, initial[name])}
    assert changed == {"model.classifier.head.weight", "model.classifier.head.bias"}
