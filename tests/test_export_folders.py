"""Export as a folder: transformers and timm open it by themselves with vitlit's logits, with a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import checkpoint_eval_transform
from test_export import save_checkpoint
from test_weights import TINY, images, max_diff, perturbed
from test_weights_hub import cache_snapshot, offline_hub_cache  # noqa: F401 (a fixture)

from vitlit.export import main
from vitlit.inference.checkpoint import read_checkpoint
from vitlit.models.library_folders import Preprocessing, image_processor_config
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


def test_transformers_folder_holds_the_4x_names_both_major_versions_read(tmp_path: Path):
    """transformers 5.x converts 4.x names on load (as for the Hub's own ViT files); 4.x reads nothing else."""
    from safetensors.torch import load_file

    path, _ = checkpoint(tmp_path, FOUR_BLOCKS)
    folder = main([str(path), str(tmp_path / "my_model"), "--layout", "transformers"])
    keys = set(load_file(folder / "model.safetensors"))
    assert {"classifier.weight", "vit.layernorm.weight", "vit.embeddings.cls_token"} <= keys
    assert {f"vit.encoder.layer.3.attention.attention.{name}.weight" for name in ("query", "key", "value")} <= keys
    assert len(keys) == 4 + 2 + 16 * 4 + 2  # embeddings (conv, class token, positions), final norm, blocks, head
    assert json.loads((folder / "preprocessor_config.json").read_text())["image_processor_type"] == "BitImageProcessor"


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


@pytest.mark.parametrize("config_file", ["config.yaml", ".hydra/config.yaml"])  # train.py's resolved copy, Hydra's
def test_model_card_is_filled_from_the_run_folder(tmp_path: Path, config_file: str):
    run = tmp_path / "2026-12-07_13-35-09"
    path, _ = checkpoint(run / "checkpoints")
    (run / "metrics.json").write_text(json.dumps({"final": {"test/acc": 0.88, "val/acc_best": 0.9, "test/loss": 0.4}}))
    (run / config_file).parent.mkdir(exist_ok=True)
    config = {
        "seed": 7,
        "data": {"batch_size": 16},
        "trainer": {"max_epochs": 2},
        "model": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.001}, "weights": None},
    }
    (run / config_file).write_text(yaml.safe_dump(config))
    card = (main([str(path), str(tmp_path / "my_model"), "--layout", "transformers"]) / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    (result,) = metadata["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "accuracy", "value": 0.88, "name": "accuracy"}]
    for line in ("pizza, steak, sushi", "| Test accuracy | 0.8800 |", "- optimizer: AdamW", "- learning rate: 0.001",
                 "- batch size: 16", "- epochs: 2", "- seed: 7", "- date: 2026-12-07"):  # fmt: skip
        assert line in card
    assert "- started from: random initialisation (model.weights=null)" in card
    assert "weight decay" not in card and "label smoothing" not in card  # not in the config: left out
    assert "- steps" not in card


def test_model_card_of_a_step_budget_names_the_steps_not_unlimited_epochs(tmp_path: Path):
    run = tmp_path / "2026-12-08_02-30-00"
    path, _ = checkpoint(run / "checkpoints")
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": -1, "max_steps": 5600}}))
    card = (main([str(path), str(tmp_path / "my_model"), "--layout", "timm"]) / "README.md").read_text()
    assert "- steps: 5600" in card and "- epochs" not in card


def test_model_card_without_a_run_folder_invents_nothing(tmp_path: Path):
    path, _ = checkpoint(tmp_path)
    card = (main([str(path), str(tmp_path / "my_model"), "--layout", "timm"]) / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "timm" and "model-index" not in metadata and "metrics" not in metadata
    assert "## Results" not in card and "## Training" not in card and "date" not in card


# --- read back from the Hub: model.weights=hf-hub:org/name ---------------------------------------------------------


@pytest.fixture
def hub_model(tmp_path: Path, request) -> tuple[str, ViTClassifier]:
    """An exported folder (layout: the test's parameter) as the Hub's cache holds ``org/name`` after a download."""
    path, module = checkpoint(tmp_path)
    folder = main([str(path), str(tmp_path / "my_model"), "--layout", request.param])
    snapshot = cache_snapshot(request.getfixturevalue("offline_hub_cache"), "org/name")
    for file in folder.iterdir():
        shutil.copy(file, snapshot / file.name)
    return "hf-hub:org/name", module


def reloaded(weights: str, class_names: list[str]) -> ViTClassifier:
    return ViTClassifier(net=dict(TINY), class_names=class_names, weights=weights, load_head=True).eval()


@pytest.mark.parametrize("hub_model", ["transformers", "timm"], indirect=True)
@torch.no_grad()
def test_hub_folder_loads_back_with_its_head_for_the_same_classes(hub_model):
    weights, original = hub_model
    assert max_diff(reloaded(weights, CLASSES).model(images(32)), original.model(images(32))) <= 1e-5
    reordered = reloaded(weights, ["sushi", "pizza", "steak"]).model(images(32))
    assert max_diff(reordered, original.model(images(32))[:, [2, 0, 1]]) <= 1e-5


@pytest.mark.parametrize("hub_model", ["transformers", "timm"], indirect=True)
@pytest.mark.parametrize("classes", [["cat", "dog", "fox"], ["cat", "dog"]], ids=["other names", "other count"])
@torch.no_grad()
def test_hub_folder_for_other_classes_gives_a_backbone_with_a_new_head(hub_model, classes: list[str]):
    weights, original = hub_model
    module = reloaded(weights, classes)
    assert torch.equal(module.model.classifier.head.weight, torch.zeros(len(classes), TINY["embed_dim"]))
    assert max_diff(module.model.pre_logits(images(32)), original.model.pre_logits(images(32))) <= 1e-5


# --- the real photos: transformers' pipeline against vitlit.predict --------------------------------------------------


@pytest.mark.integration
def test_pipeline_picks_vitlits_class_on_the_real_test_photos(real_data_dir: Path, tmp_path: Path):
    """A class-token micro ViT trained for 2 epochs on pizza_steak_sushi, exported: the pipeline's top-1 equals
    vitlit.predict's on the 75 test photos, except near-ties (vitlit's top-2 probability margin < 1e-3)."""
    from conftest import TINY_RUN, compose_config
    from test_eval_predict import command_config

    from vitlit.predict import predict
    from vitlit.training import train

    data = real_data_dir / "pizza_steak_sushi"
    overrides = [
        *(o for o in TINY_RUN if not o.startswith("data.batch_size")),
        f"data.root={data}",
        "data.batch_size=32",
    ]
    train(compose_config([*overrides, "test=false"], tmp_path / "run"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    folder = main([str(checkpoint), str(tmp_path / "my_model"), "--layout", "transformers"])

    photos = sorted((data / "test").rglob("*.jpg"))
    assert len(photos) == 75
    records = predict(
        command_config("predict", [f"ckpt_path={checkpoint}", f"inputs={data / 'test'}", "annotate=false"], tmp_path)
    )
    ours = {Path(record["path"]): record["predictions"] for record in records}
    classify = transformers.pipeline("image-classification", model=str(folder), device="cpu")
    theirs = classify([str(path) for path in photos], top_k=2, batch_size=16)
    near_ties, different, worst = [], [], 0.0
    for path, their_top in zip(photos, theirs, strict=True):
        first, second = ours[path][:2]
        their_probability = {entry["label"]: entry["score"] for entry in their_top}.get(first["class"], 0.0)
        worst = max(worst, abs(their_probability - first["probability"]))
        if first["probability"] - second["probability"] < 1e-3:
            near_ties.append(path.name)
        elif their_top[0]["label"] != first["class"]:
            different.append((path.name, first, their_top))
    print(f"near-ties (not compared): {near_ties}; largest top-1 probability difference {worst:.2e}")
    assert not different
    assert len(near_ties) < 10  # a model that ties everywhere would prove nothing
