"""Every photo format users have: what torchvision's ImageFolder reads, GIF, and phones' HEIC/HEIF (with
pillow-heif, the heif extra); every other file is counted by extension in one warning per split or folder.
CMYK, 16-bit, palette and EXIF photos: tests/test_bad_input.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from torchvision.datasets import ImageFolder

from vitlit.data.image_folder import IMAGE_EXTENSIONS, load_rgb, scan_split
from vitlit.predict import image_files

COLOURS = {"cat": (200, 60, 40), "dog": (40, 80, 200)}
IMAGE_FOLDER_FORMATS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def save_photo(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((24, 32, 3), colour, dtype=np.uint8))
    if path.suffix == ".pgm":  # grayscale only
        image = image.convert("L")
    image.save(path)


def photos_in_every_format(split: Path) -> None:
    for name, colour in COLOURS.items():
        for suffix in IMAGE_FOLDER_FORMATS:
            save_photo(split / name / f"photo{suffix.upper() if suffix == '.tif' else suffix}", colour)
        (split / name / "notes.txt").write_text("not a photo")
        (split / name / "scan.raw").write_bytes(b"\0" * 10)


def test_a_folder_gives_the_dataset_torchvisions_image_folder_gives(tmp_path: Path, caplog):
    photos_in_every_format(tmp_path / "train")
    with caplog.at_level(logging.WARNING, logger="vitlit"):
        split = scan_split(tmp_path / "train")
    reference = ImageFolder(str(tmp_path / "train"))
    assert split.classes == tuple(reference.classes)
    assert sorted(split.samples) == sorted(reference.samples)
    assert len(split.samples) == 2 * len(IMAGE_FOLDER_FORMATS)
    for path, label in split.samples:
        expected = COLOURS[split.classes[label]]
        if path.endswith(".pgm"):
            expected = (round(0.299 * expected[0] + 0.587 * expected[1] + 0.114 * expected[2]),) * 3
        assert (load_rgb(path)[:, 5, 5].int() - torch.tensor(expected)).abs().max() <= 3, path
    [warning] = [record.getMessage() for record in caplog.records if "not images" in record.getMessage()]
    assert f"ignored 4 files in {tmp_path / 'train'}" in warning and warning.endswith(": .raw (2), .txt (2)")


def test_predict_reads_every_format_in_its_folders_and_counts_the_other_files(tmp_path: Path, caplog):
    photos_in_every_format(tmp_path / "photos")
    with caplog.at_level(logging.WARNING, logger="vitlit"):
        files, problems = image_files([str(tmp_path / "photos")])
    assert not problems
    assert sorted(name.suffix.lower() for name in files.values()) == sorted(IMAGE_FOLDER_FORMATS * 2)
    assert any("ignored 4 files" in record.getMessage() for record in caplog.records)


def test_the_shard_writer_takes_every_format(tmp_path: Path):
    pytest.importorskip("litdata", reason="the streaming extra: pip install 'vitlit[streaming]'")
    from vitlit.data.shards import optimize_image_folder

    photos_in_every_format(tmp_path / "images" / "train")
    optimize_image_folder(tmp_path / "images", tmp_path / "shards", workers=1)
    assert json.loads((tmp_path / "shards" / "classes.json").read_text())["splits"] == {"train": 18}


def test_heic_photos_decode_with_pillow_heif(tmp_path: Path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heif extra: pip install 'vitlit[heif]'")
    assert {".heic", ".heif"} <= IMAGE_EXTENSIONS
    for name, colour in COLOURS.items():
        (tmp_path / "train" / name).mkdir(parents=True)
        photo = pillow_heif.from_pillow(Image.fromarray(np.full((24, 32, 3), colour, dtype=np.uint8)))
        photo.save(tmp_path / "train" / name / "IMG_0001.HEIC", quality=95)
    split = scan_split(tmp_path / "train")
    assert [Path(path).name for path, _ in split.samples] == ["IMG_0001.HEIC", "IMG_0001.HEIC"]
    assert (load_rgb(split.samples[0][0])[:, 5, 5].int() - torch.tensor(COLOURS["cat"])).abs().max() <= 4


def test_without_pillow_heif_heic_photos_are_named_with_the_install_line(tmp_path: Path):
    save_photo(tmp_path / "train" / "cat" / "a.jpg", COLOURS["cat"])
    (tmp_path / "train" / "cat" / "IMG_0001.heic").write_bytes(b"\0" * 10)
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "IMG_0002.HEIC").write_bytes(b"\0" * 10)
    script = textwrap.dedent(f"""
        import logging, sys
        from pathlib import Path
        sys.modules["pillow_heif"] = None  # as if the heif extra were not installed
        logging.basicConfig(format="%(message)s")
        from vitlit.data.image_folder import scan_split
        from vitlit.predict import image_files
        print(image_files([{str(tmp_path / "train" / "cat" / "IMG_0001.heic")!r}])[1])
        scan_split(Path({str(tmp_path / "train")!r}))
    """)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300
    )
    install = 'HEIC/HEIF photos need pillow-heif: pip install "vitlit[heif]"'
    assert install in result.stdout  # predict names the photo with the install line
    assert "class folder" in result.stderr and "dog holds no images" in result.stderr and install in result.stderr
