"""Faults during training never lose work: atomic checkpoints, a clean stop on NaN loss, SIGTERM then resume."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, compose_config
from lightning.pytorch.callbacks import ModelCheckpoint

from vitlit.training import faults, train
from vitlit.training.faults import AtomicCheckpointIO, NonFiniteLossError, StopOnNonFiniteLoss


@pytest.fixture(autouse=True)
def image_check_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_crash_while_saving_a_checkpoint_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    before = digest(path)

    def crash_half_way(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(faults.torch, "save", crash_half_way)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert digest(path) == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    monkeypatch.undo()
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}


def test_the_default_callbacks_and_plugins_guard_against_faults(tiny_config):
    cfg = tiny_config()
    targets = {entry._target_ for entry in cfg.callbacks.values() if entry is not None}
    assert {"vitlit.training.faults.StopOnNonFiniteLoss", "vitlit.training.faults.SaveOnInterrupt"} <= targets
    assert [plugin._target_ for plugin in cfg.trainer.plugins] == ["vitlit.training.faults.AtomicCheckpointIO"]


def test_a_nan_loss_stops_the_run_naming_step_and_learning_rate_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path: Path, monkeypatch
):
    real_cross_entropy = torch.nn.functional.cross_entropy
    training_calls = []

    def nan_from_the_fifth_training_step(logits, labels, label_smoothing=0.0):
        loss = real_cross_entropy(logits, labels, label_smoothing=label_smoothing)
        if label_smoothing > 0:  # training only: validation uses no smoothing
            training_calls.append(1)
            if len(training_calls) >= 5:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_from_the_fifth_training_step)
    cfg = tiny_config("model.label_smoothing=0.1", "trainer.max_epochs=3")  # 3 steps per epoch
    with pytest.raises(
        NonFiniteLossError, match=r"training loss is nan at step 4 \(epoch 2, batch 2\); learning rate"
    ) as error:
        train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert error.match(f"Last good checkpoint: {checkpoints / 'last.ckpt'}")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3 and all(t.isfinite().all() for t in last["state_dict"].values())


def test_an_infinite_loss_stops_too(tmp_path: Path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    checkpoint.best_model_path = str(tmp_path / "last.ckpt")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
    progress = SimpleNamespace(current=SimpleNamespace(ready=2))
    trainer = SimpleNamespace(
        optimizers=[optimizer],
        checkpoint_callbacks=[checkpoint],
        world_size=1,
        global_step=7,
        current_epoch=1,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )
    with pytest.raises(NonFiniteLossError, match=rf"inf at step 7 .*learning rate 0.25.*{tmp_path / 'last.ckpt'}"):
        StopOnNonFiniteLoss().on_before_backward(trainer, None, torch.tensor(float("inf")))


def start_train(*overrides: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(cwd / "cache")}
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resuming into a new run folder, as intended
def test_sigterm_saves_a_resumable_checkpoint_and_a_new_run_resumes_from_it(image_folder: Path, tmp_path: Path):
    common = [*TINY_RUN, f"data.root={image_folder}", "test=false", "callbacks.model_summary=null"]
    common += ["model.scheduler=null", "trainer.num_sanity_val_steps=0"]  # no schedule tied to max_epochs
    first = start_train(*common, "trainer.max_epochs=1000", f"hydra.run.dir={tmp_path / 'first'}", cwd=tmp_path)
    output = []
    for line in first.stdout:  # wait until training is under way
        output.append(line)
        if line.startswith("Epoch: 1 |"):
            break
    first.send_signal(signal.SIGTERM)
    rest, _ = first.communicate(timeout=120)
    output = "".join(output) + rest
    assert first.returncode == 0, output[-3000:]
    interrupted = tmp_path / "first" / "checkpoints" / "interrupted.ckpt"
    assert f"saved a resumable checkpoint to {interrupted}" in output
    assert "Traceback" not in output
    saved = torch.load(interrupted, weights_only=False)
    assert saved["global_step"] >= 3  # at least the first epoch's 3 steps
    first_files = {p: digest(p) for p in (tmp_path / "first").rglob("*") if p.is_file()}

    epochs = saved["epoch"] + 2  # the interrupted epoch and one more
    cfg = compose_config([*common, f"trainer.max_epochs={epochs}", f"ckpt_path={interrupted}"], tmp_path / "second")
    metrics = train(cfg)  # a new run, in this process to spare a second interpreter start
    resumed = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == epochs - 1 and resumed["global_step"] >= saved["global_step"] + 3
    assert metrics["val/acc"] >= 0.5
    assert {p: digest(p) for p in (tmp_path / "first").rglob("*") if p.is_file()} == first_files


class PressCtrlC(L.Callback):
    """Sends this process SIGINT, as Ctrl-C does, after the second training step."""

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_finishes_the_batch_saves_a_checkpoint_and_exits(tiny_config, tmp_path: Path, caplog):
    cfg = tiny_config("+callbacks.press_ctrl_c._target_=test_faults.PressCtrlC", "trainer.max_epochs=5")
    sigint_handler_before = signal.getsignal(signal.SIGINT)
    with caplog.at_level("WARNING", logger="vitlit"), pytest.raises(SystemExit):
        train(cfg)
    interrupted = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    assert f"training interrupted by Ctrl-C at step 2 (epoch 1); saved a resumable checkpoint to {interrupted}" in (
        caplog.text
    )
    assert torch.load(interrupted, weights_only=False)["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is sigint_handler_before  # Ctrl-C works as before again
