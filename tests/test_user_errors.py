"""Every command's user errors are one message, ``Error: ...``, exit status 1 and no traceback (the cases of
docs/troubleshooting.md); ``HYDRA_FULL_ERROR=1`` still shows the full trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, make_image_folder

TRACEBACK = "Traceback (most recent call last)"


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"} | env
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def train_py(*overrides: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), *overrides]


def module(name: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", f"vitlit.{name}", *arguments]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("user_errors")
    make_image_folder(tmp / "images", {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    (tmp / "notes.txt").write_text("not a checkpoint")
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp / "other.ckpt")
    return {"images": tmp / "images", "notes": tmp / "notes.txt", "other": tmp / "other.ckpt", "tmp": tmp}


CASES = {
    "missing data root": (
        lambda f: train_py(*TINY_RUN, f"data.root={f['tmp'] / 'nowhere'}"),
        "Error: ",
        "nowhere",
    ),
    "a value of the wrong type": (
        lambda f: train_py(*TINY_RUN, f"data.root={f['images']}", "data.batch_size=abc"),
        "Error: ",
        "data.batch_size='abc' is a str",
    ),
    "an impossible model": (
        lambda f: train_py(*TINY_RUN, f"data.root={f['images']}", "model.net.num_heads=5"),
        "Error: ",
        "embed_dim=64 is not divisible by num_heads=5",
    ),
    "ckpt_path that is not a vitlit checkpoint (train)": (
        lambda f: train_py(*TINY_RUN, f"data.root={f['images']}", f"ckpt_path={f['notes']}"),
        "Error: ",
        "notes.txt is not a vitlit checkpoint",
    ),
    "a misspelled key": (
        lambda f: train_py(*TINY_RUN, f"data.root={f['images']}", "data.batchsize=8"),
        "Could not override 'data.batchsize'",
        "",
    ),
    "eval of a missing checkpoint": (
        lambda f: module("eval", f"ckpt_path={f['tmp'] / 'missing.ckpt'}"),
        "Error: no checkpoint at",
        "missing.ckpt",
    ),
    "predict with a checkpoint of another program": (
        lambda f: module("predict", f"ckpt_path={f['other']}", f"inputs={f['images']}"),
        "Error: ",
        "other.ckpt is not a vitlit checkpoint",
    ),
    "a run folder that cannot be created (train)": (
        lambda f: train_py(*TINY_RUN, f"data.root={f['images']}", f"hydra.run.dir={f['notes']}/run"),
        "Error: cannot create the folder",
        "notes.txt/run (Not a directory",
    ),
    "a run folder that cannot be created (predict)": (
        lambda f: module("predict", f"inputs={f['images']}", f"hydra.run.dir={f['notes']}/r"),
        "Error: cannot create the folder",
        "choose another hydra.run.dir=...",
    ),
    "export of a file that is not a checkpoint": (
        lambda f: module("export", str(f["notes"]), str(f["tmp"] / "out.safetensors")),
        "Error: ",
        "notes.txt is not a vitlit checkpoint",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_message_without_a_traceback(files, case: str):
    command, start, named = CASES[case]
    result = run(command(files), cwd=files["tmp"])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert start in result.stderr and named in result.stderr, result.stderr
    assert TRACEBACK not in result.stderr + result.stdout
    assert files["notes"].read_text() == "not a checkpoint"


def test_hydra_full_error_shows_the_full_trace(files):
    command, _, named = CASES["an impossible model"]
    result = run(command(files), cwd=files["tmp"], HYDRA_FULL_ERROR="1")
    assert result.returncode == 1 and TRACEBACK in result.stderr and named in result.stderr
