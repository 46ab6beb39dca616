"""Bad ``ckpt_path`` values, for resume (train), eval and predict alike: truncated or corrupted vitlit checkpoints,
files of other programs, folders and missing paths. Each is refused with one message naming the path, before
anything is trained or written, and the file is left as it was."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, TINY_RUN, compose_config, make_image_folder
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from safetensors.torch import save_file

from vitlit.eval import evaluate
from vitlit.predict import predict
from vitlit.training import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A real 1-epoch checkpoint, the image folder it was trained on, and bad files made from it and by others."""
    tmp = tmp_path_factory.mktemp("checkpoint_corpus")
    root = make_image_folder(tmp / "images", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    train(compose_config([*TINY_RUN, f"data.root={root}", "trainer.max_epochs=1", "test=false"], tmp / "run"))
    good = (tmp / "run" / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    with zipfile.ZipFile(tmp / "run" / "checkpoints" / "last.ckpt") as archive:  # flip bytes inside one tensor
        record = next(info for info in archive.infolist() if "/data/" in info.filename and info.file_size > 1000)
        start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra) + 100
    flipped = bytearray(good)
    flipped[start : start + 64] = bytes(byte ^ 0xFF for byte in flipped[start : start + 64])
    (bad / "corrupted.ckpt").write_bytes(bytes(flipped))
    (bad / "empty.ckpt").write_bytes(b"")
    save_file({"head.weight": torch.zeros(2, 4)}, bad / "model.safetensors")
    torch.save({"model": {"fc.weight": torch.zeros(2, 4)}, "epoch": 3}, bad / "state_dict.pth")
    torch.save(torch.nn.Linear(4, 2), bad / "pickled_module.pt")
    with zipfile.ZipFile(bad / "archive.zip", "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    (bad / "notes.txt").write_text("not a checkpoint")
    (bad / "folder").mkdir()
    return {"root": root, "bad": bad, "run_folder": tmp / "run", "photo": next((root / "test" / "cat").iterdir())}


CASES = {
    "truncated.ckpt": "is not a vitlit checkpoint: it cannot be read",
    "corrupted.ckpt": r"is not a vitlit checkpoint: it cannot be read \(its record .*/data/\d+ fails its checksum",
    "empty.ckpt": "is not a vitlit checkpoint: it cannot be read",
    "model.safetensors": "is not a vitlit checkpoint",
    "state_dict.pth": r"is not a vitlit checkpoint: it lacks .*top-level keys: \['epoch', 'model'\]",
    "pickled_module.pt": "is not a vitlit checkpoint: it cannot be read",
    "archive.zip": "is not a vitlit checkpoint",
    "notes.txt": "is not a vitlit checkpoint: it cannot be read",
    "folder": "is a folder, not a checkpoint file",
    "missing.ckpt": "no checkpoint at",
}


def command_config(name: str, overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def run_command(command: str, checkpoint: Path, corpus: dict[str, Path], output_dir: Path) -> None:
    if command == "resume":
        train(compose_config([*TINY_RUN, f"data.root={corpus['root']}", f"ckpt_path={checkpoint}"], output_dir))
    elif command == "eval":
        evaluate(command_config("eval", [f"ckpt_path={checkpoint}", "callbacks.progress_bar=null"], output_dir))
    else:
        predict(command_config("predict", [f"ckpt_path={checkpoint}", f"inputs=[{corpus['photo']}]"], output_dir))


@pytest.mark.parametrize("command", ["resume", "eval", "predict"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_ckpt_path_is_refused_naming_it_and_left_as_it_was(corpus, command: str, name: str, tmp_path: Path):
    checkpoint = corpus["bad"] / name
    before = checkpoint.read_bytes() if checkpoint.is_file() else None
    message = rf"{checkpoint}.*{CASES[name]}|{CASES[name]} {checkpoint}"  # "<path> is ..." or "no checkpoint at <path>"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_command(command, checkpoint, corpus, tmp_path / "out")
    if before is not None:
        assert checkpoint.read_bytes() == before
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()] if (tmp_path / "out").exists() else []
    assert not [path for path in written if path.suffix in (".ckpt", ".json", ".png")], written  # no result files


def test_the_good_checkpoint_works_for_every_command(corpus, tmp_path: Path):
    checkpoint = corpus["run_folder"] / "checkpoints" / "last.ckpt"
    for command in ("eval", "predict"):
        run_command(command, checkpoint, corpus, tmp_path / command)
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "predict" / "predictions.json").is_file()
