"""``vitlit.run(overrides)`` from Python, and examples/colab.ipynb executed as a user runs it (nbclient)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RUN, make_image_folder
from hydra.errors import ConfigCompositionException

import vitlit
from vitlit.reporting.metrics_file import read_final_metrics

NOTEBOOK = REPO_ROOT / "examples" / "colab.ipynb"
METRIC_LINE = re.compile(r"^([\w/]+): (-?\d+\.\d{4})$", re.MULTILINE)


@pytest.fixture
def tiny_images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})


def test_run_trains_into_a_new_folder_under_the_current_one(tiny_images: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VITLIT_LOG_DIR", raising=False)
    overrides = [*TINY_RUN, "debug=fast", f"data.root={tiny_images}"]
    metrics = vitlit.run(overrides)
    again = vitlit.run(overrides)  # the same second: a numbered folder, not the first run's
    first, second = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert second.name == f"{first.name}_2" or second.name > first.name
    for run_dir, returned in ((first, metrics), (second, again)):
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert read_final_metrics(run_dir) == pytest.approx(returned, abs=1e-6)
        assert "Test: test_loss: " in (run_dir / "train.log").read_text()
    assert metrics == pytest.approx(again, abs=1e-5)  # seed 42 both times, each from scratch
    assert {"val/acc", "val/acc_best", "test/acc", "test/loss"} <= set(metrics)
    log_files = [getattr(handler, "baseFilename", "") for handler in logging.getLogger().handlers]
    assert not [name for name in log_files if name.startswith(str(tmp_path))]  # train.log is detached after the run


def test_run_refuses_an_output_dir_that_holds_a_run(tiny_images: Path, tmp_path: Path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "train.log").write_text("an earlier run")
    with pytest.raises(FileExistsError, match="taken already holds a run"):
        vitlit.run([*TINY_RUN, f"data.root={tiny_images}"], output_dir=taken)
    assert (taken / "train.log").read_text() == "an earlier run"


def test_run_names_a_bad_key(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        vitlit.run(["model=vit_micro", "model.no_such_key=1"])
    assert not any(tmp_path.iterdir())  # refused before a run folder is made


def test_the_colab_notebook_trains_and_shows_the_run(tiny_images: Path, tmp_path: Path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("VITLIT_NOTEBOOK_DATA", str(tiny_images))  # the kernel inherits it
    monkeypatch.delenv("VITLIT_LOG_DIR", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    (run_dir,) = (tmp_path / "outputs" / "notebook").iterdir()
    final = read_final_metrics(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    shown = {name: float(value) for name, value in METRIC_LINE.findall(printed)}  # the metrics cell's lines
    assert shown["test/acc"] == pytest.approx(final["test/acc"], abs=1e-4)
    assert shown["val/acc_best"] == pytest.approx(final["val/acc_best"], abs=1e-4)
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) == 2  # curves.png and confusion_matrix.png
