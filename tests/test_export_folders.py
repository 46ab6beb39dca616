"""Export as a folder: transformers and timm open it by themselves with vitlit's logits, with a model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_export import save_checkpoint
from test_weights import TINY, images, max_diff, perturbed

from vitlit.export import main
from vitlit.models.library_folders import Preprocessing, image_processor_config
from vitlit.training.checkpoints import checkpoint_eval_transform, read_checkpoint
from vitlit.training.module import ViTClassifier

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

CLASSES = ["pizza", "steak", "sushi"]
FOUR_BLOCKS = {**TINY, "depth": 4}


def checkpoint(tmp_path: Path, net: dict | None = None, **module_options) -> tuple[Path, ViTClassifier]:
    module = perturbed(ViTClassifier(net=dict(net or TINY), class_names=CLASSES, **module_options))
    return save_checkpoint(tmp_path / "last.ckpt", module), module


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@torch.no_grad()
def test_transformers_folder_gives_vitlits_logits(tmp_path: Path):
    path, module = checkpoint(tmp_path)
    folder = main([str(path), str(tmp_path / "my_model"), "--layout", "transformers"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    model = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    assert model.config.id2label == dict(enumerate(CLASSES))
    assert max_diff(model(pixel_values=images(32)).logits, module.model(images(32))) <= 1e-5


@pytest.mark.parametrize("net", [TINY, FOUR_BLOCKS, {**TINY, "pooling": "mean"}], ids=["micro", "four", "mean"])
@torch.no_grad()
def test_timm_folder_builds_and_loads_with_no_other_arguments(tmp_path: Path, net: dict):
    path, module = checkpoint(tmp_path, net)
    folder = main([str(path), str(tmp_path / "my_model"), "--layout", "timm"])
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == CLASSES
    assert model.pretrained_cfg["crop_pct"] == 0.875 and model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert max_diff(model(images(32)), module.model(images(32))) <= 1e-5


def test_timm_layout_with_a_file_target_stays_a_single_safetensors_file(tmp_path: Path):
    path, _ = checkpoint(tmp_path)
    assert main([str(path), str(tmp_path / "vit.safetensors"), "--layout", "timm"]).is_file()


def test_the_image_processor_prepares_images_as_vitlits_evaluation(tmp_path: Path):
    """Shorter side to 37 (32 / 0.875), centre crop 32: BitImageProcessor on the PIL image against vitlit's
    transform on the same uint8 tensor; they differ by resampling rounding only."""
    from PIL import Image

    path, _ = checkpoint(tmp_path)
    pixels = torch.randint(0, 256, (3, 45, 60), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    processor = transformers.BitImageProcessor(**image_processor_config(Preprocessing(32)))
    theirs = processor(Image.fromarray(pixels.permute(1, 2, 0).numpy()), return_tensors="pt")["pixel_values"][0]
    ours = checkpoint_eval_transform(read_checkpoint(path))(pixels)
    assert theirs.shape == ours.shape == (3, 32, 32)
    assert max_diff(theirs, ours) <= 0.05  # one uint8 level is 1 / 255 / 0.225 = 0.017 after normalising


@pytest.mark.parametrize(
    "options, net, named",
    [
        ({}, {**TINY, "pooling": "mean"}, r"model\.net\.pooling=mean to the transformers layout"),
        ({"test_time_flip": True}, TINY, r"model\.test_time_flip=true to the transformers layout"),
    ],
)
def test_transformers_layout_refuses_what_it_cannot_express(tmp_path: Path, options: dict, net: dict, named: str):
    path, _ = checkpoint(tmp_path, net, **options)
    with pytest.raises(SystemExit, match=rf"^Error: cannot export {named}"):
        main([str(path), str(tmp_path / "my_model"), "--layout", "transformers"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # nothing half-written


def test_several_eval_crops_are_refused_naming_the_option(tmp_path: Path):
    path, _ = checkpoint(tmp_path)
    saved = torch.load(path, weights_only=True)
    saved["datamodule_hyper_parameters"] = {"image_size": 32, "eval_crop_fraction": [0.875, 1.0]}
    torch.save(saved, path)
    with pytest.raises(SystemExit, match=r"data\.eval_crop_fraction=\[0\.875, 1\.0\] to the timm layout"):
        main([str(path), str(tmp_path / "my_model"), "--layout", "timm"])


def test_a_folder_with_something_in_it_is_never_written_into(tmp_path: Path):
    path, _ = checkpoint(tmp_path)
    (tmp_path / "my_model").mkdir()
    (tmp_path / "my_model" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([str(path), str(tmp_path / "my_model"), "--layout", "transformers"])
    assert [p.name for p in (tmp_path / "my_model").iterdir()] == ["notes.txt"]


def test_model_card_is_filled_from_the_run_folder(tmp_path: Path):
    run = tmp_path / "2026-12-07_13-35-09"
    path, _ = checkpoint(run / "checkpoints")
    (run / "metrics.json").write_text(json.dumps({"final": {"test/acc": 0.88, "val/acc_best": 0.9, "test/loss": 0.4}}))
    (run / ".hydra").mkdir()
    config = {
        "seed": 7,
        "data": {"batch_size": 16},
        "trainer": {"max_epochs": 2},
        "model": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.001}, "weights": None},
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    card = (main([str(path), str(tmp_path / "my_model"), "--layout", "transformers"]) / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    (result,) = metadata["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "accuracy", "value": 0.88, "name": "accuracy"}]
    for line in ("pizza, steak, sushi", "| Test accuracy | 0.8800 |", "- optimizer: AdamW", "- learning rate: 0.001",
                 "- batch size: 16", "- epochs: 2", "- seed: 7", "- date: 2026-12-07"):  # fmt: skip
        assert line in card
    assert "started from" not in card  # null: no source to name


def test_model_card_without_a_run_folder_invents_nothing(tmp_path: Path):
    path, _ = checkpoint(tmp_path)
    card = (main([str(path), str(tmp_path / "my_model"), "--layout", "timm"]) / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "timm" and "model-index" not in metadata and "metrics" not in metadata
    assert "## Results" not in card and "## Training" not in card and "date" not in card
