"""Sharpness-aware minimisation: the update it takes, its errors, its shared state, and a Lightning run with it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitlit.module import ViTClassifier
from vitlit.sharpness_aware import SharpnessAwareMinimization
from vitlit.training import train


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


def _closure(model, optimizer, inputs, labels, calls: list[float]):
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        calls.append(loss.item())
        return loss

    return closure


def test_sam_takes_the_base_step_with_the_gradient_at_the_worst_nearby_weights():
    model, inputs, labels = _problem()
    reference = copy.deepcopy(model)
    rho = 0.5
    sam = SharpnessAwareMinimization(torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.05), rho=rho)
    calls: list[float] = []
    loss = sam.step(_closure(model, sam, inputs, labels, calls))

    # By hand: gradient g at w, gradient at w + rho * g / |g|, AdamW step from w with the latter.
    base = torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.05)
    F.cross_entropy(reference(inputs), labels).backward()
    parameters = list(reference.parameters())
    gradients = [p.grad.clone() for p in parameters]
    norm = torch.sqrt(sum((g**2).sum() for g in gradients))
    with torch.no_grad():
        for p, g in zip(parameters, gradients, strict=True):
            p.add_(rho * g / norm)
    base.zero_grad()
    perturbed_loss = F.cross_entropy(reference(inputs), labels)
    perturbed_loss.backward()
    with torch.no_grad():
        for p, g in zip(parameters, gradients, strict=True):
            p.sub_(rho * g / norm)
    base.step()

    assert calls == pytest.approx([loss.item(), perturbed_loss.item()], abs=1e-6)
    assert calls[1] > calls[0]  # the perturbation climbs the loss
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_sam_needs_a_closure_and_a_positive_radius():
    model, _, _ = _problem()
    with pytest.raises(ValueError, match=r"model\.sam_rho must be > 0"):
        SharpnessAwareMinimization(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.0)
    sam = SharpnessAwareMinimization(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="needs a closure"):
        sam.step()


def test_sam_shares_its_groups_and_state_with_the_base_optimizer_across_schedulers_and_checkpoints():
    model, inputs, labels = _problem()
    base = torch.optim.AdamW(model.parameters(), lr=0.1)
    sam = SharpnessAwareMinimization(base, rho=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(sam, lambda step: 0.5 ** (step + 1))
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    sam.step(_closure(model, sam, inputs, labels, []))
    scheduler.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.025)
    saved = sam.state_dict()
    assert saved["state"][0]["step"] == 1  # the base stepped once, not once per pass

    fresh_model, _, _ = _problem()
    fresh_base = torch.optim.AdamW(fresh_model.parameters(), lr=0.1)
    fresh = SharpnessAwareMinimization(fresh_base, rho=0.05)
    fresh.load_state_dict(saved)
    assert fresh.state is fresh_base.state and fresh.param_groups is fresh_base.param_groups
    assert fresh_base.param_groups[0]["lr"] == pytest.approx(0.025)
    restored, original = fresh_base.state[fresh_model[0].weight], base.state[model[0].weight]
    torch.testing.assert_close(restored["exp_avg"], original["exp_avg"])


def test_a_run_with_sam_steps_the_base_optimizer_once_per_batch(tiny_config, tmp_path: Path):
    metrics = train(tiny_config("model.sam_rho=0.05", "trainer.max_epochs=2"))
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and 0.0 <= metrics["test/acc"] <= 1.0
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["optimizer_states"][0]["state"][0]["step"] == saved["global_step"] == 2 * 3  # 12 images, batch 4


def test_sam_refuses_gradient_accumulation(tiny_config):
    with pytest.raises(ValueError, match=r"needs trainer\.accumulate_grad_batches=1"):
        train(tiny_config("model.sam_rho=0.05", "trainer.accumulate_grad_batches=2"))


def test_a_negative_sam_radius_is_refused_by_the_module():
    net = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
    with pytest.raises(ValueError, match=r"model\.sam_rho must be >= 0"):
        ViTClassifier(net=net, class_names=["cat", "dog"], sam_rho=-0.1)
