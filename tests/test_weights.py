"""load_pretrained: torchvision, timm, Hugging Face and JAX checkpoints give the same logits in vitlit's ViT.

Every source model is randomly initialised and then perturbed, so zero heads and unit LayerNorms cannot
hide a wrong mapping. timm and transformers are dev dependencies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vitlit import ViT, load_pretrained
from vitlit.models.weight_downloads import torchvision_weights
from vitlit.models.weight_formats import HUGGINGFACE_4
from vitlit.models.weights import read_weight_file

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from timm.models.vision_transformer import _load_weights as timm_load_npz  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn as timm_checkpoint_filter  # noqa: E402
from torchvision.models import vit_b_16  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT  # noqa: E402
from torchvision.models.vision_transformer import interpolate_embeddings  # noqa: E402

TOLERANCE = 1e-5
# A tiny ViT: 32x32 images, 8x8 patches (4x4 grid), width 64, 2 blocks, 4 heads, MLP 128, 5 classes.
TINY = dict(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_dim=128)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter (zero heads, unit norms and zero biases included); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def images(size: int, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def max_diff(first: torch.Tensor, second: torch.Tensor) -> float:
    return (first - second).abs().max().item()


def tiny_vit(num_classes: int = 5, image_size: int = 32) -> ViT:
    return ViT(num_classes=num_classes, **{**TINY, "image_size": image_size}).eval()


def tiny_torchvision(image_size: int = 32, num_classes: int = 5) -> TorchvisionViT:
    return TorchvisionViT(
        image_size=image_size,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
    )


def tiny_timm(image_size: int = 32, num_classes: int = 5) -> TimmViT:
    return TimmViT(
        img_size=image_size, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2, num_classes=num_classes
    )


def tiny_hf_config(**overrides):
    settings = dict(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=5,
        layer_norm_eps=1e-6,
    )
    return transformers.ViTConfig(**{**settings, **overrides})


@torch.no_grad()
def hf_logits(model, batch: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=batch).logits


# --- full-size ViT-B/16 parity, one per library ------------------------------------------------------------


@torch.no_grad()
def test_torchvision_vit_b_16_state_dict_gives_the_same_logits(tmp_path: Path):
    source = perturbed(vit_b_16(weights=None))
    torch.save(source.state_dict(), tmp_path / "vit_b_16.pth")
    model = ViT(num_classes=1000).eval()
    loaded = load_pretrained(model, tmp_path / "vit_b_16.pth", load_head=True)
    assert (loaded.format, loaded.tensors, loaded.head_loaded) == ("torchvision", 152, True)
    batch = images(224, count=1)
    assert max_diff(model(batch), source(batch)) <= TOLERANCE


@torch.no_grad()
def test_timm_vit_base_patch16_224_safetensors_gives_the_same_logits(tmp_path: Path):
    source = perturbed(timm.create_model("vit_base_patch16_224", pretrained=False))
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    model = ViT(num_classes=1000).eval()
    assert load_pretrained(model, tmp_path / "model.safetensors", load_head=True).format == "timm"
    batch = images(224, count=1)
    assert max_diff(model(batch), source(batch)) <= TOLERANCE


@torch.no_grad()
def test_hugging_face_vit_b16_5x_names_give_the_same_logits(tmp_path: Path):
    config = transformers.ViTConfig(num_labels=1000, layer_norm_eps=1e-6)  # ViT-B/16 at 224 otherwise
    source = perturbed(transformers.ViTForImageClassification(config))
    save_file(source.state_dict(), tmp_path / "model.safetensors")  # transformers 5's own (in-memory) names
    model = ViT(num_classes=1000).eval()
    assert load_pretrained(model, tmp_path / "model.safetensors", load_head=True).format == "huggingface (5.x names)"
    batch = images(224, count=1)
    assert max_diff(model(batch), hf_logits(source, batch)) <= TOLERANCE


# --- file types and formats on tiny models -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
@torch.no_grad()
def test_timm_checkpoint_files_of_every_type_load(tmp_path: Path, suffix: str):
    source = perturbed(tiny_timm())
    path = tmp_path / f"checkpoint{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), path)
    else:  # timm's training scripts wrap the weights in a dict with the optimizer state
        torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    model = tiny_vit()
    load_pretrained(model, path, load_head=True)
    assert max_diff(model(images(32)), source(images(32))) <= TOLERANCE


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
@torch.no_grad()
def test_hugging_face_folder_with_4x_names_gives_the_same_logits(tmp_path: Path, filename: str):
    source = perturbed(transformers.ViTForImageClassification(tiny_hf_config()))
    source.save_pretrained(tmp_path / "hf")  # transformers 5 writes the 4.x names that hub files use
    if filename == "pytorch_model.bin":
        state = read_weight_file(tmp_path / "hf")
        (tmp_path / "hf" / "model.safetensors").unlink()
        torch.save(state, tmp_path / "hf" / filename)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in read_weight_file(tmp_path / "hf")
    model = tiny_vit()
    assert load_pretrained(model, tmp_path / "hf", load_head=True).format == "huggingface (4.x names)"
    batch = images(32)
    assert max_diff(model(batch), hf_logits(source, batch)) <= TOLERANCE


def test_hugging_face_4x_table_uses_the_documented_block_names():
    documented = {
        f"vit.encoder.layer.0.{name}.{kind}"
        for name in (
            "layernorm_before",
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
            "attention.output.dense",
            "layernorm_after",
            "intermediate.dense",
            "output.dense",
        )
        for kind in ("weight", "bias")
    }
    keys = set()
    for value in HUGGINGFACE_4.block.values():
        keys.update((value,) if isinstance(value, str) else value)
    table = {"vit." + HUGGINGFACE_4.block_prefix.format(i=0) + key for key in keys}
    assert table == documented


@torch.no_grad()
def test_hugging_face_vit_model_without_vit_prefix_and_with_pooler_loads(tmp_path: Path):
    source = perturbed(transformers.ViTModel(tiny_hf_config(), add_pooling_layer=True))
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    model = tiny_vit()
    loaded = load_pretrained(model, tmp_path / "model.safetensors", load_head=True)
    assert not loaded.head_loaded and loaded.tensors == 6 + 2 * 12  # ViTModel has no classifier
    batch = images(32)
    tokens = source(pixel_values=batch).last_hidden_state  # after the final LayerNorm
    assert max_diff(model.classifier.norm(model.forward_features(batch))[:, 0], tokens[:, 0]) <= TOLERANCE


@torch.no_grad()
def test_hugging_face_layer_norm_eps_does_not_leak_into_the_model(tmp_path: Path):
    source = perturbed(transformers.ViTForImageClassification(tiny_hf_config(layer_norm_eps=1e-12)))
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    model = tiny_vit()
    load_pretrained(model, tmp_path / "model.safetensors", load_head=True)
    eps = {module.eps for module in model.modules() if isinstance(module, torch.nn.LayerNorm)}
    assert eps == {1e-6}
    exact = ViT(num_classes=5, layer_norm_eps=1e-12, **TINY).eval()
    load_pretrained(exact, tmp_path / "model.safetensors", load_head=True)
    assert max_diff(exact(images(32)), hf_logits(source, images(32))) <= TOLERANCE


# --- JAX .npz, written so that timm's own .npz loader reads it too ------------------------------------------


def timm_to_npz_arrays(model: TimmViT, layout: str) -> dict[str, np.ndarray]:
    """A timm ViT's weights in Google's .npz layout: ``vision_transformer`` (ViT-B_16.npz) or
    ``big_vision`` (params/ prefix, top-level pos_embedding, all blocks stacked in one scanned entry)."""
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    width = state["cls_token"].shape[-1]
    heads = model.blocks[0].attn.num_heads
    big_vision = layout == "big_vision"
    attention, norm2, mlp = (
        ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
        if big_vision
        else (
            "MultiHeadDotProductAttention_1",
            "LayerNorm_2",
            "MlpBlock_3",
        )
    )
    arrays = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,
        "head/bias": state["head.bias"],
    }
    blocks = []
    for index in range(len(model.blocks)):
        prefix = f"blocks.{index}."
        qkv_weight = np.split(state[prefix + "attn.qkv.weight"], 3)
        qkv_bias = np.split(state[prefix + "attn.qkv.bias"], 3)
        block = {
            "LayerNorm_0/scale": state[prefix + "norm1.weight"],
            "LayerNorm_0/bias": state[prefix + "norm1.bias"],
            f"{attention}/out/kernel": state[prefix + "attn.proj.weight"].T.reshape(heads, -1, width),
            f"{attention}/out/bias": state[prefix + "attn.proj.bias"],
            f"{norm2}/scale": state[prefix + "norm2.weight"],
            f"{norm2}/bias": state[prefix + "norm2.bias"],
        }
        for name, weight, bias in zip(("query", "key", "value"), qkv_weight, qkv_bias, strict=True):
            block[f"{attention}/{name}/kernel"] = weight.T.reshape(width, heads, -1)
            block[f"{attention}/{name}/bias"] = bias.reshape(heads, -1)
        for dense, layer in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            block[f"{mlp}/{dense}/kernel"] = state[prefix + f"mlp.{layer}.weight"].T
            block[f"{mlp}/{dense}/bias"] = state[prefix + f"mlp.{layer}.bias"]
        blocks.append(block)
    if big_vision:
        arrays.update({f"Transformer/encoderblock/{key}": np.stack([b[key] for b in blocks]) for key in blocks[0]})
        return {f"params/{key}": value for key, value in arrays.items()}
    for index, block in enumerate(blocks):
        arrays.update({f"Transformer/encoderblock_{index}/{key}": value for key, value in block.items()})
    return arrays


@pytest.mark.parametrize("layout", ["vision_transformer", "big_vision"])
@torch.no_grad()
def test_jax_npz_loads_like_timms_own_npz_loader(tmp_path: Path, layout: str):
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **timm_to_npz_arrays(perturbed(tiny_timm()), layout))
    reference = tiny_timm().eval()
    timm_load_npz(reference, str(path))
    model = tiny_vit()
    loaded = load_pretrained(model, path, load_head=True)
    assert loaded.format.startswith("jax npz") and loaded.head_loaded
    batch = images(32)
    assert max_diff(model(batch), reference(batch)) <= TOLERANCE


# --- position-embedding resampling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("source_size", "target_size"), [(64, 32), (32, 64)])
@torch.no_grad()
def test_torchvision_checkpoint_of_another_size_is_resampled_as_torchvision_does(
    tmp_path: Path, source_size: int, target_size: int
):
    source = perturbed(tiny_torchvision(image_size=source_size))
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    reference = tiny_torchvision(image_size=target_size).eval()
    reference.load_state_dict(interpolate_embeddings(target_size, 8, source.state_dict()))
    model = tiny_vit(image_size=target_size)
    loaded = load_pretrained(model, tmp_path / "vit.pth", load_head=True)
    assert loaded.resampled_from == (source_size // 8,) * 2
    batch = images(target_size)
    assert max_diff(model(batch), reference(batch)) <= TOLERANCE


@torch.no_grad()
def test_timm_384_style_checkpoint_into_a_smaller_model_is_resampled_as_timm_does(tmp_path: Path):
    source = perturbed(tiny_timm(image_size=48))  # 6x6 patches, like 384 / 16 = 24x24, into 4x4 (224 / 16)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    reference = tiny_timm(image_size=32).eval()
    reference.load_state_dict(timm_checkpoint_filter(source.state_dict(), reference))
    model = tiny_vit()
    assert load_pretrained(model, tmp_path / "vit.pth", load_head=True).resampled_from == (6, 6)
    assert max_diff(model(images(32)), reference(images(32))) <= TOLERANCE


def test_another_patch_size_is_an_error(tmp_path: Path):
    source = TimmViT(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"patch_embedding.patcher.weight has patch size \(64, 3, 16, 16\)"):
        load_pretrained(tiny_vit(), tmp_path / "vit.pth")


# --- the classifier head ---------------------------------------------------------------------------------------


def test_head_is_zero_initialised_unless_asked_for(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    torch.save(perturbed(tiny_timm()).state_dict(), tmp_path / "vit.pth")
    model = tiny_vit()
    with caplog.at_level(logging.INFO, logger="vitlit.models.weights"):
        loaded = load_pretrained(model, tmp_path / "vit.pth")
    assert not loaded.head_loaded
    assert not model.classifier.head.weight.any() and not model.classifier.head.bias.any()
    assert "new, zero-initialised, 5 classes" in caplog.text


def test_head_of_another_class_count_is_not_loaded_even_when_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    torch.save(perturbed(tiny_timm(num_classes=1000)).state_dict(), tmp_path / "vit.pth")
    model = tiny_vit(num_classes=3)
    with caplog.at_level(logging.INFO, logger="vitlit.models.weights"):
        loaded = load_pretrained(model, tmp_path / "vit.pth", load_head=True)
    assert not loaded.head_loaded
    assert model.classifier.head.weight.shape == (3, 64) and not model.classifier.head.weight.any()
    assert "the checkpoint has 1000 classes, the model 3 classes" in caplog.text


# --- bad checkpoints -------------------------------------------------------------------------------------------


def test_unknown_layout_lists_unexpected_and_missing_keys(tmp_path: Path):
    save_file({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"unknown checkpoint layout: unexpected keys decoder.bias, encoder.weight"):
        load_pretrained(tiny_vit(), tmp_path / "other.safetensors")


def test_checkpoint_of_another_depth_names_the_missing_and_unexpected_keys(tmp_path: Path):
    deeper = TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2, num_classes=5)
    torch.save(deeper.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"missing keys: none; unexpected keys: blocks\.2\.norm1\.weight"):
        load_pretrained(tiny_vit(), tmp_path / "vit.pth")
    shallower = TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, mlp_ratio=2, num_classes=5)
    torch.save(shallower.state_dict(), tmp_path / "vit1.pth")
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.norm1\.weight"):
        load_pretrained(tiny_vit(), tmp_path / "vit1.pth")


class WritesAFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_not_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    torch.save(
        {"state_dict": {"x": torch.zeros(1)}, "payload": WritesAFileWhenUnpickled(marker)}, tmp_path / "evil.pth"
    )
    with pytest.raises(ValueError, match=r"evil\.pth holds more than tensors"):
        load_pretrained(tiny_vit(), tmp_path / "evil.pth")
    assert not marker.exists()


def test_missing_file_and_empty_folder_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_weight_file(tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match=r"without model\.safetensors or pytorch_model\.bin"):
        read_weight_file(tmp_path)


def test_torchvision_names_are_checked_before_any_download():
    assert torchvision_weights("IMAGENET1K_V1", 16, 768, 12).url.endswith("vit_b_16-c867db91.pth")
    assert torchvision_weights("IMAGENET1K_SWAG_LINEAR_V1", 16, 1024, 24).url.endswith(".pth")
    with pytest.raises(ValueError, match=r"torchvision:NOPE is not a weight of vit_b_16; choose one of IMAGENET1K_V1"):
        torchvision_weights("NOPE", 16, 768, 12)
    with pytest.raises(ValueError, match="torchvision has no ViT with patch 8, width 64 and depth 2"):
        load_pretrained(tiny_vit(), "torchvision:IMAGENET1K_V1")


@torch.no_grad()
def test_vitlit_lightning_checkpoint_state_dict_loads(tmp_path: Path):
    source = perturbed(tiny_vit())
    torch.save(
        {"state_dict": {f"model.{key}": value for key, value in source.state_dict().items()}}, tmp_path / "a.ckpt"
    )
    model = tiny_vit()
    assert load_pretrained(model, tmp_path / "a.ckpt", load_head=True).format == "vitlit"
    assert max_diff(model(images(32)), source(images(32))) == 0.0


def test_a_vitlit_checkpoint_loads_without_its_training_only_auxiliary_heads(tmp_path: Path):
    source = perturbed(tiny_vit())
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    auxiliary = {"relative_localization.mlp.0.weight": torch.ones(4, 4), "instance_head.weight": torch.ones(9, 4)}
    torch.save({"state_dict": {**state, **auxiliary}}, tmp_path / "a.ckpt")
    model = tiny_vit()
    assert load_pretrained(model, tmp_path / "a.ckpt", load_head=True).format == "vitlit"
    assert max_diff(model(images(32)), source(images(32))) == 0.0
    torch.save({"state_dict": {**state, "other_head.weight": torch.ones(2)}}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match=r"unexpected keys: other_head\.weight"):
        load_pretrained(tiny_vit(), tmp_path / "b.ckpt")
