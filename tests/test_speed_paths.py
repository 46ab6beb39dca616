"""The fast paths give the same numbers as the plain ones: fused attention, checkpointing, uint8 batches,
draft decoding, the decode cache, compile and fused-optimiser wiring."""

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, make_image_folder
from hydra.utils import instantiate
from PIL import Image

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.image_folder import load_rgb
from vitlit.data.transforms import eval_transform
from vitlit.models.vit import ViT
from vitlit.private_api import is_compiled
from vitlit.training.module import ViTClassifier, _is_unset_fusable

SMALL_VIT = dict(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_dim=96)


def unfused_reference_forward(model: ViT, images: torch.Tensor) -> torch.Tensor:
    """ViT forward written out op by op: separate q/k/v projections, explicit softmax attention, no SDPA."""
    patches = F.conv2d(images, model.patch_embedding.patcher.weight, model.patch_embedding.patcher.bias, stride=8)
    tokens = patches.flatten(2).transpose(1, 2)
    tokens = torch.cat([model.class_embedding.expand(len(images), -1, -1), tokens], dim=1) + model.position_embedding
    for block in model.transformer_encoder:
        msa = block.msa_block
        x = F.layer_norm(tokens, (tokens.shape[-1],), msa.layer_norm.weight, msa.layer_norm.bias, 1e-6)
        w_q, w_k, w_v = msa.qkv.weight.chunk(3)
        b_q, b_k, b_v = msa.qkv.bias.chunk(3)
        heads = msa.num_heads

        def split(t: torch.Tensor, heads: int = heads) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split(x @ w_q.T + b_q), split(x @ w_k.T + b_k), split(x @ w_v.T + b_v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).flatten(2)
        tokens = tokens + attended @ msa.proj.weight.T + msa.proj.bias
        mlp = block.mlp_block
        x = F.layer_norm(tokens, (tokens.shape[-1],), mlp.layer_norm.weight, mlp.layer_norm.bias, 1e-6)
        hidden = 0.5 * (x @ mlp.fc1.weight.T + mlp.fc1.bias)
        hidden = hidden * (1 + torch.erf((x @ mlp.fc1.weight.T + mlp.fc1.bias) / math.sqrt(2)))
        tokens = tokens + hidden @ mlp.fc2.weight.T + mlp.fc2.bias
    return model.classifier(tokens[:, 0])


def test_fused_model_matches_the_unfused_reference_within_1e_5():
    torch.manual_seed(0)
    model = ViT(num_classes=5, **SMALL_VIT).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)  # no zero head: the logits must carry the whole network
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fused, reference = model(images), unfused_reference_forward(model, images)
    assert fused.abs().mean() > 0.03
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_with_dropout_and_drop_path():
    def loss_and_gradients(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = ViT(num_classes=3, dropout=0.2, drop_path_rate=0.3, grad_checkpointing=checkpointing, **SMALL_VIT)
        torch.nn.init.normal_(model.classifier.head.weight, std=0.1)
        images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
        loss = F.cross_entropy(model.train()(images), labels)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    plain_loss, plain_grads = loss_and_gradients(False)
    checkpointed_loss, checkpointed_grads = loss_and_gradients(True)
    torch.testing.assert_close(checkpointed_loss, plain_loss, atol=0, rtol=0)
    for checkpointed, plain in zip(checkpointed_grads, plain_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


@pytest.fixture
def jpeg_folder(tmp_path: Path) -> Path:
    """Images of 300x260 px, large enough for draft decoding at 64 px to pick a 1/4 scale."""
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 5, "dog": 5}, "test": {"cat": 2, "dog": 2}})
    for path in root.rglob("*.jpg"):
        Image.open(path).resize((300, 260)).save(path, quality=95)
    return root


def test_uint8_batches_are_normalised_on_the_device_like_the_float_pipeline(jpeg_folder: Path):
    data = ImageFolderDataModule(jpeg_folder, batch_size=4, num_workers=0, image_size=56, fast_decode=False)
    data.setup("validate")
    images, labels = next(iter(data.val_dataloader()))
    assert images.dtype == torch.uint8
    module = ViTClassifier({**SMALL_VIT, "image_size": 56}, ["cat", "dog"], mean=data.mean, std=data.std)
    normalised, same_labels = module.on_after_batch_transfer((images, labels), 0)
    float_pipeline = eval_transform(56, normalize=True)
    expected = torch.stack([float_pipeline(load_rgb(path)) for path, _ in data.datasets["val"].samples[:4]])
    assert normalised.dtype == torch.float32 and same_labels is labels
    torch.testing.assert_close(normalised, expected, atol=1e-5, rtol=0)
    already_float = torch.randn(2, 3, 56, 56)
    assert module.normalize(already_float) is already_float
    with torch.no_grad():  # a direct call with uint8 images (eval, predict scripts) normalises them too
        torch.testing.assert_close(module.eval()(images), module(normalised))


def test_the_steps_of_a_run_see_normalised_float_images(jpeg_folder: Path):
    seen = []

    class Recording(ViTClassifier):
        def validation_step(self, batch, batch_idx):
            seen.append(batch[0])
            return super().validation_step(batch, batch_idx)

    data = ImageFolderDataModule(
        jpeg_folder, batch_size=4, num_workers=0, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    module = Recording(SMALL_VIT, ["cat", "dog"], mean=data.mean, std=data.std)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=data, verbose=False)
    assert len(seen) == 1 and seen[0].dtype == torch.float32
    assert seen[0].min() >= -2.0 and seen[0].max() <= 2.0 and seen[0].min() < 0  # (x - 0.5) / 0.25 of x in [0, 1]


def test_mean_and_std_travel_with_the_checkpoint(tmp_path: Path):
    module = ViTClassifier(SMALL_VIT, ["a", "b"], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = ViTClassifier.load_from_checkpoint(tmp_path / "model.ckpt")
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    torch.testing.assert_close(loaded.normalize(white), torch.ones(1, 3, 32, 32))


def test_draft_decoding_keeps_at_least_the_asked_size_and_the_exif_orientation(tmp_path: Path):
    pixels = torch.zeros(3, 256, 512, dtype=torch.uint8)
    pixels[0, :, :256] = 255  # left half red
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image.save(tmp_path / "plain.png")

    full, drafted = load_rgb(tmp_path / "rotated.jpg"), load_rgb(tmp_path / "rotated.jpg", draft_size=100)
    assert full.shape == (3, 512, 256) and drafted.shape == (3, 256, 128)  # 1/2 scale: 1/4 would go below 100
    assert drafted[0, :64].float().mean() > 200 and drafted[0, -64:].float().mean() < 50  # red on top after rotation
    assert load_rgb(tmp_path / "plain.png", draft_size=100).shape == (3, 256, 512)  # not a JPEG: full size


def test_the_cache_serves_the_same_images_without_reading_the_files_again(jpeg_folder: Path):
    cached = ImageFolderDataModule(jpeg_folder, batch_size=4, num_workers=0, image_size=64, cache=True)
    plain = ImageFolderDataModule(jpeg_folder, batch_size=4, num_workers=0, image_size=64)
    cached.setup("fit")
    plain.setup("fit")
    samples = cached.datasets["train"].samples
    assert len(cached.datasets["train"].decoded) == 10 + 4  # train and test images, each decoded once
    originals = [plain.datasets["val"][index][0] for index in range(4)]
    for path, _ in samples + cached.datasets["val"].samples:
        Path(path).unlink()
    for index, original in enumerate(originals):
        assert torch.equal(cached.datasets["val"][index][0], original)
    torch.manual_seed(3)
    image, label = cached.datasets["train"][7]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and label == samples[7][1]


def test_training_drops_the_last_partial_batch_unless_it_is_the_only_one(jpeg_folder: Path):
    data = ImageFolderDataModule(jpeg_folder, batch_size=4, num_workers=0, image_size=32)
    data.setup("fit")
    assert [len(labels) for _, labels in data.train_dataloader()] == [4, 4]  # 10 images
    assert [len(labels) for _, labels in data.val_dataloader()] == [4]
    data.batch_size = 16
    assert [len(labels) for _, labels in data.train_dataloader()] == [10]
    keep = ImageFolderDataModule(jpeg_folder, batch_size=4, num_workers=0, image_size=32, drop_last=False)
    keep.setup("fit")
    assert [len(labels) for _, labels in keep.train_dataloader()] == [4, 4, 2]


def test_compile_and_checkpointing_flags_reach_the_model_and_keep_its_parameter_names(image_folder: Path):
    cfg = compose_config(["model=vit_micro", "model.compile=true", "model.net.grad_checkpointing=true"])
    module = instantiate(cfg.model, class_names=["cat", "dog"], _convert_="all")
    names = list(module.state_dict())
    assert module.model.grad_checkpointing and module.compile_model
    assert module.hparams.mean == list(cfg.data.mean)
    module.configure_model()
    module.configure_model()  # Lightning calls it once per stage: compiling twice would wrap twice
    assert is_compiled(module.model)
    assert list(module.state_dict()) == names  # in-place compile: checkpoints load into an uncompiled model


def test_a_compiled_model_evaluates_every_batch_size_with_one_graph():
    from torch._dynamo.utils import counters

    module = ViTClassifier(SMALL_VIT, ["a", "b"], compile=True).eval()
    module.model.compile(dynamic=False, backend="eager")  # dynamo's graph capture alone, no code generation
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for batch_size in (4, 4, 3):  # the last validation batch is partial
            images, _ = module.on_after_batch_transfer((torch.zeros(batch_size, 3, 32, 32, dtype=torch.uint8), None), 0)
            module(images)
    assert counters["stats"]["unique_graphs"] == 1


def test_fused_adamw_is_asked_for_only_where_the_kernel_exists_and_the_user_did_not_choose():
    assert _is_unset_fusable(functools.partial(torch.optim.AdamW, lr=1e-3))
    assert not _is_unset_fusable(functools.partial(torch.optim.AdamW, lr=1e-3, fused=False))
    assert not _is_unset_fusable(functools.partial(torch.optim.RMSprop, lr=1e-3))
    module = ViTClassifier(SMALL_VIT, ["a", "b"], optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    optimizer = module.configure_optimizers()  # on the CPU: the default (foreach or for-loop) implementation
    assert not optimizer.defaults["fused"]
