"""One run, one folder: never reuse a run folder unless resuming it, and keep every DDP rank in it.

A Hydra callback (registered in ``conf/hydra/default.yaml``):

- ``python train.py hydra.run.dir=<existing run>`` stops with an error naming the folder, unless it resumes
  that run (``ckpt_path=last`` or a checkpoint path); a resume keeps the first start's ``.hydra/`` files
  and writes its own to ``.hydra/resume_<time>/``.
- The default, timestamped run and sweep folders are claimed with an atomic ``mkdir``: runs started in the
  same second (two terminals, a job array) get ``<time>``, ``<time>_2``, ... and neither is refused.
- With DDP, Lightning relaunches ``train.py`` for ranks 1..N-1 with ``hydra.run.dir=<rank 0's run dir>``.
  In a multirun that would be the wrong folder and ``-m`` would start a whole sweep per rank, so each job
  points the relaunch at its own folder and its own overrides. Ranks other than 0 write no log file.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from vitlit.training.write_errors import check_run_folder_writable

log = logging.getLogger(__name__)


def process_rank() -> int:
    """This process's global rank as set by Lightning's launcher, torchrun or SLURM (0 when not distributed)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(variable):
            return int(os.environ[variable])
    return 0


def claim_new_folder(folder: Path) -> Path:
    """Create and return ``folder``, or ``<folder>_2``, ``<folder>_3``, ... if another run already took it.

    ``mkdir`` either creates a folder or fails, atomically, so processes racing for one name each get their own.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        candidate = folder if number == 1 else folder.with_name(f"{folder.name}_{number}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def run_folder_for(folder: Path, chosen: bool, ckpt_path: str | None) -> Path:
    """The folder a run writes into, created. One the user ``chosen`` (or ``ckpt_path=last``'s) must pass
    :func:`check_run_folder`; the default one is claimed, numbered when another run took its name."""
    if chosen or ckpt_path == "last":
        check_run_folder(folder, ckpt_path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return claim_new_folder(folder)


@contextmanager
def stop_unless_created(folder: Path, key: str) -> Iterator[None]:
    """Stop the run, saying why, when the folder (``key``, e.g. ``hydra.run.dir``) cannot be created."""
    try:
        yield
    except OSError as error:  # a file where a folder should be, no permission, a read-only or full disk
        if error.errno is None:  # vitlit's own refusals (check_run_folder) carry no errno
            raise
        sys.exit(
            f"Error: cannot create the folder {folder} ({error.strerror}: {error.filename}); choose another {key}=..., "
            "or another parent folder for every run with VITLIT_LOG_DIR=/path (paths.log_dir)"
        )


def chosen_by_user(config: DictConfig, key: str) -> bool:
    """Whether the command line set the Hydra key ``key`` (e.g. ``hydra.run.dir=...``)."""
    return any(override.split("=", 1)[0].lstrip("+~") == key for override in config.hydra.overrides.hydra)


def holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def check_run_folder(run_dir: Path, ckpt_path: str | None) -> None:
    """Raise unless ``run_dir`` is new (or empty), or the run resumes from a checkpoint.

    ``ckpt_path=last`` needs a checkpoint in ``run_dir``: it resumes the run in that folder.
    """
    if ckpt_path == "last" and not any(run_dir.rglob("*.ckpt")):
        raise FileNotFoundError(
            f"ckpt_path=last found no checkpoint in {run_dir}; resume a run with "
            "hydra.run.dir=<its run folder> ckpt_path=last, or give ckpt_path=<path to a .ckpt file>"
        )
    if holds_files(run_dir) and not ckpt_path:
        raise FileExistsError(
            f"{run_dir} already holds a run and would be overwritten; choose a new hydra.run.dir, "
            "or continue that run with ckpt_path=last"
        )


class RunFolder(Callback):
    """Guards run and sweep folders and keeps DDP ranks in their job's folder (see the module docstring)."""

    def __init__(self) -> None:
        self.saved_argv: list[str] | None = None
        self.saved_environ: dict[str, str] | None = None

    # Hydra turns exceptions raised in callbacks into warnings; SystemExit stops the run before Hydra
    # writes anything, with the message on stderr and exit status 1.
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            return  # rank 0 created the folder that the other ranks join
        run_dir = Path(config.hydra.run.dir)
        try:
            with stop_unless_created(run_dir, "hydra.run.dir"):
                run_dir = run_folder_for(run_dir, chosen_by_user(config, "hydra.run.dir"), config.get("ckpt_path"))
        except (FileExistsError, FileNotFoundError) as error:
            sys.exit(f"Error: {error}")
        check_run_folder_writable(run_dir, config.hydra.job.config_name == "train", list(config.hydra.overrides.task))
        with read_write(config.hydra):
            config.hydra.run.dir = str(run_dir)
        if config.get("ckpt_path") and holds_files(Path(config.hydra.run.dir) / ".hydra"):
            resumed = f"{config.hydra.output_subdir}/resume_{datetime.now():%Y-%m-%d_%H-%M-%S}"
            with read_write(config.hydra):
                config.hydra.output_subdir = resumed

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not chosen_by_user(config, "hydra.sweep.dir"):
            with stop_unless_created(sweep_dir, "hydra.sweep.dir"):
                sweep_dir = claim_new_folder(sweep_dir)
            with read_write(config.hydra):
                config.hydra.sweep.dir = str(sweep_dir)
                # Every job's config is composed again from these overrides: they carry the claimed folder.
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={sweep_dir}")
        if holds_files(sweep_dir):
            sys.exit(f"Error: {sweep_dir} already holds a sweep; choose a new hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            for handler in logging.getLogger().handlers[:]:
                if isinstance(handler, logging.FileHandler):  # rank 0 writes the run's log
                    logging.getLogger().removeHandler(handler)
                    handler.close()
        if config.hydra.mode == RunMode.MULTIRUN:
            # What Lightning's DDP launcher will run for the other ranks: this job alone, in its folder.
            self.saved_argv = sys.argv
            self.saved_environ = dict(os.environ)
            sys.argv = [sys.argv[0], *config.hydra.overrides.task]
            run = HydraConfig.instance().cfg.hydra.run
            with read_write(run):
                run.dir = config.hydra.runtime.output_dir

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.saved_argv is not None:
            sys.argv, self.saved_argv = self.saved_argv, None
        if self.saved_environ is not None:
            # Lightning's launcher leaves LOCAL_RANK, WORLD_SIZE, MASTER_PORT, ... and the process group
            # behind; the next job would take them for an existing group of processes and not launch its own.
            os.environ.clear()
            os.environ.update(self.saved_environ)
            self.saved_environ = None
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
