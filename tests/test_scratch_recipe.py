"""The from-scratch recipe's pieces (experiment=scratch): erasing, mixing, EMA, validation split, flip TTA."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_config, make_image_folder
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torchvision.transforms import v2

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.image_folder import stratified_split
from vitlit.data.transforms import IMAGENET_MEAN, eval_transform, train_transform
from vitlit.models.vit import ViT
from vitlit.training import train
from vitlit.training.batch_mixing import batch_mixing
from vitlit.training.module import ViTClassifier
from vitlit.training.weight_averaging import ExponentialMovingAverage

# The preset, shortened: one block, a guide trained for two steps, no workers or progress bar.
QUICK = ["model.locality_guidance.steps=2", "model.net.depth=1", "data.num_workers=0", "callbacks.progress_bar=null"]
SMALL_NET = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}


def test_the_patch_embedding_gives_one_token_per_patch_at_any_multiple_of_the_patch_size():
    model = ViT(num_classes=3, **SMALL_NET)
    images = torch.randn(2, 3, 32, 48)  # another size than image_size: the position embedding is resampled
    assert model.patch_embedding(images).shape == (2, 4 * 6, 32)
    assert model(images).shape == (2, 3)


def test_mixup_and_cutmix_change_the_batch_and_give_soft_targets():
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for mixing in (batch_mixing(3, mixup_alpha=0.8), batch_mixing(3, cutmix_alpha=1.0), batch_mixing(3, 0.8, 1.0)):
        mixed, targets = mixing(images, labels)
        assert mixed.shape == images.shape and not torch.equal(mixed, images)
        assert targets.shape == (8, 3)
        assert torch.allclose(targets.sum(dim=1), torch.ones(8))
        assert (targets.max(dim=1).values < 1).any()  # soft, not one-hot
    assert batch_mixing(3) is None
    with pytest.raises(ValueError, match=r"model\.batch_mixing\.mixup_alpha must be >= 0"):
        batch_mixing(3, mixup_alpha=-1.0)


def test_cutmix_pastes_a_box_of_the_rolled_batch():
    torch.manual_seed(1)
    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    mixed, targets = batch_mixing(4, cutmix_alpha=1.0)(images, torch.arange(4))
    # each mixed image holds its own value and its neighbour's, in the proportion of its target
    for i in range(4):
        own = (mixed[i] == i).float().mean()
        assert torch.isclose(own, targets[i, i], atol=1e-6)


def test_test_time_flip_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    module = ViTClassifier(net=SMALL_NET, class_names=["a", "b", "c"], test_time_flip=True).eval()
    torch.nn.init.normal_(module.model.classifier.head.weight)  # the head starts at zero
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (module(images) + module(images.flip(-1))) / 2
        assert torch.allclose(module.evaluation_logits(images), expected, atol=1e-6)
        assert not torch.allclose(module(images), expected, atol=1e-4)
        assert torch.allclose(module.predict_step(images, 0), expected.softmax(-1), atol=1e-6)


def test_random_erasing_fills_one_rectangle_with_the_mean_colour_in_uint8_and_zero_when_normalised():
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean_colour = torch.tensor([round(255 * c) for c in IMAGENET_MEAN], dtype=torch.uint8).view(3, 1, 1)
    common = {"horizontal_flip": 0.0, "random_erasing": 1.0}
    torch.manual_seed(1)
    erased = train_transform(32, normalize=False, **common)(image)
    torch.manual_seed(1)  # the same crop, no erasing
    kept = train_transform(32, normalize=False, **{**common, "random_erasing": 0.0})(image)
    filled = (erased == mean_colour).all(0)
    rows, cols = filled.nonzero().unbind(1)
    box = filled[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert erased.dtype == torch.uint8 and erased.shape == (3, 32, 32)
    assert box.all() and 0.02 * 32 * 32 <= box.numel() <= 0.33 * 32 * 32  # one rectangle in torchvision's area range
    assert torch.equal(erased[:, ~filled], kept[:, ~filled]) and not torch.equal(erased, kept)
    assert (train_transform(32, **common)(image) == 0).all(0).sum() >= 0.02 * 32 * 32
    data = ImageFolderDataModule("unused", image_size=32, random_erasing=0.25)
    assert [step.p for step in data.train_transform.transforms if isinstance(step, v2.RandomErasing)] == [0.25]


def test_stratified_split_is_seeded_disjoint_and_keeps_class_proportions():
    samples = [
        (f"{name}{i}.jpg", label) for label, (name, count) in enumerate([("a", 75), ("b", 50)]) for i in range(count)
    ]
    rest, held_out = stratified_split(samples, 0.2, seed=0)
    assert sorted(rest + held_out) == sorted(samples) and not set(rest) & set(held_out)
    assert [sum(label == c for _, label in held_out) for c in (0, 1)] == [15, 10]
    assert stratified_split(samples, 0.2, seed=0) == (rest, held_out)
    assert stratified_split(samples, 0.2, seed=1)[1] != held_out
    with pytest.raises(ValueError, match=r"data\.val_fraction must be in"):
        stratified_split(samples, 1.0)


def test_val_fraction_validates_on_part_of_train_and_tests_on_test(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 10, "dog": 5}, "test": {"cat": 2, "dog": 2}})
    data = ImageFolderDataModule(root, num_workers=0, image_size=32, val_fraction=0.2)
    data.setup("fit")
    train_paths = {path for path, _ in data.datasets["train"].samples}
    val_paths = {path for path, _ in data.datasets["val"].samples}
    assert len(val_paths) == 3 and len(train_paths) == 12 and not train_paths & val_paths
    assert all("/train/" in path for path in val_paths)
    assert all("/test/" in path for path, _ in data.datasets["test"].samples)


def test_ema_weights_differ_from_live_weights_and_are_what_test_uses(tiny_config, tmp_path: Path):
    mixing = ["model.batch_mixing.mixup_alpha=0.8", "model.batch_mixing.cutmix_alpha=1.0"]
    cfg = tiny_config(*mixing, "model.test_time_flip=true")
    L.seed_everything(0)
    data = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.model, class_names=list(data.class_names), _convert_="all")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/acc", mode="max")
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[ExponentialMovingAverage(decay=0.9), checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    average, live = saved["state_dict"], saved["current_model_state"]
    weight = "model.transformer_encoder.0.mlp_block.fc1.weight"
    assert not torch.allclose(average[weight], live[weight])
    trainer.test(module, datamodule=data, ckpt_path="best")
    assert torch.equal(module.state_dict()[weight], average[weight])


def test_scratch_preset_trains_on_all_of_train_without_validation_and_tests_the_final_weights(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 5, "dog": 5}, "test": {"cat": 2, "dog": 2}})
    quick = ["trainer.max_epochs=1", *QUICK]
    cfg = compose_config(["experiment=scratch", f"data.root={root}", *quick], output_dir=tmp_path / "run")
    assert (cfg.model.net.image_size, cfg.model.net.patch_size) == (224, 16) and cfg.data.image_size == 224
    assert (cfg.model.net.position_embedding, cfg.model.net.pooling) == ("sincos", "mean") and cfg.model.test_time_flip
    assert cfg.data.random_erasing == 0.25 and tuple(cfg.data.train_crop_scale) == (0.35, 1.0)
    assert list(cfg.data.eval_crop_fraction) == [0.75, 0.875] and cfg.data.cache
    preset = compose_config(["experiment=scratch"])
    assert (preset.model.net.depth, preset.model.net.embed_dim, preset.trainer.max_steps) == (4, 192, 5600)
    assert preset.model.relative_localization_weight == 0
    assert preset.model.net.attention_init == "mimetic"
    assert preset.model.locality_guidance == {"weight": 2.5, "steps": 1400, "size": 64}
    assert preset.trainer.max_epochs == -1  # the step budget alone ends the run
    assert cfg.data.val_fraction == 0 and cfg.trainer.limit_val_batches == 0 and cfg.callbacks.model_checkpoint is None
    assert cfg.callbacks.ema._target_ == "vitlit.training.weight_averaging.ExponentialMovingAverage"
    assert cfg.callbacks.low_resolution._target_ == "vitlit.training.low_resolution.LowResolutionTraining"
    assert (cfg.callbacks.low_resolution.size, cfg.callbacks.low_resolution.fraction) == (112, 0.7)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "val/acc" not in metrics
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]


def test_scratch_preset_validates_on_a_part_of_train_when_asked(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 5, "dog": 5}, "test": {"cat": 2, "dog": 2}})
    overrides = ["experiment=scratch", "data.val_fraction=0.2", "trainer.limit_val_batches=1.0", "test=false"]
    quick = ["trainer.max_epochs=1", *QUICK]
    metrics = train(compose_config([*overrides, f"data.root={root}", *quick], output_dir=tmp_path / "run"))
    assert "val/acc" in metrics and "test/acc" not in metrics


def test_scratch_preset_runs_unchanged_on_two_classes_with_train_and_val_only(tmp_path: Path):
    # a user's own folder: no test/, two classes; the preset's low-resolution epochs and initialisation included
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 6, "dog": 6}, "val": {"cat": 3, "dog": 3}})
    quick = ["trainer.max_epochs=3", *QUICK]
    cfg = compose_config(["experiment=scratch", "data=image_folder", f"data.root={root}", *quick], tmp_path / "run")
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "val/acc" not in metrics
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_several_eval_crop_fractions_stack_one_view_per_fraction():
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = eval_transform(32, crop_fraction=[0.5, 1.0])(image)
    assert views.shape == (2, 3, 32, 32)
    assert torch.equal(views[0], eval_transform(32, crop_fraction=0.5)(image))
    assert torch.equal(views[1], eval_transform(32, crop_fraction=1.0)(image))
    assert not torch.allclose(views[0], views[1])


def test_eval_batches_carry_the_views_and_training_batches_do_not(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    data = ImageFolderDataModule(root, batch_size=4, num_workers=0, image_size=32, eval_crop_fraction=[0.5, 0.875])
    data.setup("fit")
    assert data.draft_size == 64  # decoded large enough for the tighter crop's resize
    assert next(iter(data.train_dataloader()))[0].shape == (4, 3, 32, 32)
    assert next(iter(data.val_dataloader()))[0].shape == (4, 2, 3, 32, 32)
    frozen = ImageFolderDataModule(root, image_size=32, eval_crop_fraction=[0.5, 0.875], train_augment=False)
    assert frozen.train_transform(torch.zeros(3, 40, 40, dtype=torch.uint8)).shape == (3, 32, 32)


def test_evaluation_logits_average_the_views_and_their_mirrors():
    torch.manual_seed(0)
    module = ViTClassifier(net=SMALL_NET, class_names=["a", "b", "c"], test_time_flip=True).eval()
    torch.nn.init.normal_(module.model.classifier.head.weight)
    views = torch.randn(2, 3, 3, 32, 32)  # 2 images, 3 views each
    with torch.no_grad():
        expected = torch.stack([module.evaluation_logits(views[:, v]) for v in range(3)]).mean(0)
        assert torch.allclose(module.evaluation_logits(views), expected, atol=1e-6)
        assert not torch.allclose(module.evaluation_logits(views[:, 0]), expected, atol=1e-4)
        assert torch.allclose(module.predict_step(views, 0), expected.softmax(-1), atol=1e-6)
