"""``python train.py`` as it ships: torchvision's ImageNet ViT-B/16 from torch's cache, frozen, a new head.

The cache is a temporary ``TORCH_HOME`` holding a perturbed, randomly initialised torchvision ``vit_b_16``
state dict under the real file name: torchvision's own download code finds it there. Without it and
without a network the run stops with one message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TORCHVISION_VIT_B_16_FILE, fill_torch_hub_cache, make_image_folder

from vitlit import ViT, ViTClassifier
from vitlit.models.weights import load_pretrained

WEIGHTS_FILE = TORCHVISION_VIT_B_16_FILE


def run_train(*overrides: str, torch_home: Path, data_dir: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TORCH_HOME": str(torch_home), "VITLIT_DATA_DIR": str(data_dir), **env}
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    torch_home = tmp_path_factory.mktemp("torch_home")
    weights, torchvision_model = fill_torch_hub_cache(torch_home)
    data_dir = tmp_path_factory.mktemp("data")
    classes = {"pizza": 3, "steak": 3, "sushi": 3}
    make_image_folder(data_dir / "pizza_steak_sushi", {"train": classes, "test": {name: 1 for name in classes}})
    cwd = tmp_path_factory.mktemp("cwd")
    result = run_train(torch_home=torch_home, data_dir=data_dir, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run] = (cwd / "outputs" / "train" / "runs").iterdir()
    return run, torchvision_model, result.stdout + result.stderr, weights


def test_the_default_run_loads_torchvisions_weights_from_torchs_cache_and_trains_only_the_head(default_run):
    run, _, output, weights = default_run
    assert "torchvision weights ViT_B_16_Weights.IMAGENET1K_V1" in output
    assert "the frozen backbone runs once per image" in output
    assert "Epoch: 3 |" in output and "Epoch: 4 |" not in output
    assert "Epoch 2/2 " in output and "Testing ━" in output  # the progress bars (0-based epochs)
    module = ViTClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    assert module.hparams.freeze_backbone is True and module.hparams.net["embed_dim"] == 768
    untouched = ViT(num_classes=3)
    load_pretrained(untouched, weights)  # the same file, read directly: a zero head
    trained, loaded = module.model.state_dict(), untouched.state_dict()
    changed = {name for name in trained if not torch.equal(trained[name], loaded[name])}
    assert changed == {"classifier.head.weight", "classifier.head.bias"}  # the head trained; nothing else moved


def test_the_loaded_backbone_gives_torchvisions_features(default_run):
    run, torchvision_model, _, _ = default_run
    module = ViTClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    torchvision_model.heads = torch.nn.Identity()  # torchvision's class-token features, after the final norm
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (module.model.pre_logits(images) - torchvision_model(images)).abs().max().item() <= 1e-5


def test_offline_without_the_cached_file_the_default_run_stops_with_one_message(tmp_path: Path):
    data_dir = tmp_path / "data"
    make_image_folder(data_dir / "pizza_steak_sushi", {"train": {"pizza": 1, "steak": 1}, "test": {"pizza": 1}})
    no_network = {name: "http://127.0.0.1:9" for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}
    no_network.update(NO_PROXY="", no_proxy="")
    result = run_train(torch_home=tmp_path / "torch_home", data_dir=data_dir, cwd=tmp_path, **no_network)
    assert result.returncode == 1, result.stderr[-3000:]
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / WEIGHTS_FILE
    message = result.stderr
    for part in (
        f"{WEIGHTS_FILE} is not in torch's cache ({cached})",
        f"https://download.pytorch.org/models/{WEIGHTS_FILE}",
        f"model.weights=/path/to/{WEIGHTS_FILE}",
        "model.weights=null",
    ):
        assert part in message, message
    assert "Traceback" not in message and "precision:" not in result.stdout + message  # before the trainer
