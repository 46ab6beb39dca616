"""Pretrained weights in the Lightning module and the Hydra configs: loading, freezing, layer-wise LR decay,
the feature-extractor and fine-tuning presets."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from hydra.utils import instantiate
from test_weights import TINY, perturbed, tiny_vit

from vitlit.export import export_weights
from vitlit.models.vit import ViT
from vitlit.training import train
from vitlit.training.module import ViTClassifier

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def timm_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A perturbed tiny ViT exported in timm's layout, and the model it came from."""
    source = perturbed(tiny_vit())
    return export_weights(source, tmp_path / "pretrained.safetensors", "timm"), source


def test_module_loads_the_weights_when_built(timm_file):
    path, source = timm_file
    module = ViTClassifier(net=dict(TINY), class_names=CLASSES, weights=str(path))
    for name, value in source.state_dict().items():
        if not name.startswith("classifier.head"):
            assert torch.equal(module.model.state_dict()[name], value), name
    assert not module.model.classifier.head.weight.any()  # a new head unless load_head=true
    with_head = ViTClassifier(net=dict(TINY), class_names=CLASSES, weights=str(path), load_head=True)
    assert torch.equal(with_head.model.classifier.head.weight, source.classifier.head.weight)


def test_frozen_backbone_changes_only_the_head_in_an_optimiser_step(timm_file):
    path, _ = timm_file
    module = ViTClassifier(
        net=dict(TINY),
        class_names=CLASSES,
        weights=str(path),
        freeze_backbone=True,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    module.train()
    before = {name: value.clone() for name, value in module.model.state_dict().items()}
    optimizer = module.configure_optimizers()
    loss = F.cross_entropy(module(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    changed = {name for name, value in module.model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"classifier.head.weight", "classifier.head.bias"}


def test_layer_decay_scales_each_layers_learning_rate():
    module = ViTClassifier(
        net=dict(TINY),  # depth 2: embeddings are layer 0, blocks 1 and 2, the classifier 3
        class_names=CLASSES,
        optimizer=functools.partial(torch.optim.AdamW, lr=1.0, weight_decay=0.05),
        layer_decay=0.5,
    )
    optimizer = module.configure_optimizers()
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == {
        "decay_layer0": 0.125,
        "no_decay_layer0": 0.125,
        "decay_layer1": 0.25,
        "no_decay_layer1": 0.25,
        "decay_layer2": 0.5,
        "no_decay_layer2": 0.5,
        "decay_layer3": 1.0,
        "no_decay_layer3": 1.0,
    }
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert grouped == {id(p) for p in module.parameters()}


def _micro_vit() -> ViT:
    return ViT(num_classes=2, **compose_config(["model=vit_micro"]).model.net).eval()


def test_training_run_with_pretrained_weights_leaves_a_checkpoint_that_needs_no_weights_file(tiny_config, tmp_path):
    source = perturbed(_micro_vit())
    path = export_weights(source, tmp_path / "micro_timm.safetensors", "torchvision")
    cfg = tiny_config(
        f"model.weights={path}", "model.freeze_backbone=true", "data.train_augment=false", "trainer.max_epochs=1"
    )
    metrics = train(cfg)
    assert "val/acc" in metrics
    path.unlink()  # the checkpoint must hold everything
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    module = ViTClassifier.load_from_checkpoint(checkpoint)
    assert module.hparams.weights is None
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.head")}
    for name, value in backbone.items():
        assert torch.equal(module.model.state_dict()[name], value), name


def test_feature_extractor_preset_is_the_reference_recipe(tmp_path: Path):
    cfg = compose_config(["experiment=feature_extractor", f"data.root={tmp_path}"], output_dir=tmp_path)
    assert cfg.model.weights == "torchvision:IMAGENET1K_V1"
    assert cfg.model.freeze_backbone is True
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.model.optimizer.weight_decay == 0.0 and cfg.model.scheduler is None
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 3
    datamodule = instantiate(cfg.data)
    assert datamodule.train_transform is datamodule.eval_transform  # no augmentation
    resize, crop = datamodule.eval_transform.transforms[:2]
    assert resize.size == [256] and crop.size == (224, 224)
    assert resize.interpolation.value == "bilinear"


def test_finetune_preset_uses_adamw_warmup_cosine_layer_decay_drop_path_and_clipping(tmp_path: Path):
    cfg = compose_config(["experiment=finetune", f"data.root={tmp_path}"], output_dir=tmp_path)
    assert cfg.model.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.model.scheduler._target_ == "vitlit.training.schedule.warmup_cosine"
    assert cfg.model.layer_decay == 0.65 and cfg.model.net.drop_path_rate == 0.1
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.model.freeze_backbone is False
