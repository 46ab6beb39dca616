"""A disk that fills up, runs out of quota or is read-only: one message naming the folder, what was saved intact and
how to go on, instead of a traceback from whichever library wrote last (TensorBoard, torch.save, Hydra, logging).

:func:`write_error_message` is what the entry points print (through :mod:`vitlit.user_errors`);
:func:`check_run_folder_writable` runs before Hydra writes ``.hydra/`` into a run folder, where no vitlit code
could catch the error.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

# errno -> what it means for the user.
WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EROFS: "the file system is read-only",
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    WRITE_ERRNOS[errno.EDQUOT] = "the disk quota is used up"
# Less than this free in a run folder's file system stops a run before Hydra writes its .hydra/ files and the log.
MIN_FREE_BYTES = 1 << 20
CHECKPOINT_SUFFIX = ".ckpt"


def write_error(error: BaseException | None) -> OSError | None:
    """The full-disk, quota or read-only ``OSError`` behind ``error`` (itself, or the cause or context of an error
    raised while handling it: torch.save's ``RuntimeError``, Lightning's and Hydra's wrappers), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error
        # The chain a traceback shows: the cause, else the context unless ``raise ... from None`` hid it.
        error = (
            error.__cause__
            if error.__cause__ is not None
            else None
            if error.__suppress_context__
            else error.__context__
        )
    return None


def last_complete_checkpoint(run_folder: Path) -> Path | None:
    """``last.ckpt`` of ``run_folder/checkpoints`` when it exists, else the newest ``*.ckpt`` there, else None.

    Checkpoints are written under a temporary name and renamed (``AtomicCheckpointIO``): each one there is whole.
    """
    folder = run_folder / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = [path for path in folder.glob(f"*{CHECKPOINT_SUFFIX}") if path.is_file()] if folder.is_dir() else []
    return max(found, key=lambda path: path.stat().st_mtime_ns) if found else None


def _current_run() -> tuple[Path | None, bool, list[str]]:
    """(this Hydra job's run folder, whether it is a training run that can resume, its command-line overrides), or
    (None, False, []) outside Hydra."""
    if not HydraConfig.initialized():
        return None, False, []
    hydra = HydraConfig.get()
    return Path(hydra.runtime.output_dir), hydra.job.config_name == "train", list(hydra.overrides.task)


def resume_command(run_folder: Path, overrides: list[str]) -> str:
    """``python train.py <overrides> hydra.run.dir=<run_folder> ckpt_path=last``, ready to paste."""
    kept = [override for override in overrides if not override.startswith("ckpt_path=")]
    return shlex.join(["python", "train.py", *kept, f"hydra.run.dir={run_folder}", "ckpt_path=last"])


def write_error_message(
    error: OSError, run_folder: Path | None = None, resumable: bool | None = None, overrides: list[str] | None = None
) -> str:
    """``Error: cannot write to <folder>: <why>.`` then what is intact and how to go on.

    ``run_folder``, ``resumable`` and ``overrides`` default to the running Hydra job's (a training job resumes).
    """
    if run_folder is None and resumable is None:
        run_folder, resumable, overrides = _current_run()
    folder = Path(error.filename).parent if error.filename else run_folder
    where = f" to {folder}" if folder is not None else ""
    message = f"Error: cannot write{where}: {WRITE_ERRNOS[error.errno]} ({error.strerror})."
    if folder is not None and run_folder is not None and not folder.resolve().is_relative_to(run_folder.resolve()):
        return f"{message} It is outside this run's folder ({run_folder}): make room there or point vitlit elsewhere."
    if error.errno == errno.EROFS:
        return (
            f"{message} Write the outputs to a writable disk: hydra.run.dir=/path/to/run, or VITLIT_LOG_DIR=/path "
            "for every run (paths.log_dir)."
        )
    if resumable and run_folder is not None:
        checkpoint = last_complete_checkpoint(run_folder)
        if checkpoint is None:
            return f"{message} No checkpoint was saved yet; free space on that disk and start the run again."
        return (
            f"{message} The last complete checkpoint is intact: {checkpoint}. Free space on that disk, then resume "
            f"with: {resume_command(run_folder, overrides or [])}"
        )
    return (
        f"{message} Files already there are intact (vitlit writes each under a temporary name, then renames it); "
        "free space on that disk, or write elsewhere, and run the command again."
    )


def _free_bytes(folder: Path) -> int:
    """Bytes this process may still write under ``folder`` (root may use the blocks reserved for it)."""
    stats = os.statvfs(folder)
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def check_run_folder_writable(run_folder: Path, resumable: bool, overrides: list[str]) -> None:
    """Stop with :func:`write_error_message` when ``run_folder`` (created) is on a read-only file system, cannot be
    written, or has less than ``MIN_FREE_BYTES`` free: Hydra writes into it before any vitlit code runs."""
    if not hasattr(os, "statvfs"):  # Windows: the write itself will tell
        return
    if not os.access(run_folder, os.W_OK):
        code = errno.EROFS if os.statvfs(run_folder).f_flag & os.ST_RDONLY else errno.EACCES
        if code == errno.EACCES:
            sys.exit(f"Error: cannot write to {run_folder} (permission denied); choose another hydra.run.dir=...")
        sys.exit(write_error_message(OSError(code, os.strerror(code)), run_folder, resumable, overrides))
    if _free_bytes(run_folder) < MIN_FREE_BYTES:
        sys.exit(
            write_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), run_folder, resumable, overrides)
        )
