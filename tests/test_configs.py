import logging
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, compose_config
from hydra.utils import instantiate

from vitlit.models.vit import ViT
from vitlit.training import trainer as trainer_module
from vitlit.training.trainer import resolve_precision


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group in ("data", "model", "trainer", "callbacks", "logger", "paths", "hydra")
     for option in options(group)]
    + [f"experiment={option}" for option in options("experiment")]
    + [f"debug={option}" for option in options("debug")],
)  # fmt: skip
def test_every_config_option_composes_and_resolves(override: str, tmp_path: Path):
    data_location = f"data.input_dir={tmp_path}" if override == "data=streaming" else f"data.root={tmp_path}"
    cfg = compose_config([override, data_location], output_dir=tmp_path)
    for section in ("data", "model", "trainer", "callbacks", "logger"):
        assert cfg[section] is not None
    assert cfg.data.image_size == cfg.model.net.image_size


@pytest.mark.parametrize(
    ("option", "parameters"),
    [("vit_b16", 86_567_656), ("vit_s16", 22_050_664), ("vit_ti16", 5_717_416), ("vit_l16", 304_326_632)],
)
def test_model_sizes_have_the_standard_parameter_counts(option: str, parameters: int):
    cfg = compose_config([f"model={option}"])
    with torch.device("meta"):
        model = ViT(num_classes=1000, **cfg.model.net)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_micro_model_is_small_and_still_takes_224_pixel_images():
    cfg = compose_config(["model=vit_micro"])
    model = ViT(num_classes=3, **cfg.model.net)
    assert cfg.model.net.image_size == 224
    assert cfg.model.net.depth == 2 and cfg.model.net.embed_dim == 64
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_sweepable_keys_exist_without_a_plus(tmp_path: Path):
    overrides = [
        "model.optimizer.lr=1e-4",
        "model.optimizer.weight_decay=0.1",
        "model.label_smoothing=0.2",
        "model.freeze_backbone=true",
        "model.net.dropout=0.0",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.auto_augment=trivialaugment",
        "trainer.max_epochs=3",
        "trainer.precision=bf16-mixed",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.limit_train_batches=5",
        "seed=1",
    ]
    cfg = compose_config(overrides, output_dir=tmp_path)
    assert cfg.model.optimizer.lr == 1e-4 and cfg.data.batch_size == 16 and cfg.trainer.strategy == "ddp"
    # The sizes without a recipe of their own train with a warmup + cosine schedule (ViT-B/16's has none).
    cfg = compose_config(["model=vit_s16", "model.scheduler.warmup=5"], output_dir=tmp_path)
    assert cfg.model.scheduler.warmup == 5 and compose_config([]).model.scheduler is None


def test_data_dir_comes_from_vitlit_data_dir(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("VITLIT_DATA_DIR", str(tmp_path))
    cfg = compose_config([])
    assert cfg.data.root == f"{tmp_path}/pizza_steak_sushi"
    monkeypatch.delenv("VITLIT_DATA_DIR")
    assert compose_config([]).data.root == "data/pizza_steak_sushi"


def test_default_data_is_pizza_steak_sushi_with_a_checked_download():
    cfg = compose_config([])
    assert cfg.data.download.url.endswith("/pizza_steak_sushi.zip")
    assert cfg.data.download.sha256 == "5e9596fcc939a32996e59bbed8ec690ae39203bbcbc08292a92d44e4c4a27652"
    assert cfg.data.download.size == 15_737_296


def test_model_config_instantiates_the_lightning_module_with_class_names():
    cfg = compose_config(["model=vit_micro"])
    module = instantiate(cfg.model, class_names=["a", "b", "c"], _convert_="all")
    assert module.model.num_classes == 3
    optimizer = module.optimizer_factory(module.parameter_groups())
    assert isinstance(optimizer, torch.optim.AdamW)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_follows_the_hardware_gpus_and_cpus_alike(monkeypatch, caplog, native_bf16: bool):
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: native_bf16)
    with caplog.at_level(logging.INFO, logger="vitlit"):
        assert resolve_precision(None, "cpu") == ("bf16-mixed" if native_bf16 else "32-true")
    capability = torch.backends.cpu.get_cpu_capability()
    reason = "computes bfloat16 natively" if native_bf16 else "has no native bfloat16"
    assert f"this CPU ({capability}) {reason}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitlit"):
        assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # an explicit choice is kept
    assert ("many times slower" in caplog.text) is not native_bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision(None, "auto") == "bf16-mixed"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitlit"):
        assert resolve_precision("bf16-mixed", "auto") == "bf16-mixed"
    assert "many times slower" not in caplog.text  # bf16 on the GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision(None, "gpu") == "16-mixed"
