"""Checkpoints written by vitlit 06f6cff (before the options of docs/experiments.md were removed) still load,
evaluate, predict, export and resume with the outputs that code gave; a removed option that mattered is an error.

The fixture, its recorded probabilities and the script that made both (run on 06f6cff) are in tests/fixtures/.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, REPO_ROOT, checkpoint_eval_transform, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from vitlit import ViT, ViTClassifier
from vitlit.data.image_folder import load_rgb
from vitlit.eval import evaluate
from vitlit.export import main as export_main
from vitlit.inference.checkpoint import read_checkpoint
from vitlit.inference.compat import LAST_COMMIT, REMOVED, RemovedOptionError, removed_key_message
from vitlit.predict import predict
from vitlit.training import train
from vitlit.training.checkpoints import classifier_from_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / f"vit_tiny_{LAST_COMMIT}.ckpt"
EXPECTED = json.loads((FIXTURES / f"vit_tiny_{LAST_COMMIT}.json").read_text())
_spec = importlib.util.spec_from_file_location("make_fixture", FIXTURES / f"make_vit_tiny_{LAST_COMMIT}.py")
make_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixture)  # its images, image folder and overrides; its main part needs 06f6cff


def probabilities(module: ViTClassifier) -> torch.Tensor:
    transform = checkpoint_eval_transform(read_checkpoint(CHECKPOINT))
    batch = torch.stack([transform(image) for image in make_fixture.images(7, 4)])
    with torch.no_grad():
        return module.eval().predict_step(batch, 0)


def expected(key: str = "probabilities") -> torch.Tensor:
    return torch.tensor(EXPECTED[key])


def test_the_fixture_holds_every_removed_option_at_the_value_that_changed_nothing():
    raw = torch.load(CHECKPOINT, weights_only=True)
    hparams, net = raw["hyper_parameters"], raw["hyper_parameters"]["net"]
    assert {option: hparams[option] for option in REMOVED["model"]} == REMOVED["model"]
    assert {option: net[option] for option in REMOVED["model.net"]} == REMOVED["model.net"]
    assert raw["datamodule_hyper_parameters"]["train_index"] is False
    assert {"embedding_dropout", "mlp_dropout", "mixup_alpha", "cutmix_alpha"} <= {*net, *hparams}


def test_a_06f6cff_checkpoint_predicts_the_probabilities_it_gave_then():
    module = classifier_from_checkpoint(read_checkpoint(CHECKPOINT))
    assert torch.allclose(probabilities(module), expected(), atol=1e-6, rtol=0)
    assert torch.allclose(probabilities(ViTClassifier.load_from_checkpoint(CHECKPOINT)), expected(), atol=1e-6, rtol=0)


def test_the_predict_command_gives_the_same_probabilities(tmp_path: Path):
    files = []
    for index, image in enumerate(make_fixture.images(7, 4)):
        files.append(tmp_path / "photos" / f"{index}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[f"ckpt_path={CHECKPOINT}", f"inputs={tmp_path / 'photos'}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    records = predict(cfg)
    assert [record["path"] for record in records] == [str(path) for path in files]
    found = torch.tensor([[record["probabilities"][name] for name in ("cat", "dog")] for record in records])
    assert torch.allclose(found, expected(), atol=1e-6, rtol=0)


def test_a_06f6cff_checkpoint_evaluates_and_exports(tmp_path: Path):
    make_fixture.write_folder(tmp_path / "images")
    overrides = [f"ckpt_path={CHECKPOINT}", "data=image_folder", f"data.root={tmp_path / 'images'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[*overrides, "callbacks.progress_bar=null", "data.num_workers=0"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    metrics = evaluate(cfg)
    module = classifier_from_checkpoint(read_checkpoint(CHECKPOINT))
    transform = checkpoint_eval_transform(read_checkpoint(CHECKPOINT))
    files = sorted((tmp_path / "images" / "test").rglob("*.png"))
    labels = torch.tensor([("cat", "dog").index(path.parent.name) for path in files])
    with torch.no_grad():
        predicted = module.predict_step(torch.stack([transform(load_rgb(path)) for path in files]), 0).argmax(dim=1)
    assert metrics["test/acc"] == pytest.approx((predicted == labels).float().mean().item())

    # Its mean pooling and sine-cosine positions have no torchvision or timm layout: the export says so.
    with pytest.raises(SystemExit, match=r"model\.net\.pooling=mean"):
        export_main([str(CHECKPOINT), str(tmp_path / "vit.safetensors"), "--layout", "timm"])
    assert not (tmp_path / "vit.safetensors").exists()


def test_a_06f6cff_run_resumes_to_the_weights_that_code_reached(tmp_path: Path):
    root = tmp_path / "images"
    make_fixture.write_folder(root)
    resume_from = tmp_path / "resume_from.ckpt"
    shutil.copy(CHECKPOINT, resume_from)  # resuming reads the file; the fixture stays as it is
    # The preset gained locality guidance, low-resolution steps and a step budget after 06f6cff; that run had none.
    unchanged = ["model.locality_guidance=null", "callbacks.low_resolution=null", "trainer.max_steps=-1"]
    overrides = [*make_fixture.training_overrides(root), *unchanged, "trainer.max_epochs=5", f"ckpt_path={resume_from}"]
    train(compose_config(overrides, tmp_path / "resumed"))
    resumed = classifier_from_checkpoint(read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert torch.allclose(probabilities(resumed), expected("resumed_probabilities"), atol=1e-5, rtol=0)
    assert torch.load(CHECKPOINT, weights_only=True)["epoch"] == 3  # the fixture is untouched


def with_hparams(tmp_path: Path, **changes) -> Path:
    """The fixture with ``hyper_parameters`` entries changed (``net__x`` for net.x, ``data__x`` for the data module)."""
    checkpoint = torch.load(CHECKPOINT, weights_only=True)
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        target = {
            "": checkpoint["hyper_parameters"],
            "net": checkpoint["hyper_parameters"]["net"],
            "data": checkpoint["datamodule_hyper_parameters"],
        }[section]
        target[name] = value
    torch.save(checkpoint, tmp_path / "changed.ckpt")
    return tmp_path / "changed.ckpt"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sam_rho": 0.05}, "model.sam_rho"),
        ({"instance_discrimination_weight": 0.5}, "model.instance_discrimination_weight"),
        ({"net__stem": "conv"}, "model.net.stem"),
        ({"net__stem": "shifted_patch"}, "model.net.stem"),
        ({"net__locality_self_attention": True}, "model.net.locality_self_attention"),
        ({"net__mlp_depthwise_conv": True}, "model.net.mlp_depthwise_conv"),
        ({"data__train_index": True}, "data.train_index"),
        ({"net__embedding_dropout": 0.1}, "model.net.embedding_dropout=0.1, model.net.mlp_dropout=0.0"),
    ],
)
def test_a_removed_option_that_mattered_names_itself_and_the_last_commit_that_had_it(tmp_path, changes, named):
    path = with_hparams(tmp_path, **changes)
    with pytest.raises(RemovedOptionError, match=rf"{named}.*git checkout {LAST_COMMIT}"):
        read_checkpoint(path)
    if "data__train_index" not in changes:  # Lightning builds the module alone from its own hyperparameters
        with pytest.raises(RemovedOptionError, match=named):
            ViTClassifier.load_from_checkpoint(path)


def test_the_merged_dropouts_load_as_one_when_they_were_equal(tmp_path: Path):
    path = with_hparams(tmp_path, net__embedding_dropout=0.1, net__mlp_dropout=0.1)
    module = classifier_from_checkpoint(read_checkpoint(path))
    assert module.hparams.net["dropout"] == 0.1 and isinstance(module.model, ViT)
    assert torch.allclose(probabilities(module), expected(), atol=1e-6, rtol=0)  # dropout is off in eval


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.sam_rho=0.05", rf"model.sam_rho was removed .*git checkout {LAST_COMMIT}"),
        ("+model.net.stem=conv", rf"model.net.stem was removed .*git checkout {LAST_COMMIT}"),
        ("data.train_index=true", "data.train_index was removed"),
        ("model.net.mlp_dropout=0.1", "model.net.mlp_dropout was renamed: use model.net.dropout"),
        ("model.mixup_alpha=0.8", "model.mixup_alpha was renamed: use model.batch_mixing.mixup_alpha"),
        ("model.grad_checkpointing=true", "renamed: use model.net.grad_checkpointing"),
    ],
)
def test_a_removed_or_renamed_key_on_the_command_line_is_named(override: str, message: str):
    assert re.search(message, removed_key_message(["debug=fast", override]))


def test_todays_keys_pass_the_removed_key_check():
    today = ["model.net.dropout=0.1", "model.batch_mixing.mixup_alpha=0.8", "hydra.run.dir=x"]
    assert removed_key_message(today) is None


def test_train_py_stops_on_a_removed_key_with_the_message_alone(tmp_path: Path):
    command = [sys.executable, str(REPO_ROOT / "train.py"), "-m", "model.sam_rho=0,0.05"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.strip() == f"Error: {removed_key_message(['model.sam_rho=0'])}"
    assert not (tmp_path / "outputs").exists()
