"""``kill -9`` at any moment of training never leaves a checkpoint that does not load, and ``hydra.run.dir=<run
folder> ckpt_path=last`` then finishes the run.

The set points are reached exactly: the training process runs train.py with ``os.replace``, ``tempfile.mkstemp``
and ``torch.save`` wrapped so that it sends itself SIGKILL halfway through writing the temporary ``last.ckpt``,
when the temporary file is whole but not yet renamed, or right after the rename. The random moments are real
``kill -9`` from outside at seeded times after the first checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RUN, compose_config, make_image_folder, train_with_log

from vitlit.training.checkpoints import read_checkpoint

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),  # resuming, as intended
]

EPOCHS = 3  # killed while saving epoch 2's last.ckpt: the resumed run has an epoch left to train
RANDOM_KILL_EPOCHS = 40  # long enough that a kill up to a second after the first checkpoint lands mid-run anywhere
RUN = [*TINY_RUN, "test=false", "callbacks.model_summary=null"]

# Runs train.py; argv: <point> <n> <overrides...>. The process kills itself at <point> of the n-th last.ckpt save.
KILL_AT_POINT = """
import io, os, runpy, signal, sys, tempfile
from pathlib import Path
import torch

point, nth = sys.argv[1], int(sys.argv[2])
sys.argv = [{train_py!r}, *sys.argv[3:]]
saves = 0
real_mkstemp, real_replace, real_save = tempfile.mkstemp, os.replace, torch.save

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def mkstemp(*args, **kwargs):
    global saves
    saves += str(kwargs.get("prefix", "")).startswith(".last.ckpt.")
    return real_mkstemp(*args, **kwargs)

def save(obj, file, *args, **kwargs):
    if point == "mid_write" and saves == nth and hasattr(file, "write"):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: buffer.tell() // 2])
        file.flush()
        kill()
    return real_save(obj, file, *args, **kwargs)

def replace(source, target, *args, **kwargs):
    at_it = Path(target).name == "last.ckpt" and saves == nth
    if at_it and point == "before_rename":
        kill()
    real_replace(source, target, *args, **kwargs)
    if at_it and point == "after_rename":
        kill()

tempfile.mkstemp, os.replace, torch.save = mkstemp, replace, save
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    # 12 training images in batches of 4: 3 steps per epoch.
    layout = {"train": {"cat": 6, "dog": 6}, "test": {"cat": 2, "dog": 2}}
    return make_image_folder(tmp_path_factory.mktemp("sigkill") / "images", layout)


def environment() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "PYTHONPATH": str(REPO_ROOT)}


def train_py(images: Path, run: Path, epochs: int) -> list[str]:
    overrides = [*RUN, f"trainer.max_epochs={epochs}", f"data.root={images}", f"hydra.run.dir={run}"]
    return [sys.executable, str(REPO_ROOT / "train.py"), *overrides]


def check_checkpoints_load(run: Path) -> None:
    for path in sorted((run / "checkpoints").glob("*.ckpt")):
        read_checkpoint(path)  # raises for a truncated or corrupted file (zip records are checked)


def resume_finishes(run: Path, images: Path, epochs: int = EPOCHS) -> None:
    """``ckpt_path=last`` in the run folder (in this process: train.py's own resume runs in
    tests/test_full_and_read_only_disks.py) trains the epochs left and ends with the last one's checkpoint."""
    overrides = [*RUN, f"trainer.max_epochs={epochs}", f"data.root={images}", "ckpt_path=last"]
    metrics, log = train_with_log(compose_config(overrides, output_dir=run))
    assert f"Epoch: {epochs} |" in log and "val/acc" in metrics
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == epochs - 1
    assert not [path.name for path in (run / "checkpoints").iterdir() if path.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize(
    "point, last_epoch_after_kill",
    [("mid_write", 0), ("before_rename", 0), ("after_rename", 1)],  # last.ckpt of epoch 1 (index 0) or of epoch 2
)
def test_a_kill_while_saving_last_ckpt_leaves_a_checkpoint_that_loads_and_the_run_resumes(
    images: Path, tmp_path: Path, point: str, last_epoch_after_kill: int
):
    run = tmp_path / "run"
    launcher = KILL_AT_POINT.format(train_py=str(REPO_ROOT / "train.py"))
    command = [sys.executable, "-c", launcher, point, "2", *train_py(images, run, EPOCHS)[2:]]
    killed = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    temporaries = [path for path in (run / "checkpoints").iterdir() if path.name.startswith(".last.ckpt.")]
    assert len(temporaries) == (0 if point == "after_rename" else 1)  # the kill came where it was meant to
    check_checkpoints_load(run)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == last_epoch_after_kill
    resume_finishes(run, images)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_kill_at_a_random_moment_leaves_checkpoints_that_load_and_the_run_resumes(images: Path, tmp_path: Path, seed):
    run = tmp_path / "run"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(train_py(images, run, RANDOM_KILL_EPOCHS), cwd=tmp_path, env=environment(), **quiet)
    first_checkpoint = run / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 300
        while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random(seed).uniform(0.0, 1.0))  # mid-run: a 40-epoch run outlasts it everywhere
        process.send_signal(signal.SIGKILL)
    finally:
        returncode = process.wait(timeout=60)
    assert returncode == -signal.SIGKILL, "the run ended before the kill"
    check_checkpoints_load(run)
    resume_finishes(run, images, RANDOM_KILL_EPOCHS)
