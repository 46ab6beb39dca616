"""DDP ranks fail together: a NaN loss or a data error on one of two CPU processes (gloo) ends the whole run.

Each test runs train.py as a subprocess; its timeout is what proves that no rank is left waiting in a collective.
The injected faults are callbacks in this module, which the relaunched rank imports too (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, make_image_folder
from torch.utils.data import Dataset

TESTS_DIR = Path(__file__).resolve().parent
# A healthy run of this size takes about 30 s on 2 CPU cores; a rank stuck in a collective would wait for gloo's
# 30-minute timeout.
TIMEOUT_S = 240


class NanLossOnRank(L.Callback):
    """Fills one rank's batch with NaN at one step, so that only that rank's loss is NaN."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class FailAfter(Dataset):
    """``dataset``, except that reading more than ``count`` items raises OSError (a disk or network error)."""

    def __init__(self, dataset: Dataset, count: int) -> None:
        self.dataset, self.count, self.read = dataset, count, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.read += 1
        if self.read > self.count:
            raise OSError(f"injected read error after {self.count} training images")
        return self.dataset[index]


class DataErrorOnRank(L.Callback):
    """Makes one rank's training images fail to load after ``count`` of them."""

    def __init__(self, rank: int, count: int) -> None:
        self.rank, self.count = rank, count

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Runs after the data module's setup and before Lightning builds the training loader from its datasets.
        if stage == "fit" and trainer.global_rank == self.rank:
            datasets = trainer.datamodule.datasets
            datasets["train"] = FailAfter(datasets["train"], self.count)


def run_ddp(tmp_path: Path, *overrides: str) -> tuple[int, str, float]:
    """train.py on 2 CPU processes: (exit status, rank 0's and rank 1's output together, seconds taken).

    Fails the test if the run is still going after TIMEOUT_S; every process of the run is killed then.
    """
    # 16 training images: 8 per rank, 2 batches of 4 per rank and epoch. test/ serves as the validation split.
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 4, "dog": 4}})
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        *TINY_RUN,
        f"data.root={root}",
        "test=false",
        "callbacks.model_summary=null",
        "trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]
    python_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    start = time.monotonic()
    # A session of its own, so that a timeout can end rank 0 and the rank it launched together.
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the DDP run was still going after {TIMEOUT_S} s (a rank hangs):\n{output[-4000:]}")
    return process.returncode, output, time.monotonic() - start


@pytest.mark.parametrize("rank", [1, 0])
def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step_naming_the_last_checkpoint(tmp_path: Path, rank):
    callback = f"+callbacks.nan_loss={{_target_: test_ddp_failures.NanLossOnRank, rank: {rank}, step: 2}}"
    status, output, seconds = run_ddp(tmp_path, "trainer.max_epochs=3", callback)
    print(f"NaN on rank {rank}: exit status {status} after {seconds:.1f} s")
    assert status != 0, output[-4000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    message = f"Error: training loss is nan on rank {rank} (of 2 processes) at step 2 (epoch 2, batch 1); learning rate"
    assert output.count(message) == 2, output[-4000:]  # the same message from both ranks
    assert output.count(f"Last good checkpoint: {checkpoint}.") == 2, output[-4000:]
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == 2 and all(t.isfinite().all() for t in saved["state_dict"].values())


@pytest.mark.parametrize("rank", [1, 0])
def test_a_data_loading_error_on_one_rank_ends_the_whole_run(tmp_path: Path, rank):
    callback = f"+callbacks.data_error={{_target_: test_ddp_failures.DataErrorOnRank, rank: {rank}, count: 4}}"
    status, output, seconds = run_ddp(tmp_path, "trainer.max_epochs=3", callback)
    print(f"data error on rank {rank}: exit status {status} after {seconds:.1f} s")
    assert status != 0, output[-4000:]
    assert "injected read error after 4 training images" in output, output[-4000:]
