"""LitData shards: optimise an image folder once, train from the shards (one process, DDP, resumed mid-epoch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF_DIR, REPO_ROOT, TINY_RUN, checkpoint_eval_transform, compose_config, make_image_folder
from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import open_dict
from PIL import Image

from vitlit.data.shards import optimize_image_folder, read_classes_file
from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitlit.eval import evaluate
from vitlit.inference.checkpoint import read_checkpoint
from vitlit.predict import predict
from vitlit.training import train

pytest.importorskip("litdata")
pytestmark = [
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),  # resuming
    pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined"),  # LitData's is per worker
]

# The folder path's tiny run, reading shards instead (no augmentation: the sample ids below survive the pipeline).
STREAM_RUN = [o for o in TINY_RUN if o != "data=image_folder"] + ["data=streaming", "trainer.max_epochs=1"]


def make_id_folder(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """An image folder whose images are each one flat colour: red channel = a sample id unique over the folder
    (a flat image stays flat through resize and crop, so a batch says which samples it holds)."""
    next_id = 0
    for split, classes in counts.items():
        for name, count in classes.items():
            for index in range(count):
                path = root / split / name / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40 + index, 36), (next_id, 100, 50)).save(path)
                next_id += 1
    return root


class RecordSampleIds(L.Callback):
    """Appends the sample ids (red channel) of every training batch to ``folder/rank<global rank>.txt``.

    Batches arrive here normalised (the module's ``on_after_batch_transfer``): un-normalise with ImageNet's statistics.
    """

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"rank{trainer.global_rank}.txt").open("a") as file:
            red = (batch[0][:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
            file.write(" ".join(str(round(float(v))) for v in red) + "\n")


def recorded(folder: Path, rank: int = 0) -> list[list[int]]:
    lines = (folder / f"rank{rank}.txt").read_text().splitlines()
    return [[int(v) for v in line.split()] for line in lines]


class StopAfterBatches(L.Callback):
    """Stands in for a killed job: a SIGTERM after ``batches`` training batches (SaveOnInterrupt saves then)."""

    def __init__(self, batches: int):
        self.batches = batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx + 1 == self.batches:
            raise SIGTERMException()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("shards")
    root = make_image_folder(tmp / "images", {"train": {"cat": 6, "dog": 6}, "test": {"cat": 3, "dog": 3}})
    return optimize_image_folder(root, tmp / "shards", workers=2)


def test_optimize_writes_every_split_and_the_class_names_beside_the_shards(shards: Path):
    classes = json.loads((shards / "classes.json").read_text())
    assert classes["classes"] == ["cat", "dog"]
    assert classes["splits"] == {"train": 12, "test": 6}
    for split, count in classes["splits"].items():
        index = json.loads((shards / split / "index.json").read_text())
        assert sum(chunk["chunk_size"] for chunk in index["chunks"]) == count
        assert list((shards / split).glob("chunk-*.bin"))
    assert not shards.with_name("shards.partial").exists()


def test_optimize_refuses_an_existing_output_unless_told(shards: Path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        optimize_image_folder(Path(json.loads((shards / "classes.json").read_text())["source"]), shards)


def test_optimize_can_reencode_at_a_shorter_side(tmp_path: Path):
    import io

    from litdata import StreamingDataset

    root = make_image_folder(tmp_path / "images", {"train": {"cat": 2}, "test": {"cat": 1}})
    out = optimize_image_folder(root, tmp_path / "shards", short_side=20, workers=1)
    sample = StreamingDataset(str(out / "train"))[0]
    assert min(Image.open(io.BytesIO(sample["image"])).size) == 20
    assert sample["label"] == 0 and sample["name"] == "cat/0.jpg"


def test_a_bad_image_stops_optimize_naming_it_or_is_skipped_with_a_warning(tmp_path: Path, caplog):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    broken = root / "train" / "dog" / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"(?s)1 of 7 images cannot be decoded:\n  {broken}: .*--bad-images skip"):
        optimize_image_folder(root, tmp_path / "shards", workers=1)
    assert not (tmp_path / "shards").exists()
    with caplog.at_level("WARNING", logger="vitlit"):
        out = optimize_image_folder(root, tmp_path / "shards", workers=1, bad_images="skip")
    assert f"skipping 1 of 7 images that cannot be decoded (--bad-images skip):\n  {broken}" in caplog.text
    assert json.loads((out / "classes.json").read_text())["splits"] == {"train": 4, "test": 2}


def test_one_epoch_from_shards_logs_metrics_and_writes_a_checkpoint_that_predicts(shards: Path, tmp_path: Path):
    with_report = [o for o in STREAM_RUN if o != "callbacks.run_report=null"]
    metrics = train(compose_config([*with_report, f"data.input_dir={shards}"], output_dir=tmp_path / "run"))
    assert {"train/loss", "val/acc", "test/acc"} <= metrics.keys()
    assert {"predictions.png", "confusion_matrix.png", "metrics.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(checkpoint)
    assert saved["datamodule_hyper_parameters"]["input_dir"] == str(shards)
    size = saved["datamodule_hyper_parameters"]["image_size"]
    assert checkpoint_eval_transform(saved)(torch.zeros(3, 50, 60, dtype=torch.uint8)).shape == (3, size, size)
    photo = Path(json.loads((shards / "classes.json").read_text())["source"]) / "test" / "cat" / "0.jpg"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=[f"ckpt_path={checkpoint}", f"inputs=[{photo}]", "annotate=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
    [record] = predict(cfg)
    assert set(record["probabilities"]) == {"cat", "dog"}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={checkpoint}", "callbacks.progress_bar=null"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    assert evaluate(cfg)["test/acc"] == pytest.approx(metrics["test/acc"])  # the checkpoint's own shards


def test_a_run_killed_mid_epoch_resumes_with_the_samples_that_epoch_had_left(tmp_path: Path):
    shards = optimize_image_folder(
        make_id_folder(tmp_path / "images", {"train": {"cat": 10, "dog": 10}, "test": {"cat": 2, "dog": 2}}),
        tmp_path / "shards",
        workers=1,
    )
    run = [*STREAM_RUN, f"data.input_dir={shards}", "data.train_augment=false", "test=false", "trainer.max_epochs=2"]

    def config(name: str, *extra: str):
        cfg = compose_config([*run, *extra], output_dir=tmp_path / name)
        with open_dict(cfg):
            cfg.callbacks.record_ids = {
                "_target_": f"{__name__}.RecordSampleIds",
                "folder": str(tmp_path / name / "ids"),
            }
        return cfg

    train(config("whole"))
    whole = recorded(tmp_path / "whole" / "ids")
    # 5 batches an epoch, each sample once
    assert len(whole) == 10 and sorted(v for batch in whole[:5] for v in batch) == list(range(20))
    assert whole[:5] != whole[5:]  # a new order in the second epoch

    killed = config("resumed")
    with open_dict(killed):
        killed.callbacks.stop = {"_target_": f"{__name__}.StopAfterBatches", "batches": 2}
    with pytest.raises(SIGTERMException):
        train(killed)
    assert (tmp_path / "resumed" / "checkpoints" / "interrupted.ckpt").is_file()
    train(config("resumed", "ckpt_path=last"))
    # 2 batches, then the 3 the first epoch had left, then the second epoch in the uninterrupted run's order
    assert recorded(tmp_path / "resumed" / "ids") == whole


def test_ddp_ranks_stream_disjoint_parts_that_cover_the_epoch(tmp_path: Path):
    shards = optimize_image_folder(
        make_id_folder(tmp_path / "images", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 4, "dog": 4}}),
        tmp_path / "shards",
        workers=1,
    )
    run, ids = tmp_path / "run", tmp_path / "ids"
    overrides = [*STREAM_RUN, f"data.input_dir={shards}", "data.train_augment=false", "callbacks.model_summary=null"]
    recorder = [f"+callbacks.record_ids._target_={__name__}.RecordSampleIds", f"+callbacks.record_ids.folder={ids}"]
    distributed = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={run}"]
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides, *recorder, *distributed]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = ([v for batch in recorded(ids, rank) for v in batch] for rank in (0, 1))
    assert len(rank0) == len(rank1) == 8
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == list(range(16))
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_data_streaming_without_litdata_says_how_to_install_it(shards: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litdata", None)  # import litdata now raises ImportError
    cfg = compose_config([*STREAM_RUN, f"data.input_dir={shards}"], output_dir=tmp_path / "run")
    with pytest.raises(Exception, match=r"pip install 'vitlit\[streaming\]'"):
        train(cfg)


def test_object_storage_is_reached_through_litdata_and_a_failure_is_one_message(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    closed_port = {"endpoint_url": "http://127.0.0.1:9"}  # no network here: the storage call itself fails
    with pytest.raises(FileNotFoundError, match=r"could not read s3://bucket/prefix/classes.json .*AWS_ACCESS_KEY_ID"):
        read_classes_file("s3://bucket/prefix", str(tmp_path / "cache"), closed_port)
