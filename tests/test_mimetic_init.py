"""Mimetic attention initialisation (vitlit.models.mimetic_init; model.net.attention_init=mimetic)."""

from __future__ import annotations

import itertools

import pytest
import torch

from vitlit.models.mimetic_init import mimetic_init_, noisy_identity, split_by_svd
from vitlit.models.vit import ViT

NET = {"image_size": 64, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_dim": 128}


def head_products(block, width: int, head_dim: int) -> list[torch.Tensor]:
    """W_q[r]^T W_k[r] of each head: the (D, D) matrix its scores are x (.) x^T of."""
    weight = block.qkv.weight
    rows = [slice(h * head_dim, (h + 1) * head_dim) for h in range(width // head_dim)]
    return [weight[r].T @ weight[width:][r] for r in rows]


def test_split_by_svd_gives_the_best_low_rank_factors():
    matrix = noisy_identity(16, 0.7, 0.7, torch.Generator().manual_seed(0))
    left, right = split_by_svd(matrix, 16)
    assert left.shape == (16, 16) and right.shape == (16, 16)
    assert torch.allclose(left @ right, matrix, atol=1e-5)
    left, right = split_by_svd(matrix, 4)
    assert left.shape == (16, 4) and right.shape == (4, 16)
    assert torch.linalg.matrix_rank(left @ right) == 4


def test_query_key_products_start_near_a_scaled_identity_and_value_output_near_a_negative_one():
    torch.manual_seed(0)
    model = ViT(num_classes=3, attention_init="mimetic", **NET)
    for block in model.transformer_encoder:
        attention = block.msa_block
        for product in head_products(attention, 64, 32):
            diagonal = product.diagonal()
            off_diagonal = product - torch.diag(diagonal)
            # rank 32 of 64: about half of beta = 0.7 on the diagonal, the rest noise of scale alpha / sqrt(D)
            assert diagonal.mean() > 0.25 and diagonal.mean() > 5 * off_diagonal.abs().mean()
        value_output = attention.proj.weight @ attention.qkv.weight[128:]
        expected = -0.4 * torch.eye(64)  # the noise has scale 0.4 / sqrt(64)
        assert torch.allclose(value_output.diagonal().mean(), expected.diagonal().mean(), atol=0.03)
        assert (value_output - expected).abs().mean() < 0.06
        assert not attention.qkv.bias.any() and not attention.proj.bias.any()
    default = ViT(num_classes=3, **NET).transformer_encoder[0].msa_block
    assert all(product.diagonal().mean().abs() < 0.01 for product in head_products(default, 64, 32))


def first_block_attention(model: ViT, images: torch.Tensor) -> torch.Tensor:
    """The first block's attention weights among the patch tokens, (B, heads, N, N)."""
    attention = model.transformer_encoder[0].msa_block
    with torch.no_grad():
        tokens = attention.layer_norm(model.embed(images))
        batch, length, _ = tokens.shape
        q, k, _ = attention.qkv(tokens).view(batch, length, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)
        return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)[..., 1:, 1:]


def test_at_step_0_each_token_attends_mostly_to_itself_and_then_to_its_neighbours():
    torch.manual_seed(0)
    models = {
        init: ViT(num_classes=3, attention_init=init, position_embedding="sincos", pooling="mean", **NET).eval()
        for init in ("default", "mimetic")
    }
    images = torch.randn(2, 3, 64, 64)
    mimetic, default = (first_block_attention(models[init], images) for init in ("mimetic", "default"))
    own = mimetic.diagonal(dim1=-2, dim2=-1)
    assert own.mean() > 0.3 and own.mean() > 10 * default.diagonal(dim1=-2, dim2=-1).mean()
    assert (mimetic.argmax(-1) == torch.arange(64)).float().mean() > 0.9  # every head, nearly every token
    # On a blank image only the sine-cosine positions tell tokens apart: attention falls off with grid distance.
    blank = first_block_attention(models["mimetic"], torch.zeros(1, 3, 64, 64))
    rows, cols = torch.arange(64) // 8, torch.arange(64) % 8
    distance = (rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()
    by_distance = [blank[..., distance == d].mean() for d in (0, 2, 4, 8)]
    assert all(near > 1.5 * far for near, far in itertools.pairwise(by_distance))
    uniform = first_block_attention(models["default"], torch.zeros(1, 3, 64, 64))
    assert uniform[..., distance == 1].mean() < 1.1 * uniform[..., distance >= 8].mean()


def test_mimetic_init_keeps_the_shapes_and_the_model_trains():
    torch.manual_seed(0)
    model = ViT(num_classes=3, attention_init="mimetic", **NET)
    shapes = {name: p.shape for name, p in ViT(num_classes=3, **NET).named_parameters()}
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    images = torch.randn(4, 3, 64, 64)
    torch.nn.init.normal_(model.classifier.head.weight)  # the head starts at zero: no gradient reaches the blocks
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert model(images).shape == (4, 3) and torch.isfinite(loss)
    assert model.transformer_encoder[0].msa_block.qkv.weight.grad.abs().sum() > 0


def test_mimetic_init_of_a_lone_attention_layer_overwrites_it_in_place():
    qkv, proj = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)
    before = qkv.weight.clone()
    mimetic_init_(qkv, proj, num_heads=4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(before, qkv.weight)


def test_an_unknown_attention_init_is_named():
    with pytest.raises(ValueError, match=r"attention_init='xavier' is not one of: default, mimetic"):
        ViT(num_classes=3, attention_init="xavier", **NET)
