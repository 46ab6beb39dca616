"""Bad input: unusual and broken images, layout problems, wrong config values and checkpoints that do not fit.

Every case is generated here in a temporary folder; each test asserts the exact behaviour and, where files
existed before, that they are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, compose_config, make_image_folder, write_image
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from PIL import Image, features

from vitlit.data import checks as data_checks
from vitlit.data.checks import find_bad_images
from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.image_folder import load_rgb, scan_split
from vitlit.training.checkpoints import check_checkpoint_fits, load_backbone
from vitlit.training.config_checks import check_config_types, check_config_values
from vitlit.training.module import ViTClassifier

MICRO_NET = {"embed_dim": 64, "depth": 1, "num_heads": 4, "mlp_dim": 128, "image_size": 32, "patch_size": 16}


@pytest.fixture(autouse=True)
def image_check_cache(tmp_path: Path, monkeypatch) -> Path:
    """Keep the decode-check cache of these tests out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, **{"batch_size": 4, "num_workers": 0, "image_size": 32, **kwargs})


# --- images that decode but are unusual --------------------------------------------------------------------


def rgb_array(colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> np.ndarray:
    return np.full((size[1], size[0], 3), colour, dtype=np.uint8)


def save_grayscale(path: Path) -> tuple[int, ...]:
    Image.fromarray(np.full((12, 20), 100, np.uint8)).save(path)
    return (100, 100, 100)


def save_rgba(path: Path) -> tuple[int, ...]:
    Image.fromarray(np.dstack([rgb_array((10, 20, 30)), np.full((12, 20), 128, np.uint8)])).save(path)
    return (10, 20, 30)


def save_la(path: Path) -> tuple[int, ...]:
    Image.fromarray(np.full((12, 20), 90, np.uint8)).convert("LA").save(path)
    return (90, 90, 90)


def save_palette(path: Path) -> tuple[int, ...]:
    Image.fromarray(rgb_array((255, 0, 0))).convert("P").save(path)
    return (255, 0, 0)


def save_cmyk_jpeg(path: Path) -> tuple[int, ...]:
    Image.fromarray(rgb_array((100, 150, 200))).convert("CMYK").save(path, quality=100)
    return (100, 150, 200)


def save_16_bit_png(path: Path) -> tuple[int, ...]:
    Image.fromarray(np.full((12, 20), 40000, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    return (156, 156, 156)  # 40000 / 65535 * 255, where a plain convert("RGB") gives 255


def save_webp(path: Path) -> tuple[int, ...]:
    Image.fromarray(rgb_array((40, 160, 80))).save(path, lossless=True)
    return (40, 160, 80)


@pytest.mark.parametrize(
    ("name", "save"),
    [
        ("gray.png", save_grayscale),
        ("rgba.png", save_rgba),
        ("la.png", save_la),
        ("palette.gif", save_palette),
        ("cmyk.jpg", save_cmyk_jpeg),
        ("sixteen_bit.png", save_16_bit_png),
        pytest.param(
            "lossless.webp", save_webp, marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP")
        ),
    ],
)
def test_unusual_image_modes_load_as_8_bit_rgb_with_the_right_colour(tmp_path: Path, name: str, save):
    path = tmp_path / name
    expected = save(path)
    image = load_rgb(path)
    assert image.shape == (3, 12, 20) and image.dtype == torch.uint8
    assert torch.allclose(image.float().mean(dim=(1, 2)), torch.tensor(expected, dtype=torch.float32), atol=3)


def test_exif_rotated_jpeg_loads_upright(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide and 20 high, shown rotated by 90 degrees
    Image.fromarray(rgb_array((0, 0, 0), (40, 20))).save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").shape == (3, 40, 20)


def test_tiny_large_upper_case_and_unicode_named_images_all_train(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    cat = root / "train" / "cat"
    write_image(cat / "tiny.JPG", (200, 60, 40), (10, 10), 0)
    Image.new("RGB", (3000, 2000), (200, 60, 40)).save(cat / "large.JPEG")
    write_image(cat / "UPPER.PNG", (200, 60, 40), (30, 30), 1)
    write_image(cat / "café_猫_ñ.jpg", (200, 60, 40), (30, 30), 2)
    data = datamodule(root)
    data.setup("fit")
    assert data.splits["train"].class_counts() == {"cat": 6, "dog": 2}
    images = [image for image, _ in data.datasets["train"]]
    assert len(images) == 8 and all(image.shape == (3, 32, 32) for image in images)


def test_a_decompression_bomb_is_listed_with_a_clear_reason_not_a_crash(tmp_path: Path, monkeypatch):
    write_image(tmp_path / "huge.png", (0, 0, 0), (100, 100), 0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if the image had 2 x 89M pixels and more
    bad = find_bad_images([str(tmp_path / "huge.png")])
    assert bad[str(tmp_path / "huge.png")].startswith("too large to decode safely")
    assert "PIL.Image.MAX_IMAGE_PIXELS" in bad[str(tmp_path / "huge.png")]


# --- images that do not decode -----------------------------------------------------------------------------


@pytest.fixture
def folder_with_bad_images(image_folder: Path) -> tuple[Path, list[Path]]:
    """The shared tiny folder plus a zero-byte, a truncated and a not-an-image file, all named like images."""
    good = (image_folder / "train" / "cat" / "0.jpg").read_bytes()
    bad = [image_folder / "train" / "cat" / "empty.jpg", image_folder / "train" / "dog" / "truncated.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(good[: len(good) // 2])
    bad.append(image_folder / "test" / "dog" / "notes.jpg")
    bad[2].write_text("this is not a picture")
    return image_folder, bad


def test_undecodable_images_stop_set_up_with_one_error_listing_every_file(folder_with_bad_images):
    root, bad = folder_with_bad_images
    before = snapshot(root)
    with pytest.raises(ValueError, match=r"3 of 21 images cannot be decoded") as error:
        datamodule(root).setup("fit")
    for path in bad:
        assert str(path) in str(error.value)
    assert "data.bad_images=skip" in str(error.value)
    assert snapshot(root) == before  # nothing written into the data folder


def test_skip_drops_undecodable_images_with_one_warning_listing_them(folder_with_bad_images, caplog):
    root, bad = folder_with_bad_images
    with caplog.at_level(logging.WARNING, logger="vitlit"):
        data = datamodule(root, bad_images="skip")
        data.setup("fit")
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and all(str(path) in warnings[0] for path in bad)
    assert len(data.datasets["train"]) == 12 and len(data.datasets["val"]) == 6
    assert len([image for image, _ in data.datasets["train"]]) == 12  # every kept image loads


def test_a_class_left_without_images_by_skip_is_an_error_naming_it(image_folder: Path):
    for path in (image_folder / "train" / "dog").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"class folder .*train/dog holds no image that decodes"):
        datamodule(image_folder, bad_images="skip").setup("fit")


def test_decode_verdicts_are_cached_by_size_and_mtime(folder_with_bad_images, monkeypatch):
    root, bad = folder_with_bad_images
    paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
    cache = root.parent / "verdicts.json"
    first = find_bad_images(paths, cache, workers=2)
    assert sorted(first) == sorted(str(p) for p in bad)
    checked = []
    real_decode_problem = data_checks.decode_problem
    monkeypatch.setattr(data_checks, "decode_problem", lambda path: checked.append(path) or real_decode_problem(path))
    assert find_bad_images(paths, cache, workers=2) == first
    assert checked == []  # the second run decodes nothing
    write_image(bad[0], (0, 0, 0), (20, 20), 0)  # repaired: new size and mtime
    assert sorted(find_bad_images(paths, cache, workers=2)) == sorted(str(p) for p in bad[1:])
    assert checked == [str(bad[0])]


def test_an_unknown_bad_images_policy_is_a_clear_error(image_folder: Path):
    with pytest.raises(ValueError, match=r"data.bad_images='ignore' is not one of error, skip"):
        datamodule(image_folder, bad_images="ignore")


# --- layout problems -----------------------------------------------------------------------------------------


def test_images_directly_in_a_split_folder_are_ignored_with_a_warning_naming_them(image_folder: Path, caplog):
    write_image(image_folder / "train" / "stray.jpg", (0, 0, 0), (20, 20), 0)
    with caplog.at_level(logging.WARNING, logger="vitlit"):
        split = scan_split(image_folder / "train")
    assert split.class_counts() == {"cat": 6, "dog": 6}
    assert "stray.jpg" in caplog.text and "belong to no class" in caplog.text


def test_symlinked_images_and_class_folders_are_followed_and_broken_links_reported(image_folder: Path, tmp_path):
    elsewhere = make_image_folder(tmp_path / "elsewhere", {"owls": {"owl": 2}})
    (image_folder / "train" / "owl").symlink_to(elsewhere / "owls" / "owl", target_is_directory=True)
    (image_folder / "test" / "owl").mkdir()
    (image_folder / "test" / "owl" / "linked.jpg").symlink_to(elsewhere / "owls" / "owl" / "0.jpg")
    (image_folder / "test" / "owl" / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ValueError, match=r"1 of 22 images cannot be decoded:\n.*test/owl/broken.jpg: cannot be opened"):
        datamodule(image_folder).setup("fit")
    (image_folder / "test" / "owl" / "broken.jpg").unlink()
    data = datamodule(image_folder)
    data.setup("fit")
    assert data.splits["train"].class_counts() == {"cat": 6, "dog": 6, "owl": 2}
    assert data.splits["test"].class_counts() == {"cat": 3, "dog": 3, "owl": 1}


def test_hidden_files_and_folders_inside_class_folders_are_ignored(image_folder: Path):
    write_image(image_folder / "train" / "cat" / ".hidden.jpg", (0, 0, 0), (20, 20), 0)
    write_image(image_folder / "train" / "cat" / ".thumbnails" / "0.jpg", (0, 0, 0), (20, 20), 0)
    assert scan_split(image_folder / "train").class_counts() == {"cat": 6, "dog": 6}


def test_a_missing_train_split_is_a_clear_error(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"test": {"cat": 1}})
    with pytest.raises(FileNotFoundError, match=r"split folder .*images/train does not exist"):
        datamodule(root).setup("fit")


def test_set_up_logs_a_table_of_images_per_class_and_split(tmp_path: Path, caplog):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 5, "dog": 4}, "test": {"cat": 2, "dog": 3}})
    with caplog.at_level(logging.INFO, logger="vitlit"):
        datamodule(root).setup("fit")
    assert "class   train    test\ncat         5       2\ndog         4       3\ntotal       9       5" in caplog.text


# --- config values --------------------------------------------------------------------------------------------


def test_a_misspelled_config_key_is_an_error_naming_it():
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'data.batchsize'"):
        compose_config(["data.batchsize=8"])


def test_config_values_of_the_wrong_type_are_listed_with_the_expected_type(tmp_path: Path):
    overrides = [*TINY_RUN, "data.root=x", "data.batch_size=abc", "model.net.depth=2.5", "trainer.max_epochs=ten"]
    with pytest.raises(ValueError, match=r"config values of the wrong type") as error:
        check_config_types(compose_config(overrides, output_dir=tmp_path))
    assert error.value.args[0].splitlines()[1:4] == [
        "  data.batch_size='abc' is a str; ImageFolderDataModule expects batch_size: int",
        "  model.net.depth=2.5 is a float; ViT expects depth: int",
        "  trainer.max_epochs='ten' is a str; Trainer expects max_epochs: Optional[int]",
    ]


@pytest.mark.parametrize("config", [["model=vit_b16"], ["model=vit_micro", "experiment=reference_scratch"]])
def test_shipped_configs_pass_the_type_check(tmp_path: Path, config: list[str]):
    check_config_types(compose_config([*config, "data.root=x"], output_dir=tmp_path))


def test_an_impossible_model_shape_is_a_clear_error(tmp_path: Path):
    cfg = compose_config([*TINY_RUN, "data.root=x", "model.net.num_heads=5"], output_dir=tmp_path)
    with pytest.raises(Exception, match=r"embed_dim=64 is not divisible by num_heads=5"):
        instantiate(cfg.model, class_names=["a", "b"], _convert_="all")


def test_a_batch_larger_than_the_training_set_is_one_batch_even_with_drop_last(image_folder: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="vitlit"):
        data = datamodule(image_folder, batch_size=64, drop_last=True)
        data.setup("fit")
    assert "data.batch_size=64 is larger than the 12 training images" in caplog.text
    assert "kept although data.drop_last=true" in caplog.text
    assert [len(labels) for _, labels in data.train_dataloader()] == [12]


def test_the_datasets_pickle_for_spawned_workers(image_folder: Path):
    data = datamodule(image_folder)
    data.setup("fit")
    # Without fork (macOS, Windows) workers get the dataset by pickle; num_workers=0 needs nothing.
    copy = pickle.loads(pickle.dumps(data.datasets["val"]))
    assert torch.equal(copy[0][0], data.datasets["val"][0][0])


def test_gradient_clipping_is_on_by_default_where_the_whole_network_trains():
    cfg = compose_config(["model=vit_s16"])
    assert cfg.trainer.gradient_clip_val == 1.0
    assert compose_config([]).trainer.gradient_clip_val is None  # the head-only default recipe, as the notebook
    assert cfg.trainer.get("gradient_clip_algorithm", "norm") == "norm"


# --- checkpoints that do not fit ------------------------------------------------------------------------------


def save_checkpoint(path: Path, class_names: list[str], **net) -> ViTClassifier:
    module = ViTClassifier(net={**MICRO_NET, **net}, class_names=class_names)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return module


def test_a_checkpoint_with_another_class_count_is_an_error_naming_both_shapes(tmp_path: Path):
    save_checkpoint(tmp_path / "three.ckpt", ["a", "b", "c"])
    before = snapshot(tmp_path)
    module = ViTClassifier(net=MICRO_NET, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match=r"does not fit") as error:
        check_checkpoint_fits(module, tmp_path / "three.ckpt")
    message = str(error.value)
    assert "model.classifier.head.weight: (3, 64) in the checkpoint, (2, 64) in this run's model" in message
    assert "3 classes (a, b, c); this run's data has 2 (cat, dog)" in message and "reinit_head=true" in message
    assert snapshot(tmp_path) == before


def test_a_checkpoint_of_another_model_size_is_an_error_naming_both_shapes(tmp_path: Path):
    save_checkpoint(tmp_path / "wide.ckpt", ["cat", "dog"], embed_dim=96, num_heads=4)
    module = ViTClassifier(net=MICRO_NET, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match=r"model.class_embedding: \(1, 1, 96\) in the checkpoint, \(1, 1, 64\)"):
        check_checkpoint_fits(module, tmp_path / "wide.ckpt")
    with pytest.raises(ValueError, match=r"the backbone of checkpoint .* does not fit"):
        load_backbone(module, tmp_path / "wide.ckpt")


def test_reinit_head_loads_the_backbone_and_starts_a_new_zero_head(tmp_path: Path):
    source = save_checkpoint(tmp_path / "three.ckpt", ["a", "b", "c"])
    torch.nn.init.normal_(source.model.classifier.norm.weight)  # so that a skipped load would show
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, tmp_path / "three.ckpt")
    module = ViTClassifier(net=MICRO_NET, class_names=["cat", "dog"])
    load_backbone(module, tmp_path / "three.ckpt")
    for name, tensor in module.state_dict().items():
        if name.startswith("model.classifier.head."):
            assert tensor.shape[0] == 2 and not tensor.any()
        else:
            assert torch.equal(tensor, source.state_dict()[name]), name


def test_a_missing_checkpoint_file_is_a_clear_error(tmp_path: Path):
    module = ViTClassifier(net=MICRO_NET, class_names=["cat", "dog"])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nothing.ckpt"):
        check_checkpoint_fits(module, tmp_path / "nothing.ckpt")


def test_train_script_reports_bad_images_without_a_traceback_through_lightning(folder_with_bad_images, tmp_path):
    root, bad = folder_with_bad_images
    before = snapshot(root)
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        *TINY_RUN,
        f"data.root={root}",
        f"hydra.run.dir={tmp_path}/run",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 1
    assert "Error: 3 of 21 images cannot be decoded" in result.stderr and "Traceback" not in result.stderr
    assert all(str(path) in result.stderr for path in bad)
    assert "site-packages" not in result.stderr  # no frames from Lightning or Hydra
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("data.num_workers=-2", "data.num_workers=-2 must be 0 or more"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0 must be above 0"),
        ("model.optimizer.lr=-1e-3", "model.optimizer.lr=-0.001 must be above 0"),
        ("model.optimizer.weight_decay=-0.1", "model.optimizer.weight_decay=-0.1 must be 0 or more"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be at least 1"),
        ("data.eval_crop_fraction=1.5", "data.eval_crop_fraction=1.5 must be in (0, 1]"),
        ("data.eval_crop_fraction=[0.875,0]", "data.eval_crop_fraction=[0.875, 0] must be in (0, 1]"),
        ("data.train_crop_scale=[0.9,0.1]", "data.train_crop_scale=[0.9, 0.1] must be [min, max]"),
        ("model.net.dropout=1.0", "model.net.dropout=1.0 must be a probability in [0, 1)"),
        ("model.net.drop_path_rate=-0.1", "model.net.drop_path_rate=-0.1 must be a probability"),
        ("model.label_smoothing=1.0", "model.label_smoothing=1.0 must be in [0, 1)"),
        ("data.random_erasing=1.5", "data.random_erasing=1.5 must be a probability in [0, 1]"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 must be in [0, 1)"),
        ("model.layer_decay=1.5", "model.layer_decay=1.5 must be in (0, 1], or null"),
        ("model.relative_localization_weight=-0.1", "model.relative_localization_weight=-0.1 must be >= 0"),
        ("model.locality_guidance={weight:-1}", "model.locality_guidance.weight=-1 must be >= 0"),
        ("model.locality_guidance={steps:0}", "model.locality_guidance.steps=0 must be at least 1"),
    ],
)
def test_impossible_numbers_are_named_before_anything_is_built(tmp_path: Path, override: str, named: str):
    cfg = compose_config([*TINY_RUN, "data.root=x", override], output_dir=tmp_path)
    with pytest.raises(ValueError, match=re.escape(named)):
        check_config_values(cfg)


@pytest.mark.parametrize(
    "preset", [[], ["experiment=scratch"], ["experiment=finetune"], ["experiment=reference_scratch"], ["model=vit_s16"]]
)
def test_the_shipped_presets_have_possible_numbers(tmp_path: Path, preset: list[str]):
    check_config_values(compose_config([*preset, "data.root=x"], output_dir=tmp_path))


def test_a_data_root_that_is_a_file_is_named(tmp_path: Path):
    (tmp_path / "images.zip").write_bytes(b"PK")
    with pytest.raises(NotADirectoryError, match=r"data.root=.*images.zip is a file, not a folder"):
        datamodule(tmp_path / "images.zip").prepare_data()


def test_names_with_spaces_accents_and_brackets_folders_named_like_images_and_link_loops(tmp_path: Path):
    root = make_image_folder(tmp_path / "my images", {"train": {"cat [1] é": 3, "dog x": 3}, "test": {"dog x": 1}})
    (root / "test" / "cat [1] é").mkdir()
    write_image(root / "test" / "cat [1] é" / "photo (2) ü.jpg", (200, 60, 40), (48, 48), 0)
    (root / "train" / "dog x" / "folder.jpg").mkdir()  # a folder named like an image: not an image
    (root / "train" / "dog x" / "loop").symlink_to(root / "train")  # a scan must terminate
    data = datamodule(root)
    data.setup("fit")
    assert data.class_names == ("cat [1] é", "dog x") and len(data.datasets["train"]) == 6
