"""Export: vitlit's ViT saved under torchvision's and timm's names loads into those libraries unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from test_weights import TINY, images, max_diff, perturbed, tiny_timm, tiny_torchvision, tiny_vit

from vitlit import load_pretrained
from vitlit.export import ServingGraph, export_onnx, export_state_dict, export_weights, main
from vitlit.models.vit import ViT
from vitlit.training.module import ViTClassifier


@pytest.mark.parametrize("layout, build", [("torchvision", tiny_torchvision), ("timm", tiny_timm)])
@torch.no_grad()
def test_export_loads_into_its_library_with_the_same_logits(tmp_path: Path, layout: str, build):
    model = perturbed(tiny_vit())
    path = export_weights(model, tmp_path / f"vit_{layout}.safetensors", layout)
    library_model = build().eval()
    library_model.load_state_dict(load_file(path), strict=True)
    assert max_diff(library_model(images(32)), model(images(32))) <= 1e-5


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_export_then_load_pretrained_is_the_identity(tmp_path: Path, layout: str):
    model = perturbed(tiny_vit())
    path = export_weights(model, tmp_path / f"{layout}.safetensors", layout)
    reloaded = tiny_vit()
    assert load_pretrained(reloaded, path, load_head=True).format == layout
    for (name, original), (_, copy) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(original, copy), name


def test_export_never_overwrites_and_writes_safetensors_only(tmp_path: Path):
    model = tiny_vit()
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        export_weights(model, existing)
    assert existing.read_bytes() == b"precious"
    with pytest.raises(ValueError, match=r"name it \*\.safetensors"):
        export_weights(model, tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="export layout 'hf' is not one of: torchvision, timm"):
        export_state_dict(model, "hf")


def test_command_line_exports_a_lightning_checkpoint(tmp_path: Path):
    module = perturbed(ViTClassifier(net=dict(TINY), class_names=["a", "b", "c", "d", "e"]))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    output = main([str(tmp_path / "last.ckpt"), str(tmp_path / "out" / "vit.safetensors"), "--layout", "timm"])
    timm_model = tiny_timm().eval()
    timm_model.load_state_dict(load_file(output), strict=True)
    with torch.no_grad():
        assert max_diff(timm_model(images(32)), module.model(images(32))) <= 1e-5
    with pytest.raises(SystemExit):
        main([str(tmp_path / "last.ckpt"), str(output)])  # exists: refused before anything is read


# --- refusals: what a layout cannot hold ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_layouts_refuse_mean_pooling_naming_the_option(tmp_path: Path, layout: str):
    model = ViT(num_classes=5, pooling="mean", **TINY)
    with pytest.raises(ValueError, match=rf"model\.net\.pooling=mean to the {layout} layout") as error:
        export_weights(model, tmp_path / "vit.safetensors", layout)
    if layout == "timm":
        assert 'timm.create_model(..., global_pool="avg")' in str(error.value)
    assert "--format onnx" in str(error.value)
    assert not (tmp_path / "vit.safetensors").exists()


def test_the_command_line_refusal_is_one_error_line(tmp_path: Path):
    save_checkpoint(tmp_path / "mean.ckpt", ViTClassifier(net={**TINY, "pooling": "mean"}, class_names=list("abcde")))
    with pytest.raises(SystemExit, match=r"^Error: cannot export model\.net\.pooling=mean to the timm layout"):
        main([str(tmp_path / "mean.ckpt"), str(tmp_path / "vit.safetensors")])


@pytest.mark.parametrize("layout, build", [("torchvision", tiny_torchvision), ("timm", tiny_timm)])
@torch.no_grad()
def test_sine_cosine_positions_export_as_values(tmp_path: Path, layout: str, build):
    model = perturbed(ViT(num_classes=5, position_embedding="sincos", **TINY))
    library_model = build().eval()
    library_model.load_state_dict(load_file(export_weights(model, tmp_path / "vit.safetensors", layout)), strict=True)
    assert max_diff(library_model(images(32)), model(images(32))) <= 1e-5


# --- ONNX: the evaluation graph with the normalisation built in ----------------------------------------------------


def save_checkpoint(path: Path, module: ViTClassifier) -> Path:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def uint8_images(count: int, size: int = 32) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(count), dtype=torch.uint8
    )


@pytest.fixture
def onnxruntime():
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def test_onnx_export_matches_the_checkpoint_logits_for_any_batch_size(tmp_path: Path, onnxruntime):
    module = perturbed(ViTClassifier(net=dict(TINY), class_names=["a", "b", "c", "d", "e"]))
    output = main([str(save_checkpoint(tmp_path / "last.ckpt", module)), str(tmp_path / "vit.onnx")])  # by suffix
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (images_input,) = session.get_inputs()
    assert images_input.name == "images" and images_input.type == "tensor(uint8)"
    assert isinstance(images_input.shape[0], str) and images_input.shape[1:] == [3, 32, 32]  # dynamic batch
    for count in (1, 3):
        pixels = uint8_images(count)
        (logits,) = session.run(["logits"], {"images": pixels.numpy()})
        with torch.no_grad():
            assert max_diff(torch.from_numpy(logits), module.evaluation_logits(pixels)) <= 1e-4
    metadata = {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}
    assert metadata["class_names"] == ["a", "b", "c", "d", "e"] and metadata["image_size"] == 32
    assert metadata["resize"] == 37 and metadata["mean"] == pytest.approx([0.485, 0.456, 0.406])  # 32 / 0.875


def test_onnx_float_input_includes_test_time_flip(tmp_path: Path, onnxruntime):
    module = perturbed(ViTClassifier(net=dict(TINY), class_names=["a", "b", "c"], test_time_flip=True))
    checkpoint = save_checkpoint(tmp_path / "last.ckpt", module)
    output = main([str(checkpoint), str(tmp_path / "vit.onnx"), "--format", "onnx", "--float-input"])
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    for count in (1, 3):
        pixels = uint8_images(count)
        (logits,) = session.run(["logits"], {"images": (pixels.float() / 255).numpy()})
        with torch.no_grad():
            reference = module.evaluation_logits(pixels)
            assert max_diff(reference, (module(pixels) + module(pixels.flip(-1))) / 2) == 0  # the flip is in
            assert max_diff(torch.from_numpy(logits), reference) <= 1e-4


def test_onnx_command_line_refuses_mixed_options(tmp_path: Path, capsys):
    checkpoint = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit):
        main([str(checkpoint), str(tmp_path / "vit.onnx"), "--layout", "timm"])
    assert "--layout names safetensors weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(checkpoint), str(tmp_path / "vit.safetensors"), "--float-input"])
    assert "--float-input is for --format onnx" in capsys.readouterr().err
    model = ServingGraph(tiny_vit(), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"name it \*\.onnx"):
        export_onnx(model, tmp_path / "vit.safetensors")
