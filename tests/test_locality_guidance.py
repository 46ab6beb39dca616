"""Locality guidance (model.locality_guidance): the guide CNN, the imitation loss, its training, and that the
guide stays out of everything a trained model is used through."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import make_image_folder

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.inference.checkpoint import network_from_checkpoint, read_checkpoint
from vitlit.inference.compat import upgrade_checkpoint
from vitlit.models.locality_guidance import GuideCNN, LocalityGuidance, block_outputs
from vitlit.models.vit import ViT
from vitlit.training.checkpoints import classifier_from_checkpoint
from vitlit.training.module import ViTClassifier
from vitlit.training.schedule import warmup_cosine

NET = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_dim": 64}
GUIDANCE = {"weight": 2.5, "widths": [4, 8, 16], "size": 16, "steps": 3, "lr": 0.05}


def test_the_guide_returns_each_stage_at_halving_sizes():
    guide = GuideCNN(num_classes=3, widths=(4, 8, 16))
    stages = guide.stages(torch.randn(2, 3, 32, 32))
    assert [tuple(stage.shape) for stage in stages] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]
    assert guide(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_block_outputs_records_the_chosen_blocks_and_unhooks():
    vit = ViT(num_classes=2, **NET)
    with block_outputs(vit.transformer_encoder, [0, 2]) as outputs:
        vit(torch.randn(2, 3, 32, 32))
    assert sorted(outputs) == [0, 2] and outputs[0].shape == (2, 1 + 16, 32)
    vit(torch.randn(1, 3, 32, 32))
    assert outputs[0].shape[0] == 2  # the hooks are gone
    assert all(not block._forward_hooks for block in vit.transformer_encoder)


def test_the_loss_is_zero_when_the_tokens_map_exactly_onto_the_guide():
    guidance = LocalityGuidance(embed_dim=16, depth=2, num_classes=2, widths=(16,), blocks=(-1,), size=16)
    images = torch.randn(2, 3, 16, 16)
    target = guidance.guide.eval().stages(images)[0]  # (2, 16, 8, 8)
    with torch.no_grad():
        guidance.projections[0].weight.copy_(torch.eye(16).view(16, 16, 1, 1))
        guidance.projections[0].bias.zero_()
    tokens = target.flatten(2).transpose(1, 2)  # (2, 64, 16) on an 8x8 grid
    assert guidance.loss(images, [tokens], (8, 8)).item() == pytest.approx(0.0, abs=1e-10)
    assert guidance.loss(images, [tokens + 1.0], (8, 8)).item() == pytest.approx(1.0, rel=1e-5)
    assert guidance.blocks == [1]


def test_blocks_and_stages_must_pair_up():
    with pytest.raises(ValueError, match="2 blocks for 3 guide stages"):
        LocalityGuidance(embed_dim=8, depth=4, num_classes=2, blocks=(0, 1), widths=(4, 8, 16))


def test_the_guide_is_trained_first_then_frozen_and_the_vit_learns_with_it(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 8, "dog": 8}, "val": {"cat": 2, "dog": 2}})
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, image_size=32)
    module = ViTClassifier(
        net=NET,
        class_names=["cat", "dog"],
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3),
        locality_guidance=GUIDANCE,
    )
    guide_before = {k: v.clone() for k, v in module.locality_guidance.guide.state_dict().items()}
    projection_before = module.locality_guidance.projections[0].weight.detach().clone()
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=data)
    guidance = module.locality_guidance
    assert bool(guidance.guide_trained)
    assert not torch.equal(guidance.guide.entry[0].weight, guide_before["entry.0.weight"])  # it was trained
    assert not any(p.requires_grad for p in guidance.guide.parameters())
    assert not torch.equal(guidance.projections[0].weight, projection_before)  # the projections learn with the ViT
    assert torch.isfinite(trainer.callback_metrics["train/locality_guidance"])

    checkpoint_path = Path(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
    checkpoint = read_checkpoint(checkpoint_path)
    assert any(key.startswith("locality_guidance.guide.") for key in checkpoint["state_dict"])
    # What predict, eval and export build: the ViT alone, with the trained weights and no guide.
    network = network_from_checkpoint(checkpoint)
    assert isinstance(network, ViT)
    assert not any("guid" in key or "projection" in key for key in network.state_dict())
    trained = module.model.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in network.state_dict().items())
    # A checkpoint written when the guide's budget was `epochs` (before 43ecd66) still loads whole.
    old = {**checkpoint, "hyper_parameters": dict(checkpoint["hyper_parameters"])}
    old["hyper_parameters"]["locality_guidance"] = {**GUIDANCE, "steps": None, "epochs": 100}
    del old["hyper_parameters"]["locality_guidance"]["steps"]
    loaded = classifier_from_checkpoint(upgrade_checkpoint(old))  # what read_checkpoint does
    assert torch.equal(loaded.locality_guidance.guide.entry[0].weight, guidance.guide.entry[0].weight)

    # Resuming does not train the guide again: it comes back from the checkpoint.
    trained_guide = guidance.guide.entry[0].weight.detach().clone()
    resumed = ViTClassifier(
        net=NET,
        class_names=["cat", "dog"],
        optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3),
        locality_guidance={**GUIDANCE, "steps": 100000},  # would take long if it ran
    )
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(resumed, datamodule=data, ckpt_path=checkpoint_path)
    assert torch.equal(resumed.locality_guidance.guide.entry[0].weight, trained_guide)


def test_patch_dropout_is_refused_with_the_key_named():
    with pytest.raises(ValueError, match="patch_drop_rate=0"):
        ViTClassifier(net={**NET, "patch_drop_rate": 0.5}, class_names=["a", "b"], locality_guidance=GUIDANCE)


def test_fitting_without_a_data_module_is_refused_with_what_to_do(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 4, "dog": 4}, "val": {"cat": 1, "dog": 1}})
    data = ImageFolderDataModule(str(root), batch_size=4, num_workers=0, image_size=32)
    data.setup("fit")
    module = ViTClassifier(net=NET, class_names=["cat", "dog"], optimizer=torch.optim.AdamW, locality_guidance=GUIDANCE)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="pass a LightningDataModule"):
        trainer.fit(module, train_dataloaders=data.train_dataloader())


class CountingLoader:
    """Two fixed batches per pass; counts the batches served."""

    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.served += 1
            yield batch


def test_the_guide_trains_for_its_step_budget_whatever_the_loader_length():
    # 5 steps over a 2-batch loader: passes 1 and 2 whole, the third stops after its first batch
    guidance = LocalityGuidance(32, 3, num_classes=2, **{**GUIDANCE, "steps": 5})
    batches = [(torch.rand(2, 3, 32, 32), torch.tensor([0, 1])) for _ in range(2)]
    loader = CountingLoader(batches)
    accuracy = guidance.fit_guide(loader, normalize=lambda images: images, device=torch.device("cpu"))
    assert loader.served == 5 and bool(guidance.guide_trained)
    assert accuracy in (0.0, 0.5, 1.0)  # over the last pass: one batch of two images
    with pytest.raises(ValueError, match="the training loader gave no batches"):
        LocalityGuidance(32, 3, num_classes=2, **GUIDANCE).fit_guide([], lambda x: x, torch.device("cpu"))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_guide_trains_the_same_whether_epochs_or_steps_end_the_run(tmp_path: Path, num_workers: int):
    # experiment=scratch ends its run by steps; its test results were measured when epochs ended it
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 8, "dog": 8}, "val": {"cat": 2, "dog": 2}})
    guides = []
    for limits in ({"max_epochs": 2}, {"max_epochs": -1, "max_steps": 8}):  # 4 batches per epoch
        L.seed_everything(0)
        data = ImageFolderDataModule(str(root), batch_size=4, num_workers=num_workers, image_size=32)
        module = ViTClassifier(
            net=NET,
            class_names=["cat", "dog"],
            optimizer=torch.optim.AdamW,
            scheduler=warmup_cosine,  # asks the trainer for the run's length, as the preset's does
            locality_guidance={**GUIDANCE, "steps": 6},
        )
        trainer = L.Trainer(
            **limits, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
        )
        trainer.fit(module, datamodule=data)
        assert trainer.global_step == 8
        guides.append(module.locality_guidance.guide.state_dict())
    assert all(torch.equal(guides[0][key], guides[1][key]) for key in guides[0])
