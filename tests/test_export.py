"""Export: vitlit's ViT saved under torchvision's and timm's names loads into those libraries unchanged."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from test_weights import TINY, images, max_diff, perturbed, tiny_timm, tiny_torchvision, tiny_vit

from vitlit import load_pretrained
from vitlit.export import export_state_dict, export_weights, main
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
