"""Low-resolution training steps (vitlit.training.low_resolution.LowResolutionTraining)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import make_image_folder

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.training.low_resolution import LowResolutionTraining
from vitlit.training.module import ViTClassifier

NET = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}


class RecordSizes(L.Callback):
    def __init__(self):
        self.train, self.val = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append((trainer.current_epoch, tuple(batch[0].shape[-2:])))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val.append((trainer.current_epoch, tuple(batch[0].shape[-2:])))


def test_training_batches_are_small_for_the_first_epochs_and_full_size_after(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 2}})
    data = ImageFolderDataModule(root, batch_size=4, num_workers=0, image_size=32)
    module = ViTClassifier(
        net=NET,
        class_names=["cat", "dog"],
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3),
        relative_localization_weight=0.1,  # the auxiliary loss reads the smaller grid too
    )
    sizes = RecordSizes()
    trainer = L.Trainer(
        max_epochs=5,
        callbacks=[LowResolutionTraining(size=16, fraction=0.6), sizes],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=data)
    assert sorted(set(sizes.train)) == [(0, (16, 16)), (1, (16, 16)), (2, (16, 16)), (3, (32, 32)), (4, (32, 32))]
    assert {size for _, size in sizes.val} == {(32, 32)}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_a_step_budget_switches_to_full_size_at_its_fraction_mid_epoch(tmp_path: Path):
    # trainer.max_steps ends the run (two steps per epoch here): the switch follows steps, not epochs
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 4, "dog": 4}, "val": {"cat": 1, "dog": 1}})
    data = ImageFolderDataModule(root, batch_size=4, num_workers=0, image_size=32)
    module = ViTClassifier(net=NET, class_names=["cat", "dog"], optimizer=lambda g: torch.optim.AdamW(g, lr=1e-3))
    sizes = RecordSizes()
    trainer = L.Trainer(
        max_epochs=-1,
        max_steps=5,
        callbacks=[LowResolutionTraining(size=16, fraction=0.6), sizes],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 5
    assert [size for _, size in sizes.train] == [(16, 16)] * 3 + [(32, 32)] * 2


def test_a_run_without_an_end_is_refused_with_the_keys_to_set():
    trainer = type("Trainer", (), {"estimated_stepping_batches": float("inf")})()
    with pytest.raises(ValueError, match=r"set trainer\.max_epochs or trainer\.max_steps"):
        LowResolutionTraining(size=16).on_fit_start(trainer, None)


def test_resizing_keeps_the_batch_and_smooths_it():
    callback = LowResolutionTraining(size=8, fraction=1.0)
    trainer = type("Trainer", (), {"global_step": 0, "estimated_stepping_batches": 10})()
    callback.on_fit_start(trainer, None)
    images = torch.zeros(2, 3, 32, 32)
    images[..., ::2, :] = 1.0  # stripes a plain subsampling would alias to all ones or all zeros
    labels = torch.tensor([0, 1])
    batch = [images, labels]
    callback.on_train_batch_start(trainer, None, batch, 0)
    assert batch[0].shape == (2, 3, 8, 8) and batch[1] is labels
    assert torch.allclose(batch[0], torch.full((2, 3, 8, 8), 0.5), atol=0.05)
    trainer.global_step = 10
    full = [images, labels]
    callback.on_train_batch_start(trainer, None, full, 0)
    assert full[0] is images


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"size": 0}, "size must be a positive integer"), ({"fraction": 1.5}, r"fraction must be in \[0, 1\]")],
)
def test_impossible_settings_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        LowResolutionTraining(**arguments)


def test_a_size_that_is_not_a_multiple_of_the_patch_size_is_named():
    module = ViTClassifier(net=NET, class_names=["a", "b"])
    trainer = type("Trainer", (), {"estimated_stepping_batches": 10})()
    with pytest.raises(ValueError, match=r"size=20 is not a multiple of the patch size 8; pick e\.g\. 16"):
        LowResolutionTraining(size=20).on_fit_start(trainer, module)
