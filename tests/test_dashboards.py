"""TensorBoard pictures and the run report of a tiny run, and the pure functions behind them."""

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, compose_config, make_image_folder, train_with_log
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from vitlit.data.transforms import eval_transform
from vitlit.models.attention_maps import _attention_weights, attention_maps, class_token_map
from vitlit.models.vit import ViT
from vitlit.reporting.dashboards import Dashboards
from vitlit.reporting.figures import display_images
from vitlit.reporting.stage_results import sample_positions

CLASSES = ("cat", "dog", "owl")
NUM_IMAGES = 6  # per picture: a 3 x 2 grid
WITH_PICTURES = [
    *(option for option in TINY_RUN if not option.startswith(("callbacks.dashboards", "callbacks.run_report"))),
    f"callbacks.dashboards.num_images={NUM_IMAGES}",
    f"callbacks.run_report.num_images={NUM_IMAGES}",
]


@pytest.fixture(scope="module")
def pictured_run(tmp_path_factory):
    """One 2-epoch run with dashboards and report: (run folder, returned metrics, event accumulator, log text)."""
    tmp = tmp_path_factory.mktemp("pictures")
    root = make_image_folder(tmp / "images", {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 3)})
    cfg = compose_config([*WITH_PICTURES, f"data.root={root}"], output_dir=tmp / "run")
    metrics, log_text = train_with_log(cfg)
    events = EventAccumulator(str(tmp / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return tmp / "run", metrics, events, log_text


def png_size(data: bytes | Path) -> tuple[int, int]:
    image = Image.open(data if isinstance(data, Path) else io.BytesIO(data))
    image.load()  # decodes every pixel: a truncated file fails here
    return image.size


# Figure sizes are fixed in inches at 100 dpi: confusion matrix 7.2 x 6 for up to 5 classes; grids 3 x 3.45 per image,
# plus 0.4 for the attention grid's heading.
CONFUSION_SIZE = (720, 600)
GRID_SIZE = (3 * 300, 2 * 345)
ATTENTION_SIZE = (3 * 300, 2 * 345 + 40)
CURVES_SIZE = (1200, 450)


def test_tensorboard_shows_confusion_matrix_predictions_and_attention_every_validation_epoch(pictured_run):
    _, _, events, _ = pictured_run
    images = set(events.Tags()["images"])
    for stage in ("val", "test"):
        assert {f"{stage}/confusion_matrix", f"{stage}/predictions", f"{stage}/attention"} <= images
    assert [event.step for event in events.Images("val/predictions")] == [3, 6]  # one per epoch, 3 steps each
    assert len(events.Images("test/confusion_matrix")) == 1
    sizes = {tag: png_size(events.Images(tag)[-1].encoded_image_string) for tag in images}
    assert sizes["val/confusion_matrix"] == sizes["test/confusion_matrix"] == CONFUSION_SIZE
    assert sizes["val/predictions"] == sizes["test/predictions"] == GRID_SIZE
    assert sizes["val/attention"] == sizes["test/attention"] == ATTENTION_SIZE


def test_tensorboard_scalars_are_sane_and_per_class_scores_match_the_confusion_matrix(pictured_run):
    run, _, events, _ = pictured_run
    scalars = set(events.Tags()["scalars"])
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"):
        values = [event.value for event in events.Scalars(name)]
        assert values and all(math.isfinite(v) for v in values)
        assert all(0.0 <= v <= 1.0 for v in values) if name.endswith(("acc", "acc_best")) else min(values) > 0
    assert any(tag.startswith("lr") for tag in scalars)

    report = json.loads((run / "metrics.json").read_text())
    counts = np.array(report["confusion_matrix"]["counts"])
    for index, name in enumerate(CLASSES):
        recall = counts[index, index] / counts[index].sum()
        precision = counts[index, index] / counts[:, index].sum() if counts[:, index].sum() else 0.0
        assert events.Scalars(f"test_per_class/recall/{name}")[-1].value == pytest.approx(recall)
        assert events.Scalars(f"test_per_class/precision/{name}")[-1].value == pytest.approx(precision)
        assert f"test_per_class/f1/{name}" in scalars and f"val_per_class/f1/{name}" in scalars


def test_hparams_tab_holds_the_final_metrics(pictured_run):
    _, _, events, _ = pictured_run
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"val/acc_best", "val/loss", "test/acc"} <= {info.name.tag for info in experiment.metric_infos}


def test_run_folder_holds_the_report_pictures(pictured_run):
    run, _, _, _ = pictured_run
    assert png_size(run / "curves.png") == CURVES_SIZE
    assert png_size(run / "confusion_matrix.png") == CONFUSION_SIZE
    assert png_size(run / "predictions.png") == GRID_SIZE


def test_metrics_json_holds_final_and_best_metrics_epochs_time_device_and_precision(pictured_run):
    run, metrics, _, _ = pictured_run
    report = json.loads((run / "metrics.json").read_text())
    assert report["final"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert report["final"]["val/acc_best"] == pytest.approx(metrics["val/acc_best"])
    assert report["epochs"] == 2 and [row["epoch"] for row in report["history"]] == [1, 2]
    assert report["best"]["val/acc"] == pytest.approx(metrics["val/acc_best"])
    assert report["best_checkpoint"].endswith(f"epoch_{report['best']['epoch'] - 1:03d}.ckpt")
    assert report["device"] == "cpu" and report["precision"] == "32-true" and report["wall_time_s"] > 0
    assert report["stage"] == "test"
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.sum() == 9 and np.trace(counts) / 9 == pytest.approx(metrics["test/acc"])
    assert {name: scores["support"] for name, scores in report["per_class"].items()} == dict.fromkeys(CLASSES, 3)


def test_a_results_table_is_logged_at_the_end(pictured_run):
    _, metrics, _, log_text = pictured_run
    row = rf"│ test +│ {metrics['test/loss']:.4f} │ {metrics['test/acc']:.4f} │"
    assert "Results" in log_text and re.search(row, log_text)
    assert "Per class (test)" in log_text


def test_recomputed_attention_weights_reproduce_the_attention_block_output():
    torch.manual_seed(0)
    model = ViT(num_classes=3, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64).eval()
    block = model.transformer_encoder[0].msa_block
    tokens = torch.randn(2, 17, 32)
    weights = _attention_weights(block, tokens)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 4, 17), atol=1e-6)
    _, _, v = block.qkv(block.layer_norm(tokens)).view(2, 17, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
    by_hand = block.proj((weights @ v).transpose(1, 2).reshape(2, 17, 32))
    assert torch.allclose(by_hand, block(tokens), atol=1e-5)

    _, per_layer, maps = attention_maps(model, torch.randn(2, 3, 32, 32))
    assert len(per_layer) == 2 and maps.shape == (2, 4, 4)
    assert maps.amin() == 0.0 and maps.amax() == 1.0


def test_attention_maps_return_the_model_logits_and_leave_no_hooks_behind():
    torch.manual_seed(0)
    model = ViT(num_classes=3, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64).eval()
    images = torch.randn(2, 3, 32, 32)
    logits, _, _ = attention_maps(model, images, "last_layer")
    assert torch.allclose(logits, model(images), atol=1e-6)
    assert all(not block.msa_block._forward_hooks for block in model.transformer_encoder)


def _peaked(length: int, target: int) -> torch.Tensor:
    """Attention (1, 1 head, N, N): every token attends to itself, the class token mostly to ``target``."""
    weights = torch.eye(length)
    weights[0] = 0.02 / (length - 1)
    weights[0, target] = 0.98
    return weights[None, None]


def test_class_token_maps_peak_where_the_class_token_looks():
    grid, length = (2, 3), 7  # 6 patches + the class token
    last = class_token_map([_peaked(length, 1), _peaked(length, 5)], grid, "last_layer")
    assert last.shape == (1, 2, 3) and last[0].flatten().argmax() == 4  # token 5 is patch 4
    # Rollout carries the first layer's focus through a second layer that attends only to itself.
    rolled = class_token_map([_peaked(length, 2), torch.eye(length)[None, None]], grid, "rollout")
    assert rolled[0].flatten().argmax() == 1
    with pytest.raises(ValueError, match="attention method 'gradcam' is not one of"):
        attention_maps(ViT(num_classes=2, image_size=32, patch_size=16, depth=1), torch.zeros(1, 3, 32, 32), "gradcam")


def test_display_images_undo_the_eval_normalisation():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    normalised = eval_transform(32, crop_fraction=1.0)(image)
    shown = display_images(normalised[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert shown.shape == (1, 32, 32, 3) and shown.dtype == np.uint8
    assert np.abs(shown[0].astype(int) - image.permute(1, 2, 0).numpy().astype(int)).max() <= 1


def test_the_fixed_sample_spreads_over_the_stage():
    assert sample_positions(9, 16) == list(range(9))
    assert sample_positions(75, 4) == [0, 25, 49, 74]
    assert sample_positions(0, 4) == []


def test_bad_dashboard_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"callbacks\.dashboards\.attention='heat' is not one of"):
        Dashboards(attention="heat")
    with pytest.raises(ValueError, match=r"every_n_epochs must be at least 1"):
        Dashboards(every_n_epochs=0)
