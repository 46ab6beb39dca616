"""Each command run the way README.md shows it, default flags first (the table, the annotated copies, the report),
then the machine-readable modes beside them.

One tiny training run by ``python train.py`` gives the checkpoint, found as the README finds it
(``outputs/train/runs/*/checkpoints/last.ckpt``). The default ``python train.py`` itself runs in
tests/test_default_recipe.py (weights from a test-filled torch cache) and ``python -m vitlit.demo`` in
tests/test_demo.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, make_image_folder

CLASSES = ("cat", "dog", "owl")
TRACEBACK = "Traceback (most recent call last)"


def run(*command: str, cwd: Path, status: int = 0) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    # This checkout's vitlit wherever it runs; a console wide enough for one line per table row.
    environment |= {"PYTHONPATH": str(REPO_ROOT), "COLUMNS": "1000"}
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == status, result.stdout[-3000:] + result.stderr[-3000:]
    assert TRACEBACK not in result.stdout + result.stderr
    return result


def vitlit(name: str, *arguments: str, cwd: Path, status: int = 0) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", f"vitlit.{name}", *arguments, cwd=cwd, status=status)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, Path]:
    """(the folder commands run in, the README's $CKPT) after one tiny ``python train.py`` run there."""
    cwd = tmp_path_factory.mktemp("project")
    layout = {"train": dict.fromkeys(CLASSES, 3), "test": dict.fromkeys(CLASSES, 2)}
    root = make_image_folder(cwd / "data" / "images", layout)
    overrides = [option for option in TINY_RUN if option != "trainer.max_epochs=2"]
    run(sys.executable, str(REPO_ROOT / "train.py"), *overrides, f"data.root={root}", "trainer.max_epochs=1", cwd=cwd)
    [checkpoint] = sorted(cwd.glob("outputs/train/runs/*/checkpoints/last.ckpt"))
    return cwd, checkpoint


def only_run_folder(cwd: Path, task: str) -> Path:
    [folder] = (cwd / "outputs" / task / "runs").iterdir()
    return folder


def table_rows(stdout: str) -> list[str]:
    """The body rows of a rich table (its header row starts with a heavy bar, ┃)."""
    return [line for line in stdout.splitlines() if line.startswith("│")]


def test_predict_prints_a_table_and_saves_an_annotated_copy_of_each_image(project, tmp_path):
    cwd, checkpoint = project
    photo = cwd / "data/images/test/cat/0.jpg"
    result = vitlit("predict", f"ckpt_path={checkpoint}", f"inputs=[{photo},{cwd / 'data/images/test/owl'}/]", cwd=cwd)
    assert "Predictions" in result.stdout
    rows = table_rows(result.stdout)
    assert len(rows) == 3 and "0.jpg" in rows[0] and "owl/0.jpg" in rows[1] and "owl/1.jpg" in rows[2]
    assert all(any(name in row for name in CLASSES) for row in rows)
    run_folder = only_run_folder(cwd, "predict")
    annotated = run_folder / "annotated"
    copies = sorted(p.relative_to(annotated).as_posix() for p in annotated.rglob("*.png"))
    assert copies == ["0.png", "owl/0.png", "owl/1.png"]
    assert len(json.loads((run_folder / "predictions.json").read_text())) == 3


def test_predict_with_a_broken_photo_prints_a_row_per_input_marks_the_bad_one_and_exits_1(project, tmp_path):
    cwd, checkpoint = project
    broken = tmp_path / "broken [1].jpg"  # brackets: a path is shown as text, never read as rich markup
    broken.write_bytes((cwd / "data/images/test/cat/0.jpg").read_bytes()[:100])
    inputs = f"inputs=[{cwd / 'data/images/test/cat/0.jpg'},{cwd / 'data/images/test/owl'}/,'{broken}']"
    table_run = f"hydra.run.dir={tmp_path / 'table'}"
    result = vitlit("predict", f"ckpt_path={checkpoint}", inputs, table_run, cwd=cwd, status=1)
    rows = table_rows(result.stdout)
    assert len(rows) == 4 and "not classified" in result.stdout
    assert "broken [1].jpg" in rows[3] and "cannot be decoded" in rows[3]
    assert result.stderr.rstrip().splitlines()[-1] == f"Error: 1 of 4 inputs could not be classified: {broken}"

    machine = vitlit(
        "predict", f"ckpt_path={checkpoint}", inputs, "top_k=1", "json=true", f"hydra.run.dir={tmp_path / 'json'}",
        cwd=cwd, status=1,
    )  # fmt: skip
    printed = json.loads(machine.stdout)  # JSON alone on stdout
    assert [len(entry.get("predictions", [])) for entry in printed] == [1, 1, 1, 0]
    assert printed[3]["path"] == str(broken) and printed[3]["error"].startswith("cannot be decoded")


def test_eval_tests_the_checkpoint_on_its_own_data_and_writes_the_report(project):
    cwd, checkpoint = project
    result = vitlit("eval", f"ckpt_path={checkpoint}", cwd=cwd)
    assert "test/acc" in result.stdout and "Testing ━" in result.stdout  # the metrics table and the progress bar
    run_folder = only_run_folder(cwd, "eval")
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["test/acc"] <= 1.0
    for picture in ("confusion_matrix.png", "predictions.png"):  # curves.png: the training run kept no history
        assert (run_folder / picture).stat().st_size > 0
    assert list((run_folder / "tensorboard").rglob("events.out.tfevents.*"))


def test_export_writes_torchvision_weights_once_and_never_over_a_file(project):
    cwd, checkpoint = project
    vitlit("export", str(checkpoint), "my_vit.safetensors", "--layout", "torchvision", cwd=cwd)
    from safetensors.torch import load_file
    from torchvision.models import VisionTransformer

    from vitlit import ViTClassifier

    module = ViTClassifier.load_from_checkpoint(checkpoint).eval()
    net = module.hparams.net
    model = VisionTransformer(224, 16, net["depth"], net["num_heads"], net["embed_dim"], net["mlp_dim"], num_classes=3)
    model.load_state_dict(load_file(cwd / "my_vit.safetensors"), strict=True)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert (model.eval()(images) - module.model(images)).abs().max() <= 1e-5
    before = (cwd / "my_vit.safetensors").read_bytes()
    again = vitlit("export", str(checkpoint), "my_vit.safetensors", "--layout", "torchvision", cwd=cwd, status=1)
    assert again.stderr.startswith("Error: my_vit.safetensors already exists")
    assert (cwd / "my_vit.safetensors").read_bytes() == before
    assert [p.name for p in cwd.iterdir() if p.name.startswith(".")] == []  # no temporary file left beside it


def test_export_writes_an_onnx_graph_that_onnxruntime_runs(project):
    pytest.importorskip("onnxscript", reason="the onnx extra: pip install 'vitlit[onnx]'")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'vitlit[onnx]'")
    cwd, checkpoint = project
    result = vitlit("export", str(checkpoint), "model.onnx", cwd=cwd)
    assert "onnxruntime check" in result.stderr
    session = onnxruntime.InferenceSession(str(cwd / "model.onnx"))
    [logits] = session.run(None, {session.get_inputs()[0].name: torch.zeros(2, 3, 224, 224, dtype=torch.uint8).numpy()})
    assert logits.shape == (2, 3)


def test_streaming_optimize_turns_the_image_folder_into_shards(project, tmp_path):
    pytest.importorskip("litdata", reason="the streaming extra: pip install 'vitlit[streaming]'")
    cwd, _ = project
    vitlit("streaming", "optimize", str(cwd / "data" / "images"), str(tmp_path / "shards"), "--workers", "1", cwd=cwd)
    classes = json.loads((tmp_path / "shards" / "classes.json").read_text())
    assert classes["classes"] == list(CLASSES) and classes["splits"] == {"train": 9, "test": 6}
