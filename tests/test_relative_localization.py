"""Dense relative localisation (model.relative_localization_weight): targets, wiring into the loss, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitlit.models.relative_localization import DenseRelativeLocalization
from vitlit.models.vit import ViT
from vitlit.models.weights import load_pretrained
from vitlit.training import train
from vitlit.training.checkpoints import load_backbone
from vitlit.training.module import ViTClassifier

SMALL_NET = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}


def exact_offset_predictor(rows: int, columns: int) -> torch.nn.Linear:
    """A linear map from two concatenated one-hot position tokens to (row_i - row_j, col_i - col_j) + (H-1, W-1)."""
    count = rows * columns
    positions = torch.tensor([[index // columns, index % columns] for index in range(count)], dtype=torch.float32)
    linear = torch.nn.Linear(2 * count, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([positions.T, -positions.T], dim=1))
        linear.bias.copy_(torch.tensor([rows - 1.0, columns - 1.0]))
    return linear


def test_targets_are_the_row_and_column_offsets_of_each_token_pair():
    rows, columns = 3, 4
    tokens = torch.eye(rows * columns).expand(2, -1, -1)  # token i is the one-hot code of its position
    head = DenseRelativeLocalization(embed_dim=rows * columns, pairs=50)
    head.mlp = exact_offset_predictor(rows, columns)
    assert head(tokens, (rows, columns)).item() == pytest.approx(0.0, abs=1e-5)
    assert head(tokens, (columns, rows)).item() > 0.1  # the same tokens read as a 4x3 grid: other offsets
    with pytest.raises(ValueError, match="12 tokens do not fill a 3x3 grid"):
        head(tokens, (3, 3))
    with pytest.raises(ValueError, match="pairs must be >= 1"):
        DenseRelativeLocalization(embed_dim=8, pairs=0)


def test_tokens_left_by_patch_dropout_are_located_by_their_positions():
    torch.manual_seed(0)
    rows, columns = 3, 4
    tokens = torch.eye(rows * columns).expand(2, -1, -1)
    kept = torch.stack([torch.randperm(rows * columns)[:6].sort().values for _ in range(2)])
    subset = tokens.gather(1, kept.unsqueeze(-1).expand(-1, -1, rows * columns))
    head = DenseRelativeLocalization(embed_dim=rows * columns, pairs=50)
    head.mlp = exact_offset_predictor(rows, columns)
    assert head(subset, (rows, columns), kept).item() == pytest.approx(0.0, abs=1e-5)
    assert head(subset, (rows, columns), kept.flip(1)).item() > 0.1  # the wrong positions: other offsets
    with pytest.raises(ValueError, match="6 tokens do not fill a 3x4 grid"):
        head(subset, (rows, columns))


def test_training_loss_adds_the_weighted_localization_loss_and_evaluation_ignores_it():
    torch.manual_seed(0)
    module = ViTClassifier(
        net=SMALL_NET, class_names=["a", "b", "c"], label_smoothing=0.1, relative_localization_weight=0.5
    )
    module.log = lambda *args, **kwargs: None
    module.eval()  # no dropout: the only randomness left is the choice of token pairs
    torch.nn.init.normal_(module.model.classifier.head.weight)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])

    torch.manual_seed(1)
    loss, logits = module._shared_step((images, labels), "train", module.train_acc)
    tokens = module.model.forward_features(images)
    torch.manual_seed(1)  # the same token pairs
    localization = module.relative_localization(module.model.classifier.norm(tokens[:, 1:]), (4, 4))
    classification = F.cross_entropy(module(images), labels, label_smoothing=0.1)
    assert torch.allclose(logits, module(images), atol=1e-6)
    assert localization.item() > 0.1
    assert loss.item() == pytest.approx(classification.item() + 0.5 * localization.item(), abs=1e-5)

    loss.backward()
    head_parameters = list(module.relative_localization.parameters())
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in head_parameters)
    grouped = {id(parameter) for group in module.parameter_groups() for parameter in group["params"]}
    assert all(id(parameter) in grouped for parameter in head_parameters)

    val_loss, _ = module._shared_step((images, labels), "val", module.val_acc)
    assert val_loss.item() == pytest.approx(F.cross_entropy(module(images), labels).item(), abs=1e-6)

    assert ViTClassifier(net=SMALL_NET, class_names=["a", "b"]).relative_localization is None


def test_checkpoints_with_the_auxiliary_head_load_as_weights_and_as_a_backbone(tmp_path: Path):
    torch.manual_seed(0)
    trained = ViTClassifier(net=SMALL_NET, class_names=["a", "b", "c"], relative_localization_weight=0.1)
    path = tmp_path / "with_head.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}, path)
    assert any(key.startswith("relative_localization.") for key in trained.state_dict())

    plain = ViT(num_classes=3, **SMALL_NET)
    load_pretrained(plain, path, load_head=True)
    assert all(torch.equal(value, trained.model.state_dict()[name]) for name, value in plain.state_dict().items())

    without_head = ViTClassifier(net=SMALL_NET, class_names=["x", "y"])
    load_backbone(without_head, path)
    block = "transformer_encoder.0.mlp_block.fc1.weight"
    assert torch.equal(without_head.model.state_dict()[block], trained.model.state_dict()[block])


def test_a_run_logs_the_localization_loss(tiny_config):
    metrics = train(tiny_config("model.relative_localization_weight=0.1"))
    assert metrics["train/relative_localization"] > 0


def test_a_run_with_patch_dropout_trains_the_localization_loss_on_the_kept_tokens(tiny_config):
    overrides = ["model.net.patch_drop_rate=0.5", "model.relative_localization_weight=0.1"]
    metrics = train(tiny_config(*overrides))
    assert metrics["train/relative_localization"] > 0 and 0.0 <= metrics["test/acc"] <= 1.0
