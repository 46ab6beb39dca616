import pytest
import torch
import torchvision
from torch import nn

from vitlit import ViT
from vitlit.models import vit
from vitlit.models.layers import resample_position_embedding
from vitlit.models.vit import MultiheadSelfAttentionBlock, attention

MICRO = dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=128)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vit_b16_with_three_classes_has_the_reference_parameter_count():
    assert count(ViT(num_classes=3)) == 85_800_963


def test_vit_b16_with_1000_classes_has_as_many_parameters_as_torchvision_vit_b_16():
    reference = torchvision.models.vit_b_16(weights=None)
    assert count(ViT(num_classes=1000)) == count(reference) == 86_567_656


def test_module_tree_keeps_the_reference_names_and_per_block_counts():
    model = ViT(num_classes=3)
    assert [name for name, _ in model.named_children()] == [
        "patch_embedding",
        "embedding_dropout",
        "transformer_encoder",
        "classifier",
    ]
    own = sum(p.numel() for name, p in model.named_parameters() if "." not in name)
    assert own == 152_064  # class token 768 + position 197 x 768
    patcher = model.patch_embedding.patcher
    assert (patcher.in_channels, patcher.out_channels, patcher.kernel_size, patcher.stride) == (
        3,
        768,
        (16, 16),
        (16, 16),
    )
    assert len(model.transformer_encoder) == 12
    for block in model.transformer_encoder:
        assert count(block.msa_block) == 2_363_904
        assert count(block.mlp_block) == 4_723_968
    assert isinstance(model.classifier.norm, nn.LayerNorm)
    assert model.classifier.head.out_features == 3


def test_forward_maps_images_to_logits_and_features_to_tokens():
    model = ViT(num_classes=5, **MICRO).eval()
    images = torch.randn(2, 3, 224, 224)
    assert model.forward_features(images).shape == (2, 197, 64)
    assert model(images).shape == (2, 5)


def test_a_new_model_predicts_uniformly_because_its_head_starts_at_zero():
    model = ViT(num_classes=4, **MICRO).eval()
    logits = model(torch.randn(3, 3, 224, 224))
    assert torch.equal(logits, torch.zeros(3, 4))


def test_tokens_are_initialised_with_truncated_normal_of_std_002():
    model = ViT(num_classes=3)
    for parameter in (model.class_embedding, model.position_embedding):
        assert 0.015 < parameter.std().item() < 0.025
        assert parameter.abs().max().item() <= 2.0
    assert model.position_embedding.abs().max().item() < 0.2  # not torch.randn's std 1


def test_attention_equals_torch_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    block = MultiheadSelfAttentionBlock(embed_dim=768, num_heads=12).eval()
    for parameter in block.parameters():
        nn.init.normal_(parameter, std=0.05)
    reference = nn.MultiheadAttention(768, 12, batch_first=True).eval()
    reference.in_proj_weight.data.copy_(block.qkv.weight)
    reference.in_proj_bias.data.copy_(block.qkv.bias)
    reference.out_proj.weight.data.copy_(block.proj.weight)
    reference.out_proj.bias.data.copy_(block.proj.bias)
    tokens = torch.randn(2, 197, 768)
    normed = block.layer_norm(tokens)
    expected, _ = reference(normed, normed, normed, need_weights=False)
    assert (block(tokens) - expected).abs().max().item() <= 1e-5


def test_the_class_token_path_of_the_last_block_gives_the_logits_and_gradients_of_the_full_encoder():
    torch.manual_seed(0)
    model = ViT(num_classes=3, **MICRO, dropout=0.0, drop_path_rate=0.1)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.05)
    images = torch.randn(3, 3, 224, 224)
    assert model.encode(model.embed(images), class_token_only=True).shape == (3, 1, 64)
    outputs, gradients = [], []
    for run in (model, lambda x: model.forward_head(model.forward_features(x))):
        torch.manual_seed(1)  # the same stochastic-depth draws in both
        logits = run(images)
        logits.square().sum().backward()
        outputs.append(logits.detach())
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        gradients.append(torch.cat([grad.flatten() for grad in grads]))
        model.zero_grad()
    assert (outputs[0] - outputs[1]).abs().max().item() <= 1e-5
    assert (gradients[0] - gradients[1]).abs().max().item() <= 1e-5
    model.set_grad_checkpointing()
    torch.manual_seed(1)
    assert (model(images) - outputs[0]).abs().max().item() <= 1e-5
    torch.manual_seed(1)
    logits, tokens, kept = model(images, return_tokens=True)  # the auxiliary losses' path: every token, same logits
    assert tokens.shape == (3, 197, 64) and kept is None
    assert (logits - outputs[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_attention_on_the_cpu_takes_the_explicit_path_only_where_bf16_is_native(monkeypatch, native: bool):
    monkeypatch.setattr(vit, "NATIVE_BF16_CPU", native)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 197, 64) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attention(q, k, v), expected)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    low = attention(q, k, v)
    explicit = ((q * 64**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    assert torch.equal(low, explicit if native else torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert (low.float() - expected).abs().max().item() <= 0.05  # bfloat16 keeps 8 bits of mantissa


def test_sincos_position_embedding_is_a_fixed_buffer_of_sines_and_cosines_of_the_patch_grid():
    model = ViT(num_classes=3, **MICRO, position_embedding="sincos")
    assert "position_embedding" in model.state_dict()
    assert "position_embedding" not in dict(model.named_parameters())
    table = model.position_embedding
    assert table.shape == (1, 1 + 14 * 14, 64)
    assert torch.equal(table[0, 0], torch.zeros(64))  # the class token has no position
    frequencies = 1.0 / 10000 ** (torch.arange(16) / 15)
    row, column = 2, 5  # patch 2 * 14 + 5 in row-major order
    expected = torch.cat(
        [
            (column * frequencies).sin(),
            (column * frequencies).cos(),
            (row * frequencies).sin(),
            (row * frequencies).cos(),
        ]
    )
    assert torch.allclose(table[0, 1 + row * 14 + column], expected, atol=1e-6)
    loaded = ViT(num_classes=3, **MICRO, position_embedding="sincos")
    loaded.position_embedding.zero_()  # the table comes back from the state dict, not from the constructor
    loaded.load_state_dict(model.state_dict())
    assert torch.equal(loaded.position_embedding, table)


def test_mean_pooling_classifies_the_mean_of_the_patch_tokens():
    torch.manual_seed(0)
    model = ViT(num_classes=3, **MICRO, pooling="mean").eval()
    nn.init.normal_(model.classifier.head.weight)
    images = torch.randn(2, 3, 224, 224)
    tokens = model.forward_features(images)
    expected = model.classifier(tokens[:, 1:].mean(dim=1))
    assert (model(images) - expected).abs().max().item() <= 1e-5
    assert (model(images) - model.classifier(tokens[:, 0])).abs().max().item() > 1e-3


def test_eval_mode_is_deterministic_and_train_mode_applies_dropout():
    model = ViT(num_classes=3, **MICRO, dropout=0.5)
    nn.init.normal_(model.classifier.head.weight)
    images = torch.randn(2, 3, 224, 224)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))


def test_patch_dropout_keeps_the_class_token_and_a_random_half_of_the_patches_in_training_only():
    torch.manual_seed(0)
    model = ViT(num_classes=3, image_size=32, patch_size=8, patch_drop_rate=0.5, **MICRO)  # a 4x4 grid
    images = torch.randn(2, 3, 32, 32)
    tokens = model.embed(images)
    model.train()
    dropped, kept = model.drop_patches(tokens)
    assert dropped.shape == (2, 1 + 8, 64) and kept.shape == (2, 8)
    assert all(row.unique().numel() == 8 and torch.equal(row, row.sort().values) for row in kept)
    assert not torch.equal(kept[0], kept[1])  # each image draws its own patches
    assert torch.equal(dropped[:, 0], tokens[:, 0])
    for image in range(2):
        assert torch.equal(dropped[image, 1:], tokens[image, 1 + kept[image]])
    assert model.forward_features(images).shape == (2, 9, 64) and model(images).shape == (2, 3)

    model.eval()
    assert model.drop_patches(tokens) == (tokens, None)
    plain = ViT(num_classes=3, image_size=32, patch_size=8, **MICRO).eval()
    plain.load_state_dict(model.state_dict())  # no tensors of its own
    assert torch.equal(plain(images), model(images))
    with pytest.raises(ValueError, match=r"patch_drop_rate must be a probability in \[0, 1\)"):
        ViT(num_classes=3, patch_drop_rate=1.0, **MICRO)


def test_stochastic_depth_rises_linearly_and_drops_whole_residual_branches_per_sample():
    model = ViT(num_classes=3, embed_dim=64, depth=3, num_heads=4, mlp_dim=128, drop_path_rate=0.2)
    assert [block.drop_path.rate for block in model.transformer_encoder] == pytest.approx([0.0, 0.1, 0.2])
    drop = model.transformer_encoder[2].drop_path.train()
    branch = torch.ones(1000, 5, 64)
    dropped = drop(branch)
    per_sample = dropped[:, 0, 0]
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.8])
    assert torch.equal(dropped, per_sample[:, None, None].expand_as(dropped))
    assert 100 < int((per_sample == 0).sum()) < 300
    assert torch.equal(drop.eval()(branch), branch)


def test_other_input_sizes_resample_the_position_embedding():
    model = ViT(num_classes=3, **MICRO).eval()
    assert model(torch.randn(1, 3, 288, 320)).shape == (1, 3)
    resampled = resample_position_embedding(model.position_embedding, (18, 20))
    assert resampled.shape == (1, 1 + 18 * 20, 64)
    assert torch.equal(resampled[:, 0], model.position_embedding[:, 0])
    assert resample_position_embedding(model.position_embedding, (14, 14)) is model.position_embedding


def test_an_input_not_divisible_by_the_patch_size_is_a_clear_error():
    model = ViT(num_classes=3, **MICRO)
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        model(torch.randn(1, 3, 230, 224))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(embed_dim=100, num_heads=12), "embed_dim=100 is not divisible by num_heads=12"),
        (dict(image_size=225), "image_size=225 is not divisible by patch_size=16"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(depth=2.5), "depth must be a positive integer"),
        (dict(dropout=1.0), "dropout must be a probability"),
        (dict(drop_path_rate=-0.1), "drop_path_rate must be a probability"),
        (dict(position_embedding="rope"), "position_embedding='rope' is not one of: learned, sincos"),
        (dict(embed_dim=66, num_heads=3, position_embedding="sincos"), "sincos needs embed_dim divisible by 4"),
        (dict(pooling="max"), "pooling='max' is not one of: token, mean"),
    ],
)
def test_impossible_shapes_raise_a_value_error_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        ViT(**arguments)


def test_reset_classifier_replaces_the_head_with_a_zero_one_of_the_new_size():
    model = ViT(num_classes=3, **MICRO)
    model.reset_classifier(7)
    assert model.classifier.head.out_features == 7 == model.num_classes
    assert model.classifier.head.weight.abs().sum() == 0
