"""The real pizza_steak_sushi data (``VITLIT_DATA_DIR``) and the full ViT-B/16, for a couple of batches."""

from pathlib import Path

import pytest
from conftest import compose_config, fill_torch_hub_cache

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.training import train

pytestmark = pytest.mark.integration


def test_pizza_steak_sushi_has_the_documented_classes_and_split_sizes(real_data_dir: Path):
    data = ImageFolderDataModule(real_data_dir / "pizza_steak_sushi", num_workers=0)
    data.setup()
    assert data.class_names == ("pizza", "steak", "sushi")
    assert data.splits["train"].class_counts() == {"pizza": 78, "steak": 75, "sushi": 72}
    assert data.splits["test"].class_counts() == {"pizza": 25, "steak": 19, "sushi": 31}
    assert data.stage_folders() == {"train": "train", "val": "test", "test": "test"}


def test_default_config_trains_vit_b16_on_the_real_data(real_data_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VITLIT_DATA_DIR", str(real_data_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    fill_torch_hub_cache(tmp_path / "torch_home")  # the default recipe's ImageNet weights, random here
    overrides = [
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar=null",
    ]
    cfg = compose_config(overrides, output_dir=tmp_path)
    assert cfg.model.net.embed_dim == 768 and cfg.model.net.depth == 12 and cfg.model.freeze_backbone is True
    metrics = train(cfg)
    assert 0.0 < metrics["train/loss"] < 5.0
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "checkpoints" / "last.ckpt").stat().st_size > 4 * 85_800_963  # fp32 weights of ViT-B/16
