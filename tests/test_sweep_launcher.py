"""Sweeps through Hydra's submitit launcher: every job in a process of its own, the summary built from the folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO_ROOT, TINY_RUN
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_sweep import assert_the_summary_lists_both_jobs

from vitlit.configs import devices_per_node

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install -e ".[slurm]"')


def test_local_launcher_runs_each_job_in_its_own_process_and_summarises_them_all(image_folder: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "hydra/launcher=local",
        *TINY_RUN,
        "debug=fast",
        "callbacks.model_summary=null",
        f"data.root={image_folder}",
        "model.net.num_heads=4,3",  # 3 heads do not divide the micro ViT's width 64: job 1 fails
        f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    statuses = {job: json.loads((sweep / job / "job_status.json").read_text()) for job in ("0", "1")}
    assert [statuses[job]["status"] for job in ("0", "1")] == ["completed", "failed"]
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file() and (sweep / "0" / "metrics.json").is_file()
    assert (sweep / "1" / ".hydra" / "overrides.yaml").is_file()
    submitit_logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.out"))
    assert len(submitit_logs) == 2  # two processes of submitit's, one per job
    assert_the_summary_lists_both_jobs(sweep, result.stdout)

    # TensorBoard's HPARAMS table: the swept key and the short named list, not the whole config.
    events = EventAccumulator(str(sweep / "0" / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    columns = set(start.hparams)
    assert {"model", "model/net/num_heads", "model/optimizer/lr", "data/batch_size", "seed"} <= columns
    assert len(columns) < 20 and not any("_target_" in column or "root" in column for column in columns)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name for info in experiment.hparam_infos if info.differs] == ["model/net/num_heads"]  # shown first


def test_a_job_folder_without_its_status_is_listed_as_unfinished(tmp_path: Path):
    from omegaconf import OmegaConf

    from vitlit.training.sweep import SweepSummary

    job = tmp_path / "sweep" / "0" / ".hydra"
    job.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["model.optimizer.lr=0.1"]), job / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": 0}}}), job / "hydra.yaml")
    (row,) = SweepSummary().summarise(tmp_path / "sweep")
    assert (row["job"], row["overrides"], row["status"]) == (0, ["model.optimizer.lr=0.1"], "unfinished")
    assert "no job_status.json" in row["error"]


@pytest.mark.parametrize("trainer, expected", [("gpu", 1), ("ddp", 4)])
def test_slurm_preset_asks_for_one_task_per_device(trainer: str, expected: int):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["hydra/launcher=slurm", f"trainer={trainer}"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node == expected and launcher.nodes == 1


def test_slurm_preset_refuses_devices_auto_naming_the_fix():
    with pytest.raises(ValueError, match=r"trainer\.devices as a number of GPUs per node, got 'auto'.*trainer=gpu"):
        devices_per_node("auto")
    assert devices_per_node([0, 1]) == 2
