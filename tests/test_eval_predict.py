"""``vitlit.eval`` and ``vitlit.predict``: a checkpoint alone evaluates and classifies images."""

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    CONF_DIR,
    REPO_ROOT,
    TINY_RUN,
    checkpoint_eval_transform,
    compose_config,
    make_image_folder,
    write_image,
)
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from vitlit.data.image_folder import IMAGE_EXTENSIONS, load_rgb
from vitlit.data.transforms import eval_transform
from vitlit.eval import evaluate
from vitlit.inference.checkpoint import read_checkpoint
from vitlit.predict import image_files, predict
from vitlit.reporting.test_predictions import write_predictions_csv
from vitlit.training import train
from vitlit.training.checkpoints import classifier_from_checkpoint
from vitlit.training.module import ViTClassifier

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 1-epoch tiny run: (image root, best checkpoint). Its run report keeps the training history in checkpoints."""
    tmp = tmp_path_factory.mktemp("trained")
    root = make_image_folder(tmp / "images", {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 3)})
    overrides = [option for option in TINY_RUN if option != "callbacks.run_report=null"]
    train(compose_config([*overrides, f"data.root={root}", "trainer.max_epochs=1", "test=false"], tmp / "run"))
    return root, next((tmp / "run" / "checkpoints").glob("epoch_*.ckpt"))


def command_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def hand_predictions(checkpoint: Path, files: list[Path]) -> torch.Tensor:
    """Logits of the checkpoint's model for ``files``, computed without vitlit's eval or predict code."""
    module = ViTClassifier.load_from_checkpoint(checkpoint).eval()
    transform = checkpoint_eval_transform(read_checkpoint(checkpoint))
    with torch.no_grad():
        return module(torch.stack([transform(load_rgb(path)) for path in files]))


def test_eval_accuracy_equals_the_accuracy_of_the_checkpoint_computed_by_hand(trained, tmp_path):
    root, checkpoint = trained
    before = sorted(checkpoint.parent.iterdir())
    overrides = [f"ckpt_path={checkpoint}", "data=image_folder", f"data.root={root}", "callbacks.progress_bar=null"]
    metrics = evaluate(command_config("eval", overrides, tmp_path / "eval"))
    files = sorted((root / "test").rglob("*.jpg"))
    labels = torch.tensor([CLASSES.index(path.parent.name) for path in files])
    by_hand = (hand_predictions(checkpoint, files).argmax(dim=1) == labels).float().mean().item()
    assert metrics["test/acc"] == pytest.approx(by_hand)

    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["checkpoint"] == str(checkpoint) and report["stage"] == "test"
    assert report["final"]["test/acc"] == pytest.approx(by_hand)
    assert [row["epoch"] for row in report["history"]] == [1]  # the training history the checkpoint carries
    for name in ("curves.png", "confusion_matrix.png", "predictions.png"):
        Image.open(tmp_path / "eval" / name).load()
    assert (tmp_path / "eval" / "tensorboard").is_dir()
    assert sorted(checkpoint.parent.iterdir()) == before  # nothing written beside the checkpoint


def test_eval_lists_every_test_image_with_its_classes_and_probabilities(trained, tmp_path, caplog):
    root, checkpoint = trained
    overrides = [f"ckpt_path={checkpoint}", "data=image_folder", f"data.root={root}", "callbacks.progress_bar=null"]
    overrides.append("trainer.precision=32-true")  # the default picks bf16-mixed on CPUs with native bf16
    with caplog.at_level(logging.INFO, logger="vitlit"):
        evaluate(command_config("eval", overrides, tmp_path / "eval"))
    files = sorted((root / "test").rglob("*.jpg"))
    probabilities = hand_predictions(checkpoint, files).softmax(dim=1)
    with (tmp_path / "eval" / "test_predictions.csv").open() as file:
        header, *rows = list(csv.reader(file))
    assert header == ["path", "true_class", "predicted_class", *(f"p_{name}" for name in CLASSES)]
    assert [row[0] for row in rows] == [str(path) for path in files]
    for row, path, expected in zip(rows, files, probabilities, strict=True):
        assert row[1] == path.parent.name and row[2] == CLASSES[int(expected.argmax())]
        torch.testing.assert_close(torch.tensor([float(value) for value in row[3:]]), expected, rtol=0, atol=1e-6)
    wrong = sum(row[1] != row[2] for row in rows)
    assert f"test: {wrong} of {len(files)} images misclassified" in caplog.text


def test_the_predictions_file_keeps_nine_significant_digits(tmp_path):
    probabilities = torch.tensor([[1 / 3, 2 / 3], [0.25, 0.75]])
    wrong = write_predictions_csv(tmp_path / "p.csv", ["a.jpg", "b.jpg"], [1, 0], probabilities, ["cat", "dog"])
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "path,true_class,predicted_class,p_cat,p_dog",
        "a.jpg,dog,dog,0.333333343,0.666666687",  # float32 values, every digit they hold
        "b.jpg,cat,dog,0.25,0.75",
    ]
    assert wrong == 1


def test_eval_refuses_data_with_other_classes(trained, tmp_path):
    _, checkpoint = trained
    other = make_image_folder(tmp_path / "other", {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1}})
    cfg = command_config("eval", [f"ckpt_path={checkpoint}", "data=image_folder", f"data.root={other}"], tmp_path)
    with pytest.raises(ValueError, match=r"trained on the classes \['cat', 'dog', 'owl'\], but .*other/train holds"):
        evaluate(cfg)


def test_predict_returns_probabilities_that_sum_to_one_and_the_argmax_of_the_logits(trained, tmp_path):
    root, checkpoint = trained
    photo = root / "test" / "owl" / "0.jpg"
    cfg = command_config(
        "predict", [f"ckpt_path={checkpoint}", f"inputs=[{photo},{root / 'test'}]", "top_k=2"], tmp_path / "p"
    )
    records = predict(cfg)
    files = sorted((root / "test").rglob("*.jpg"))
    assert [record["path"] for record in records] == [str(photo)] + [str(p) for p in files if p != photo]
    logits = hand_predictions(checkpoint, [Path(record["path"]) for record in records])
    for record, row in zip(records, logits, strict=True):
        probabilities = torch.tensor([record["probabilities"][name] for name in CLASSES])
        assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(probabilities, row.softmax(dim=0), atol=1e-6)
        assert record["predictions"][0]["class"] == CLASSES[int(row.argmax())]
        assert len(record["predictions"]) == 2
        assert record["predictions"][0]["probability"] >= record["predictions"][1]["probability"]
        assert Image.open(record["annotated"]).size[0] >= 400
    assert json.loads((tmp_path / "p" / "predictions.json").read_text()) == records
    assert records[0]["annotated"] == str(tmp_path / "p" / "annotated" / "0.png")
    assert records[1]["annotated"] == str(tmp_path / "p" / "annotated" / "test" / "cat" / "0.png")


def test_eval_and_predict_average_the_logits_of_every_crop_the_checkpoint_names_and_of_their_mirrors(tmp_path):
    root = make_image_folder(
        tmp_path / "images", {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 3)}
    )
    views = ["data.eval_crop_fraction=[0.5,1.0]", "model.test_time_flip=true", "trainer.max_epochs=1", "test=false"]
    train(compose_config([*TINY_RUN, f"data.root={root}", *views], tmp_path / "run"))
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    module = ViTClassifier.load_from_checkpoint(checkpoint).eval()
    files = sorted((root / "test").rglob("*.jpg"))
    by_hand = []
    with torch.no_grad():
        for fraction in (0.5, 1.0):  # the crops and mirrors, one at a time, without vitlit's eval or predict code
            transform = eval_transform(module.model.image_size, fraction)
            images = torch.stack([transform(load_rgb(path)) for path in files])
            by_hand += [module(images), module(images.flip(-1))]
    probabilities = torch.stack(by_hand).mean(0).softmax(-1)
    labels = torch.tensor([CLASSES.index(path.parent.name) for path in files])

    overrides = [f"ckpt_path={checkpoint}", "data=image_folder", f"data.root={root}", "callbacks.progress_bar=null"]
    metrics = evaluate(command_config("eval", overrides, tmp_path / "eval"))
    assert metrics["test/acc"] == pytest.approx((probabilities.argmax(1) == labels).float().mean().item())
    records = predict(
        command_config("predict", [f"ckpt_path={checkpoint}", f"inputs=[{root / 'test'}]"], tmp_path / "p")
    )
    predicted = torch.tensor([[record["probabilities"][name] for name in CLASSES] for record in records])
    assert torch.allclose(predicted, probabilities, atol=1e-5)


def test_predict_takes_a_checkpoint_of_any_model_size_with_its_own_image_size(tmp_path):
    module = ViTClassifier(net={"image_size": 64, "patch_size": 32, "embed_dim": 16, "depth": 1, "num_heads": 2,
                                "mlp_dim": 32}, class_names=["a", "b"])  # fmt: skip
    checkpoint = {
        "hyper_parameters": dict(module.hparams),
        "state_dict": module.state_dict(),
        "datamodule_hyper_parameters": {
            "image_size": 64,
            "eval_crop_fraction": 1.0,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
    }
    torch.save(checkpoint, tmp_path / "small.ckpt")
    assert checkpoint_eval_transform(read_checkpoint(tmp_path / "small.ckpt"))(torch.zeros(3, 90, 120)).shape == (
        3,
        64,
        64,
    )
    write_image(tmp_path / "photo.png", (10, 200, 10), (120, 90), 0)
    rebuilt = classifier_from_checkpoint(read_checkpoint(tmp_path / "small.ckpt"))
    assert rebuilt.model.patch_size == 32
    cfg = command_config(
        "predict", [f"ckpt_path={tmp_path / 'small.ckpt'}", f"inputs={tmp_path / 'photo.png'}"], tmp_path
    )
    [record] = predict(cfg)
    assert set(record["probabilities"]) == {"a", "b"}  # a zero-initialised head: uniform
    assert record["probabilities"]["a"] == pytest.approx(0.5)


def test_files_that_are_not_vitlit_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing\.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")
    write_image(tmp_path / "photo.jpg", (0, 0, 0), (40, 40), 0)
    (tmp_path / "config.yaml").write_text("model:\n  depth: 2\n")
    for name in ("photo.jpg", "config.yaml"):
        with pytest.raises(ValueError, match=rf"{name} is not a vitlit checkpoint: it cannot be read"):
            read_checkpoint(tmp_path / name)
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt is not a vitlit checkpoint: it lacks .*'net' and 'class_names'"):
        read_checkpoint(tmp_path / "other.ckpt")


def test_predict_inputs_that_name_no_image_are_each_named_with_the_reason(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "photo.jpg", (0, 0, 0), (40, 40), 0)
    inputs = [str(tmp_path / name) for name in ("nowhere.jpg", "notes.txt", "empty", "photo.jpg")]
    files, problems = image_files(inputs)
    assert files == {(tmp_path / "photo.jpg").resolve(): Path("photo.jpg")}
    assert problems == {
        tmp_path / "nowhere.jpg": "no file or folder there",
        tmp_path / "notes.txt": f"not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})",
        tmp_path / "empty": f"a folder without images ({', '.join(sorted(IMAGE_EXTENSIONS))})",
    }


def test_predict_classifies_the_good_inputs_names_every_bad_one_and_exits_1(trained, tmp_path):
    root, checkpoint = trained
    good = sorted((root / "test" / "cat").glob("*.jpg"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(good[0].read_bytes()[:200])
    bad = [tmp_path / "empty.jpg", tmp_path / "broken.jpg", tmp_path / "missing.jpg"]
    inputs = "[" + ",".join(str(path) for path in [good[0], *bad, good[1]]) + "]"
    result = run_module(
        "vitlit.predict", f"ckpt_path={checkpoint}", f"inputs={inputs}", "json=true", "annotate=false",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, status=1,
    )  # fmt: skip
    printed = json.loads(result.stdout)
    assert [Path(entry["path"]).name for entry in printed if "predictions" in entry] == [good[0].name, good[1].name]
    errors = {Path(entry["path"]).name: entry["error"] for entry in printed if "error" in entry}
    assert errors.keys() == {"empty.jpg", "broken.jpg", "missing.jpg"}
    assert errors["missing.jpg"] == "no file or folder there" and errors["broken.jpg"].startswith("cannot be decoded")
    last_line = result.stderr.rstrip().splitlines()[-1]
    assert last_line.startswith("Error: 3 of 5 inputs could not be classified: ")
    assert all(str(path) in last_line for path in bad) and "Traceback" not in result.stderr
    saved = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert {Path(entry["path"]).name: entry["error"] for entry in saved if "error" in entry} == errors
    assert [len(entry["probabilities"]) for entry in saved if "error" not in entry] == [3, 3]
    everything_bad = run_module(
        "vitlit.predict", f"ckpt_path={checkpoint}", f"inputs=[{bad[0]},{bad[2]}]",
        f"hydra.run.dir={tmp_path / 'bad_run'}", cwd=tmp_path, status=1,
    )  # fmt: skip
    assert "Error: none of the inputs could be classified:" in everything_bad.stderr
    assert not (tmp_path / "bad_run" / "predictions.json").exists()  # nothing that looks like a result


def run_module(module: str, *overrides: str, cwd: Path, status: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *overrides]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's vitlit, wherever it runs
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == status, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_predict_command_prints_json_alone_with_the_json_flag(trained, tmp_path):
    root, checkpoint = trained
    result = run_module(
        "vitlit.predict", f"ckpt_path={checkpoint}", f"inputs=[{root / 'test' / 'dog'}]", "json=true",
        "annotate=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    printed = json.loads(result.stdout)  # nothing else on stdout
    assert [Path(entry["path"]).name for entry in printed] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(len(entry["predictions"]) == 3 for entry in printed)
    assert not (tmp_path / "run" / "annotated").exists()
    assert "classifying 3 images" in (tmp_path / "run" / "predict.log").read_text()
