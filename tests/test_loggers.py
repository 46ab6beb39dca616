"""logger=csv, mlflow, wandb or a list of them: each gets the metrics, the hyperparameters with the final metrics
and, where it can show them, the pictures (vitlit.reporting.loggers)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import yaml
from conftest import CONF_DIR, TINY_RUN, compose_config, make_image_folder, train_with_log
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlit.training.trainer import instantiate_all

CLASSES = ("cat", "dog")
NUM_IMAGES = 4  # a 2 x 2 grid
WITH_PICTURES = [
    *(option for option in TINY_RUN if not option.startswith(("callbacks.dashboards", "callbacks.run_report"))),
    f"callbacks.dashboards.num_images={NUM_IMAGES}",
    f"callbacks.run_report.num_images={NUM_IMAGES}",
]
CONFUSION_SIZE = (720, 600)  # vitlit.reporting.figures: 7.2 x 6 inches at 100 dpi for up to 5 classes
GRID_SIZE = (2 * 300, 2 * 345)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logger_images")
    return make_image_folder(root, {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 2)})


def hydra_env(overrides: list[str]) -> dict[str, str]:
    """The environment variables ``hydra.job.env_set`` gives the job (Hydra sets them before train.py's main runs)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    return dict(cfg.hydra.job.env_set)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def image_size(data: bytes | Path) -> tuple[int, int]:
    image = Image.open(data if isinstance(data, Path) else io.BytesIO(data))
    image.load()  # decodes every pixel: a truncated file fails here
    return image.size


def test_each_logger_option_builds_its_lightning_logger_and_lists_combine(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    single = compose_config(["logger=csv"], output_dir=tmp_path)
    (logger,) = instantiate_all(single.logger)
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path / "csv"
    both = compose_config(["logger=[tensorboard,csv]"], output_dir=tmp_path)
    assert [type(logger) for logger in instantiate_all(both.logger)] == [TensorBoardLogger, CSVLogger]
    mlflow = compose_config(["logger=mlflow"], output_dir=tmp_path)
    assert mlflow.logger.mlflow.tracking_uri == f"file:{tmp_path}/mlruns"
    assert hydra_env(["logger=mlflow"]) == {"MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3 refuses file stores otherwise
    wandb = compose_config(["logger=wandb"], output_dir=tmp_path)
    assert wandb.logger.wandb.offline is True and wandb.logger.wandb.save_dir == str(tmp_path)


def test_tensorboard_and_csv_together_each_get_metrics_and_hyperparameters(images: Path, tmp_path: Path):
    cfg = compose_config([*TINY_RUN, f"data.root={images}", "logger=[tensorboard,csv]"], output_dir=tmp_path / "run")
    metrics, _ = train_with_log(cfg)

    rows = read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    for name in ("train/loss", "val/acc", "test/acc"):
        values = column(rows, name)
        assert values and all(math.isfinite(value) for value in values), name
    assert column(rows, "val/acc")[-1] == pytest.approx(metrics["val/acc"])
    assert column(rows, "test/acc")[-1] == pytest.approx(metrics["test/acc"])
    hparams = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hparams["model"]["net"]["embed_dim"] == 64 and hparams["trainer"]["max_epochs"] == 2
    assert hparams["seed"] == 42 and hparams["class_names"] == list(CLASSES)

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [event.value for event in events.Scalars("test/acc")][-1] == pytest.approx(metrics["test/acc"])
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def test_mlflow_run_holds_metrics_params_and_pictures(images: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    overrides = [*WITH_PICTURES, f"data.root={images}", "logger=mlflow"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in hydra_env(overrides).items():
        monkeypatch.setenv(name, value)
    metrics, _ = train_with_log(compose_config(overrides, output_dir=tmp_path / "run"))

    client = MlflowClient(f"file:{tmp_path / 'run' / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for name in ("train/loss", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc"):
        assert run.data.metrics[name] == pytest.approx(metrics[name]), name
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) >= 2  # one per epoch (and the final one)
    assert "test_per_class/f1/cat" in run.data.metrics
    params = run.data.params
    assert params["model/net/embed_dim"] == "64" and params["trainer/max_epochs"] == "2" and params["seed"] == "42"

    def files(path: str | None = None) -> list[str]:
        found = []
        for entry in client.list_artifacts(run.info.run_id, path):
            found += files(entry.path) if entry.is_dir else [entry.path]
        return found

    artifacts = files()
    for tag in ("val/confusion_matrix", "val/predictions", "val/attention", "test/confusion_matrix", "test/attention"):
        assert any(path.startswith(f"{tag}/step_") for path in artifacts), tag
    assert len([path for path in artifacts if path.startswith("val/predictions/")]) == 2  # one per epoch
    assert {"report/curves.png", "report/confusion_matrix.png", "report/predictions.png", "report/metrics.json"} <= set(
        artifacts
    )
    (matrix,) = [path for path in artifacts if path.startswith("test/confusion_matrix/")]
    assert image_size(Path(client.download_artifacts(run.info.run_id, matrix, str(tmp_path)))) == CONFUSION_SIZE
    (grid,) = [path for path in artifacts if path.startswith("test/predictions/")]
    assert image_size(Path(client.download_artifacts(run.info.run_id, grid, str(tmp_path)))) == GRID_SIZE


def test_wandb_offline_run_holds_metrics_and_pictures(images: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [*WITH_PICTURES, f"data.root={images}", "logger=wandb", "callbacks.dashboards.attention=null"]
    train_with_log(compose_config(overrides, output_dir=tmp_path / "run"))

    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media" / "images"
    for tag in ("val/confusion_matrix", "val/predictions", "test/predictions", "report/curves"):
        stage, name = tag.split("/")
        assert list((media / stage).glob(f"{name}_*.png")), tag
    (matrix,) = (media / "test").glob("confusion_matrix_*.png")
    assert image_size(matrix) == CONFUSION_SIZE
    # Offline, the metrics and the summary live in the run's protobuf records (run-*.wandb), uploaded by `wandb sync`.
    (records,) = run_dir.glob("run-*.wandb")
    content = records.read_bytes()
    for name in ("train/loss", "val/acc", "val/acc_best", "test/acc", "test_per_class/f1/cat"):
        assert name.encode() in content, name
    assert b'"embed_dim":64' in content and b'"max_epochs":2' in content  # the config, as JSON
