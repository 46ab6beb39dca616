import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import make_image_folder, write_image

from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.image_folder import download_and_extract, scan_split
from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    return ImageFolderDataModule(root, **kwargs)


def test_class_indices_follow_torchvision_image_folder(image_folder: Path):
    scanned = scan_split(image_folder / "train")
    reference = torchvision.datasets.ImageFolder(image_folder / "train")
    assert list(scanned.classes) == reference.classes == ["cat", "dog"]
    assert [(Path(p).name, label) for p, label in scanned.samples] == [
        (Path(p).name, label) for p, label in reference.samples
    ]


def test_batches_are_uint8_images_and_integer_labels(image_folder: Path):
    data = datamodule(image_folder, image_size=64)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8  # the module normalises on the device
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}


def test_eval_pipeline_normalises_with_imagenet_statistics():
    white = torch.full((3, 300, 400), 255, dtype=torch.uint8)
    out = eval_transform(224)(white)
    assert out.shape == (3, 224, 224)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)


def test_eval_pipeline_resizes_the_short_side_then_centre_crops():
    image = torch.zeros((3, 256, 512), dtype=torch.uint8)
    image[:, :, 192:320] = 255  # a white band in the middle third of the width
    out = eval_transform(224, crop_fraction=0.875, mean=(0, 0, 0), std=(1, 1, 1))(image)
    # resize to 256x512 (unchanged), crop the central 224x224: the band (128 px wide) stays centred
    assert out[:, :, 112].min() == 1.0
    assert out[:, :, 0].max() == 0.0


def test_train_pipeline_is_random_and_auto_augment_is_configurable():
    image = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)
    for policy in (None, "trivialaugment", "randaugment"):
        transform = train_transform(32, auto_augment=policy)
        first, second = transform(image), transform(image)
        assert first.shape == (3, 32, 32)
        assert not torch.equal(first, second)
    with pytest.raises(ValueError, match=r"data\.auto_augment='autoaug' is not one of"):
        train_transform(32, auto_augment="autoaug")


def test_validation_uses_test_split_when_there_is_no_val_split(image_folder: Path, caplog):
    data = datamodule(image_folder)
    with caplog.at_level("INFO", logger="vitlit"):
        data.setup("fit")
    assert data.stage_folders() == {"train": "train", "val": "test", "test": "test"}
    assert len(data.datasets["val"]) == 6
    assert f"val   uses {image_folder / 'test'}" in caplog.text


def test_val_split_is_preferred_for_validation_and_used_for_testing_when_alone(tmp_path: Path):
    both = make_image_folder(tmp_path / "both", {s: {"cat": 2, "dog": 2} for s in ("train", "val", "test")})
    assert datamodule(both).stage_folders() == {"train": "train", "val": "val", "test": "test"}
    only_val = make_image_folder(tmp_path / "only_val", {s: {"cat": 2, "dog": 2} for s in ("train", "val")})
    assert datamodule(only_val).stage_folders() == {"train": "train", "val": "val", "test": "val"}


def test_missing_root_without_download_names_the_path_and_data_root(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"no image folder at .*nowhere.*data\.root="):
        datamodule(tmp_path / "nowhere").prepare_data()


def test_a_root_without_val_or_test_is_a_clear_error(tmp_path: Path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 2}})
    with pytest.raises(FileNotFoundError, match="has neither val/ nor test/"):
        datamodule(root).setup("fit")


def test_an_empty_class_folder_is_a_clear_error_naming_it(image_folder: Path):
    (image_folder / "train" / "owl").mkdir()
    (image_folder / "test" / "owl").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*train/owl holds no images"):
        datamodule(image_folder).setup("fit")


def test_differing_class_sets_between_splits_are_a_clear_error(image_folder: Path):
    write_image(image_folder / "test" / "owl" / "0.jpg", (0, 0, 0), (40, 40), 0)
    with pytest.raises(ValueError, match=r"class folders differ .*only in test/: \['owl'\]"):
        datamodule(image_folder).setup("fit")


def test_a_split_without_class_folders_is_a_clear_error(tmp_path: Path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        scan_split(tmp_path / "train")


def test_non_image_files_and_hidden_entries_are_ignored(image_folder: Path):
    (image_folder / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (image_folder / "train" / "cat" / "notes.txt").write_text("not an image")
    (image_folder / "train" / ".cache").mkdir()
    write_image(image_folder / "train" / "cat" / "UPPER.JPG", (0, 0, 0), (40, 40), 0)
    split = scan_split(image_folder / "train")
    assert split.classes == ("cat", "dog")
    assert split.class_counts() == {"cat": 7, "dog": 6}


def zip_of(folder: Path, archive: Path, prefix: str = "") -> tuple[str, int]:
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in sorted(folder.rglob("*.jpg")):
            zip_file.write(path, prefix + str(path.relative_to(folder)))
    return hashlib.sha256(archive.read_bytes()).hexdigest(), archive.stat().st_size


@pytest.mark.parametrize("prefix", ["", "pizza_steak_sushi/"])
def test_download_verifies_the_checksum_and_extracts_into_root(image_folder: Path, tmp_path: Path, prefix: str):
    sha256, size = zip_of(image_folder, tmp_path / "data.zip", prefix)
    root = tmp_path / "datasets" / "downloaded"
    data = datamodule(root, download={"url": (tmp_path / "data.zip").as_uri(), "sha256": sha256, "size": size})
    data.prepare_data()
    assert data.class_names == ("cat", "dog")
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["downloaded"]  # no temporary left


def test_a_checksum_mismatch_leaves_no_dataset_behind(image_folder: Path, tmp_path: Path):
    zip_of(image_folder, tmp_path / "data.zip")
    root = tmp_path / "datasets" / "downloaded"
    with pytest.raises(RuntimeError, match=r"has sha256 .*, expected 000"):
        download_and_extract((tmp_path / "data.zip").as_uri(), root, sha256="0" * 64)
    assert list((tmp_path / "datasets").iterdir()) == []


def test_an_offline_download_says_where_it_looked_and_how_to_point_at_local_data(tmp_path: Path):
    root = tmp_path / "pizza_steak_sushi"
    data = datamodule(root, download={"url": "http://127.0.0.1:9/pizza_steak_sushi.zip", "sha256": "0" * 64})
    with pytest.raises(RuntimeError, match=rf"no data at {root}.*data\.root=/path/to/images"):
        data.prepare_data()


def test_an_existing_root_is_never_downloaded_over(image_folder: Path):
    before = sorted(p.stat().st_mtime_ns for p in image_folder.rglob("*"))
    data = datamodule(image_folder, download={"url": "http://127.0.0.1:9/x.zip", "sha256": "0" * 64})
    data.prepare_data()
    assert sorted(p.stat().st_mtime_ns for p in image_folder.rglob("*")) == before
