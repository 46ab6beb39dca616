"""The notebook vitlit replaces: its hand-built ViT's state dicts load into vitlit's ViT with the same logits.

The notebook's model (mrdbourke/pytorch-deep-learning 08, the course's ViT) is written out below from its
description in shared/reference/seed.md: same module names, so the same state-dict keys.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_weights import TINY, images, max_diff, perturbed, tiny_vit
from torch import nn

from vitlit import ViT, load_pretrained
from vitlit.models.weight_formats import NOTEBOOK, VITLIT
from vitlit.models.weights import detect_format

TOLERANCE = 1e-5
NOTEBOOK_EPS = dict(layer_norm_eps=1e-5)


class NotebookPatchEmbedding(nn.Module):
    def __init__(self, in_channels: int, patch_size: int, embedding_dim: int):
        super().__init__()
        self.patcher = nn.Conv2d(in_channels, embedding_dim, kernel_size=patch_size, stride=patch_size, padding=0)
        self.flatten = nn.Flatten(start_dim=2, end_dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.patcher(x)).permute(0, 2, 1)


class NotebookMSABlock(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, attn_dropout: float = 0.0):
        super().__init__()
        self.layer_norm = nn.LayerNorm(normalized_shape=embedding_dim)
        self.multihead_attn = nn.MultiheadAttention(embedding_dim, num_heads, dropout=attn_dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x)
        attn_output, _ = self.multihead_attn(query=x, key=x, value=x, need_weights=False)
        return attn_output


class NotebookMLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_size: int, dropout: float = 0.1):
        super().__init__()
        self.layer_norm = nn.LayerNorm(normalized_shape=embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, mlp_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_size, embedding_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.layer_norm(x))


class NotebookEncoderBlock(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, mlp_size: int):
        super().__init__()
        self.msa_block = NotebookMSABlock(embedding_dim, num_heads)
        self.mlp_block = NotebookMLPBlock(embedding_dim, mlp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.msa_block(x) + x
        return self.mlp_block(x) + x


class NotebookViT(nn.Module):
    """The notebook's ViT; defaults build its ViT-B/16 (85,800,963 parameters with 3 classes)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_transformer_layers: int = 12,
        embedding_dim: int = 768,
        mlp_size: int = 3072,
        num_heads: int = 12,
        embedding_dropout: float = 0.1,
        num_classes: int = 3,
    ):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.class_embedding = nn.Parameter(torch.randn(1, 1, embedding_dim))
        self.position_embedding = nn.Parameter(torch.randn(1, num_patches + 1, embedding_dim))
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.patch_embedding = NotebookPatchEmbedding(3, patch_size, embedding_dim)
        self.transformer_encoder = nn.Sequential(
            *[NotebookEncoderBlock(embedding_dim, num_heads, mlp_size) for _ in range(num_transformer_layers)]
        )
        self.classifier = nn.Sequential(nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        class_token = self.class_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat((class_token, self.patch_embedding(x)), dim=1)
        x = self.embedding_dropout(self.position_embedding + x)
        x = self.transformer_encoder(x)
        return self.classifier(x[:, 0])


def tiny_notebook_vit() -> NotebookViT:
    """TINY's shapes, 3 classes: 32x32 images, 8x8 patches, width 64, 2 blocks, 4 heads, MLP 128."""
    return NotebookViT(32, 8, num_transformer_layers=2, embedding_dim=64, mlp_size=128, num_heads=4)


def saved_notebook_state_dict(tmp_path: Path, model: nn.Module) -> Path:
    path = tmp_path / "notebook_vit.pth"
    torch.save(model.state_dict(), path)  # what the notebook's users hold
    return path


def weights_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    records = [record for record in caplog.records if record.name == "vitlit.models.weights"]
    return [record.getMessage() for record in records if record.levelno >= logging.WARNING]


@torch.no_grad()
def test_notebook_state_dict_gives_the_notebook_models_logits(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    source = perturbed(tiny_notebook_vit())
    model = ViT(num_classes=3, **TINY, **NOTEBOOK_EPS).eval()
    with caplog.at_level(logging.WARNING, logger="vitlit.models.weights"):
        loaded = load_pretrained(model, saved_notebook_state_dict(tmp_path, source), load_head=True)
    assert (loaded.format, loaded.tensors, loaded.head_loaded) == ("notebook (pytorch-deep-learning 08)", 32, True)
    assert not weights_warnings(caplog)  # the model's eps is the notebook's: nothing to warn about
    assert max_diff(model(images(32)), source(images(32))) <= TOLERANCE


def test_notebook_and_vitlit_state_dicts_are_each_detected_as_themselves():
    notebook_state = tiny_notebook_vit().state_dict()
    vitlit_state = tiny_vit().state_dict()
    assert detect_format(notebook_state) == (NOTEBOOK, "")
    assert detect_format(vitlit_state) == (VITLIT, "")
    # The same wrappers as vitlit's own: DataParallel's module., a Lightning module's model.
    assert detect_format({f"module.{key}": value for key, value in notebook_state.items()}) == (NOTEBOOK, "module.")
    assert detect_format({f"model.{key}": value for key, value in vitlit_state.items()}) == (VITLIT, "model.")
    # Many keys are shared (class_embedding, msa_block.layer_norm, ...); each signature is in its own format only.
    assert NOTEBOOK.signature not in vitlit_state and VITLIT.signature not in notebook_state


def test_notebook_checkpoint_without_load_head_gets_a_zero_head(tmp_path: Path):
    source = perturbed(tiny_notebook_vit())
    model = ViT(num_classes=3, **TINY, **NOTEBOOK_EPS).eval()
    loaded = load_pretrained(model, saved_notebook_state_dict(tmp_path, source))
    assert not loaded.head_loaded and loaded.tensors == 30
    assert not model.classifier.head.weight.any() and not model.classifier.head.bias.any()
    # The classifier's LayerNorm is the notebook's classifier.0: part of the backbone, always loaded.
    assert torch.equal(model.classifier.norm.weight, source.classifier[0].weight)


def test_a_model_with_another_layer_norm_eps_logs_a_warning_naming_the_notebooks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = saved_notebook_state_dict(tmp_path, perturbed(tiny_notebook_vit()))
    with caplog.at_level(logging.WARNING, logger="vitlit.models.weights"):
        load_pretrained(tiny_vit(num_classes=3), path, load_head=True)  # vitlit's default eps, 1e-6
    [message] = weights_warnings(caplog)
    assert "notebook (pytorch-deep-learning 08) checkpoints are usually trained with LayerNorm eps 1e-5" in message
    assert "this ViT has 1e-6" in message and "set model.net.layer_norm_eps=1e-5" in message
