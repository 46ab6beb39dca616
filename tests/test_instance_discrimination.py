"""Instance discrimination (model.instance_discrimination_weight, data.train_index): indices, loss, errors, a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitlit.data import ImageFolderDataModule
from vitlit.module import ViTClassifier
from vitlit.training import train

SMALL_NET = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}


def test_training_batches_carry_each_images_index_and_evaluation_batches_do_not(image_folder: Path):
    for val_fraction, train_size in ((0.0, 12), (0.5, 6)):
        data = ImageFolderDataModule(
            image_folder, batch_size=3, num_workers=0, image_size=32, val_fraction=val_fraction, train_index=True
        )
        data.setup("fit")
        indices = torch.cat([batch[2] for batch in data.train_dataloader()])
        assert len(data.train_dataloader().dataset) == train_size
        assert sorted(indices.tolist()) == list(range(train_size))  # every image once per epoch, each its own id
        assert all(len(batch) == 2 for batch in data.val_dataloader())
        assert all(len(batch) == 2 for batch in data.test_dataloader())
    plain = ImageFolderDataModule(image_folder, batch_size=4, num_workers=0, image_size=32)
    plain.setup("fit")
    assert len(next(iter(plain.train_dataloader()))) == 2


def test_training_loss_adds_the_weighted_instance_loss_and_evaluation_ignores_it():
    torch.manual_seed(0)
    module = ViTClassifier(
        net={**SMALL_NET, "pooling": "mean"},
        class_names=["a", "b", "c"],
        label_smoothing=0.1,
        instance_discrimination_weight=0.5,
        instance_count=10,
    )
    module.log = lambda *args, **kwargs: None
    module.eval()  # no dropout
    assert module.instance_head.out_features == 10 and module.instance_head.weight.abs().sum() == 0
    torch.nn.init.normal_(module.model.classifier.head.weight)
    torch.nn.init.normal_(module.instance_head.weight)
    images, labels, indices = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.tensor([3, 9, 0, 3])

    loss, logits = module._shared_step((images, labels, indices), "train", module.train_acc)
    tokens = module.model.forward_features(images)
    features = module.model.classifier.norm(tokens[:, 1:].mean(dim=1))  # mean pooling, as the scratch preset
    instance = F.cross_entropy(module.instance_head(features), indices)
    classification = F.cross_entropy(module(images), labels, label_smoothing=0.1)
    assert torch.allclose(logits, module(images), atol=1e-6)
    assert instance.item() > 0.1
    assert loss.item() == pytest.approx(classification.item() + 0.5 * instance.item(), abs=1e-5)

    loss.backward()
    assert module.instance_head.weight.grad.abs().sum() > 0
    grouped = {id(parameter) for group in module.parameter_groups() for parameter in group["params"]}
    assert {id(module.instance_head.weight), id(module.instance_head.bias)} <= grouped

    val_loss, _ = module._shared_step((images, labels), "val", module.val_acc)
    assert val_loss.item() == pytest.approx(F.cross_entropy(module(images), labels).item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"set data\.train_index=true"):
        module._shared_step((images, labels), "train", module.train_acc)


def test_bad_instance_settings_name_the_key():
    def build(**arguments) -> ViTClassifier:
        return ViTClassifier(net=SMALL_NET, class_names=["a", "b"], **arguments)

    assert build().instance_head is None
    with pytest.raises(ValueError, match=r"model\.instance_discrimination_weight must be >= 0"):
        build(instance_discrimination_weight=-0.1, instance_count=10)
    with pytest.raises(ValueError, match=r"needs instance_count >= 2 .* got None"):
        build(instance_discrimination_weight=0.5)
    with pytest.raises(ValueError, match=r"cannot be combined with model\.mixup_alpha"):
        build(instance_discrimination_weight=0.5, instance_count=10, mixup_alpha=0.8)


def test_a_run_sizes_the_head_to_the_training_images_and_its_checkpoint_loads(tiny_config, tmp_path: Path):
    cfg = tiny_config("model.instance_discrimination_weight=0.5", "data.train_index=true", "data.val_fraction=0.25")
    metrics = train(cfg)
    assert metrics["train/instance_discrimination"] > 0 and 0.0 <= metrics["test/acc"] <= 1.0
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    loaded = ViTClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    assert loaded.instance_head.out_features == 8  # 12 training images less two per class held out
