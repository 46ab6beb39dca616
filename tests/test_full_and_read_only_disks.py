"""Disks that fill up or are read-only, for real: each test mounts a small tmpfs (root on Linux, as CI runs; skipped
with the reason elsewhere). Every command stops with one message naming the folder, what is intact and how to go
on; nothing already on the disk is truncated, and a training run resumes once there is room again."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RUN, compose_config, make_image_folder, write_image

from vitlit.reporting.log_file import LogFileHandler
from vitlit.training import train
from vitlit.training.checkpoints import read_checkpoint

TRACEBACK = "Traceback (most recent call last)"
CLASSES = {"cat": 4, "dog": 4}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(name, size, *options)``: a folder under tmp_path with a tmpfs of ``size`` mounted on it (unmounted
    after the test); ``remount(folder, *options)`` changes its size or makes it read-only."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mounted: list[Path] = []

    def mount(name: str, size: str, *options: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(folder)], check=True, capture_output=True)


def command(*arguments: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    environment |= {"PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(arguments, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


def train_py(*overrides: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return command(sys.executable, str(REPO_ROOT / "train.py"), *TINY_RUN, *overrides, cwd=cwd, **env)


def one_message(result: subprocess.CompletedProcess) -> str:
    """The last line of stderr, after checking that the command failed with it and no traceback or logging error."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert TRACEBACK not in result.stdout + result.stderr and "--- Logging error ---" not in result.stderr
    return result.stderr.rstrip().splitlines()[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny trained checkpoint (and its image folder beside it) for eval, predict and export."""
    tmp = tmp_path_factory.mktemp("checkpoint")
    root = make_image_folder(tmp / "images", {"train": CLASSES, "test": {"cat": 2, "dog": 2}})
    train(compose_config([*TINY_RUN, f"data.root={root}", "trainer.max_epochs=1", "test=false"], tmp / "run"))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def test_training_that_fills_the_disk_stops_with_one_message_and_resumes_once_there_is_room(tmpfs, tmp_path):
    root = make_image_folder(tmp_path / "images", {"train": CLASSES, "test": {"cat": 2, "dog": 2}})
    disk = tmpfs("disk", "4m")  # room for the first epoch's two checkpoints (1.6 MB each), not for a third
    run = disk / "run"
    overrides = [f"data.root={root}", "trainer.max_epochs=3", "test=false", f"hydra.run.dir={run}"]
    message = one_message(train_py(*overrides, cwd=tmp_path))
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert message == (
        f"Error: cannot write to {run}: the disk is full (No space left on device). The last complete checkpoint is "
        f"intact: {checkpoint}. Free space on that disk, then resume with: python train.py {' '.join(TINY_RUN)} "
        f"{' '.join(overrides[:-1])} hydra.run.dir={run} ckpt_path=last"
    )
    assert read_checkpoint(checkpoint)["epoch"] >= 0  # whole: it loads
    assert not [path for path in run.rglob("*") if path.name.startswith(".last") or path.suffix == ".tmp"]

    remount(disk, "size=64m")
    resumed = train_py(*overrides, "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Epoch: 3 |" in resumed.stdout
    assert read_checkpoint(checkpoint)["epoch"] == 2


def test_tensorboard_on_a_full_disk_is_the_same_one_message_not_its_writer_threads_traceback(tmpfs, tmp_path):
    root = make_image_folder(tmp_path / "images", {"train": CLASSES, "test": {"cat": 2, "dog": 2}})
    events = tmpfs("events", "256k")
    (events / "filler").write_bytes(b"\0" * 250_000)  # TensorBoard's first events fill it
    overrides = [f"data.root={root}", "test=false", f"logger.tensorboard.save_dir={events}"]
    result = train_py(*overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    message = one_message(result)
    assert "the disk is full (No space left on device)" in message and "Exception in thread" not in result.stderr


def test_a_run_folder_without_room_stops_before_hydra_writes_into_it(tmpfs, tmp_path):
    disk = tmpfs("disk", "512k")
    message = one_message(train_py(f"data.root={tmp_path}", f"hydra.run.dir={disk / 'run'}", cwd=tmp_path))
    assert message.startswith(f"Error: cannot write to {disk / 'run'}: the disk is full (No space left on device).")
    assert "No checkpoint was saved yet" in message
    assert not (disk / "run" / ".hydra").exists()


def test_a_log_file_on_a_full_disk_is_one_line_not_a_traceback_per_record(tmpfs, capfd):
    disk = tmpfs("disk", "64k")
    (disk / "filler").write_bytes(b"\0" * 60_000)
    handler = LogFileHandler(disk / "train.log", delay=True)
    logger = logging.getLogger("vitlit.test_full_disk_log")
    logger.addHandler(handler)
    try:
        for number in range(200):
            logger.warning("line %d %s", number, "x" * 100)
            handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    errors = capfd.readouterr().err
    assert "--- Logging error ---" not in errors and TRACEBACK not in errors
    assert errors.count("vitlit: cannot write the log file") == 1
    assert f"{disk / 'train.log'} (No space left on device)" in errors
    assert isinstance(handler.failed, OSError)


def test_predict_eval_and_export_on_a_full_disk_are_one_message_and_leave_no_partial_file(tmpfs, checkpoint, tmp_path):
    disk = tmpfs("disk", "1200k")  # room for Hydra's files, not for the annotated copies of large noisy photos
    images = tmp_path / "photos"
    for number in range(4):
        write_image(images / f"{number}.png", (128, 128, 128), (600, 400), number)
    predict = command(
        sys.executable, "-m", "vitlit.predict", f"ckpt_path={checkpoint}", f"inputs=[{images}]",
        f"hydra.run.dir={disk / 'predict'}", cwd=tmp_path,
    )  # fmt: skip
    message = one_message(predict)
    assert message.startswith(f"Error: cannot write to {disk / 'predict'}") and "the disk is full" in message
    assert "Files already there are intact" in message
    assert not (disk / "predict" / "predictions.json").exists()
    assert not [path for path in (disk / "predict").rglob("*") if path.name.endswith(".partial")]
    shutil.rmtree(disk / "predict")

    noisy = tmp_path / "noisy"  # the report's picture of large noisy photos does not fit either
    for split, name, number in [
        (split, name, number) for split in ("train", "test") for name in CLASSES for number in range(3)
    ]:
        write_image(noisy / split / name / f"{number}.png", (128, 128, 128), (600, 400), number)
    evaluation = command(
        sys.executable, "-m", "vitlit.eval", f"ckpt_path={checkpoint}", "data=image_folder", f"data.root={noisy}",
        "callbacks.progress_bar=null", f"hydra.run.dir={disk / 'eval'}", cwd=tmp_path,
    )  # fmt: skip
    assert "the disk is full (No space left on device)" in one_message(evaluation)
    shutil.rmtree(disk / "eval")

    (disk / "filler").write_bytes(b"\0" * 1_000_000)
    export = command(
        sys.executable, "-m", "vitlit.export", str(checkpoint), str(disk / "vit.safetensors"), cwd=tmp_path
    )
    message = one_message(export)
    assert message.startswith(f"Error: cannot write to {disk}") and "the disk is full" in message
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]  # no partial export, no temporary folder


def test_metrics_json_on_a_full_disk_keeps_its_previous_content(tmpfs):
    from vitlit.reporting.metrics_file import read_final_metrics, write_metrics_file

    disk = tmpfs("disk", "64k")
    write_metrics_file(disk, {"final": {"test/acc": 0.5}})
    with pytest.raises(OSError, match="No space left on device"):
        write_metrics_file(disk, {"final": {"test/acc": 0.75}, "padding": "x" * 100_000})
    assert read_final_metrics(disk) == {"test/acc": 0.5}
    assert sorted(path.name for path in disk.iterdir()) == ["metrics.json"]


def test_a_read_only_output_folder_is_one_message_naming_it(tmpfs, checkpoint, tmp_path):
    disk = tmpfs("disk", "8m")
    run = disk / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoints" / "last.ckpt")
    remount(disk, "ro")
    resume = one_message(train_py(f"data.root={tmp_path}", f"hydra.run.dir={run}", "ckpt_path=last", cwd=tmp_path))
    assert resume.startswith(f"Error: cannot write to {run}: the file system is read-only (Read-only file system).")
    assert "hydra.run.dir=/path/to/run" in resume
    predict = command(
        sys.executable, "-m", "vitlit.predict", f"ckpt_path={checkpoint}", f"inputs=[{checkpoint.parents[2]}]",
        f"hydra.run.dir={disk / 'predict'}", cwd=tmp_path,
    )  # fmt: skip
    assert one_message(predict).startswith(f"Error: cannot create the folder {disk / 'predict'} (Read-only file system")


def test_a_read_only_data_folder_trains_with_workers_and_no_cache(tmpfs, tmp_path):
    disk = tmpfs("data", "8m")
    root = make_image_folder(disk / "images", {"train": CLASSES, "test": {"cat": 2, "dog": 2}})
    remount(disk, "ro")
    cfg = compose_config(
        [
            *TINY_RUN,
            f"data.root={root}",
            "data.cache=false",
            "data.num_workers=2",
            "trainer.max_epochs=1",
            "test=false",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert "val/acc" in metrics
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_downloading_the_dataset_into_a_read_only_folder_is_one_message_naming_it(tmpfs, tmp_path):
    disk = tmpfs("data", "1m", "ro")
    overrides = [option for option in TINY_RUN if option != "data=image_folder"]
    result = command(
        sys.executable, str(REPO_ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path, VITLIT_DATA_DIR=str(disk),
    )  # fmt: skip
    message = one_message(result)
    where = f"no data at {disk / 'pizza_steak_sushi'}, and it cannot be downloaded into {disk}"
    assert message.startswith(f"Error: {where} (Read-only file system)")
    assert "data.root=/path/to/images" in message
