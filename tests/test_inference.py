"""One inference path (``vitlit.inference.Predictor``): the commands that only classify load no Lightning, train.py
answers its command line before torch loads, and eval, predict, the demo and the ONNX file give one answer."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_RUN, compose_config, make_image_folder, write_image
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from vitlit.inference.checkpoint import read_checkpoint
from vitlit.inference.predictor import Predictor, average_logits, normalize
from vitlit.training.pipeline import train

CLASSES = ("cat", "dog", "owl")
HEAVY = ("lightning", "torchmetrics", "pytorch_lightning")
# Runs a module or script as its command line does, then prints which of ``HEAVY`` (and torch) it had loaded.
REPORT_MODULES = """
import atexit, json, runpy, sys
atexit.register(lambda: print("LOADED=" + json.dumps(sorted(m for m in {modules} if m in sys.modules))))
kind, target, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = target
runpy.run_module(target, run_name="__main__") if kind == "module" else runpy.run_path(target, run_name="__main__")
"""


def loaded_modules(kind: str, target: str, *arguments: str, cwd: Path, modules=(*HEAVY, "torch")) -> list[str]:
    script = REPORT_MODULES.format(modules=tuple(modules))
    command = [sys.executable, "-c", script, kind, target, *arguments]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("LOADED=")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("LOADED="))


@pytest.fixture(scope="module")
def averaging_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(image root, checkpoint) of a micro ViT at 32 px evaluated on two crops and their mirrors, trained in fp32.
    The test split holds large JPEGs too, which evaluation decodes at a reduced scale (data.fast_decode)."""
    tmp = tmp_path_factory.mktemp("averaging")
    root = make_image_folder(tmp / "images", {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 2)})
    for index, name in enumerate(CLASSES):
        write_image(root / "test" / name / "large.jpg", (90 * index, 120, 200 - 60 * index), (230, 170), index)
    overrides = [
        *TINY_RUN,
        f"data.root={root}",
        "trainer.max_epochs=1",
        "test=false",
        "model.net.image_size=32",
        "model.net.patch_size=8",
        "model.test_time_flip=true",
        "data.eval_crop_fraction=[0.75,0.875]",
    ]
    train(compose_config(overrides, tmp / "run"))
    return root, tmp / "run" / "checkpoints" / "last.ckpt"


def test_predict_demo_and_export_load_neither_lightning_nor_torchmetrics(averaging_checkpoint, tmp_path):
    root, checkpoint = averaging_checkpoint
    photo = root / "test" / "cat" / "0.jpg"
    predict = ["module", "vitlit.predict", f"ckpt_path={checkpoint}", f"inputs=[{photo}]", f"hydra.run.dir={tmp_path}"]
    assert loaded_modules(*predict, cwd=tmp_path, modules=HEAVY) == []
    export = ["module", "vitlit.export", str(checkpoint), str(tmp_path / "weights.safetensors"), "--layout", "timm"]
    assert loaded_modules(*export, cwd=tmp_path, modules=HEAVY) == []
    assert (tmp_path / "weights.safetensors").is_file()
    pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
    build_page = tmp_path / "build_page.py"
    build_page.write_text(f"from vitlit.demo import build_demo\nbuild_demo({str(checkpoint)!r})\n")
    assert loaded_modules("path", str(build_page), cwd=tmp_path, modules=HEAVY) == []


@pytest.mark.parametrize("arguments", [["--help"], ["--cfg", "job"], ["trainer.max_epoch=3"]])
def test_train_py_answers_its_command_line_before_torch_is_imported(tmp_path, arguments):
    assert loaded_modules("path", str(REPO_ROOT / "train.py"), *arguments, cwd=tmp_path) == []


def test_a_misspelled_key_is_hydras_message_without_a_traceback(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "train.py"), "trainer.max_epoch=3"]
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Key 'max_epoch' is not in struct" in result.stderr and "Traceback" not in result.stderr


def test_average_logits_averages_every_view_and_its_mirror():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images = torch.randn(2, 3, 3, 4, 4)  # 2 images, 3 views
    expected = torch.stack(
        [(network(images[:, v]) + network(images[:, v].flip(-1))) / 2 for v in range(3)]
    ).mean(dim=0)  # fmt: skip
    torch.testing.assert_close(average_logits(network, images, test_time_flip=True), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(average_logits(network, images[:, 0], False), network(images[:, 0]), rtol=0, atol=0)


def test_normalize_scales_uint8_and_passes_float_unchanged():
    mean, std = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1), torch.tensor([0.5, 0.5, 1.0]).view(1, 3, 1, 1)
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert normalize(pixels, mean, std)[0, :, 0].tolist() == [[-1.0, 1.0], [-0.5, 1.5], [0.0, 1.0]]
    floats = torch.randn(1, 3, 1, 2)
    assert normalize(floats, mean, std) is floats


def test_the_predictor_decodes_jpegs_at_the_draft_size_the_data_module_used(averaging_checkpoint):
    root, checkpoint = averaging_checkpoint
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert predictor.draft_size == round(32 / 0.75)  # the larger resize of the two views
    assert tuple(predictor.load_image(root / "test" / "cat" / "large.jpg").shape) == (3, 85, 115)  # half of 230x170
    assert predictor.prepare(predictor.load_image(root / "test" / "cat" / "0.jpg")).shape == (2, 3, 32, 32)


def onnx_probabilities(model: Path, photo: Path) -> torch.Tensor:
    """The ONNX file's probabilities for ``photo``, prepared as its metadata says, without vitlit's code:
    JPEG draft decoding, then per view a shorter-side resize and a centre crop; the views' logits averaged."""
    import onnx
    import onnxruntime

    metadata = {entry.key: json.loads(entry.value) for entry in onnx.load(str(model)).metadata_props}
    with Image.open(photo) as image:
        if metadata["jpeg_draft_size"]:
            image.draft(None, (metadata["jpeg_draft_size"],) * 2)
        pixels = pil_to_tensor(image.convert("RGB"))
    sizes = metadata["resize"] if isinstance(metadata["resize"], list) else [metadata["resize"]]
    mode = v2.InterpolationMode(metadata["interpolation"])
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = []
    for size in sizes:
        view = v2.CenterCrop(metadata["image_size"])(v2.Resize(size, interpolation=mode, antialias=True)(pixels))
        logits.append(torch.from_numpy(session.run(None, {"images": view[None].numpy()})[0][0]))
    return torch.stack(logits).mean(dim=0).softmax(dim=-1)


def test_eval_predict_the_demo_and_the_onnx_file_give_the_same_probabilities(averaging_checkpoint, tmp_path):
    from test_demo import serve_demo

    from vitlit.eval import evaluate
    from vitlit.export import main as export_main
    from vitlit.predict import predict

    root, checkpoint = averaging_checkpoint
    photos = sorted((root / "test").rglob("*.jpg"))
    eval_overrides = [f"ckpt_path={checkpoint}", "trainer.precision=32-true", "callbacks.progress_bar=null"]
    evaluate(compose_config(eval_overrides, tmp_path / "eval", config_name="eval"))
    with (tmp_path / "eval" / "test_predictions.csv").open() as file:
        rows = {row["path"]: row for row in csv.DictReader(file)}
    from_eval = {Path(path): torch.tensor([float(row[f"p_{name}"]) for name in CLASSES]) for path, row in rows.items()}
    assert sorted(from_eval) == photos

    predict_cfg = compose_config([f"ckpt_path={checkpoint}", f"inputs=[{root / 'test'}]"], tmp_path / "p", "predict")
    records = predict(predict_cfg)
    from_predict = {Path(r["path"]): torch.tensor([r["probabilities"][name] for name in CLASSES]) for r in records}

    for photo in photos:
        torch.testing.assert_close(from_predict[photo], from_eval[photo], rtol=0, atol=1e-5)

    if not read_checkpoint(checkpoint)["hyper_parameters"]["test_time_flip"]:
        pytest.fail("the checkpoint must test on mirrored images too")
    try:
        export_main([str(checkpoint), str(tmp_path / "model.onnx")])
    except SystemExit as missing:  # the onnx extra is not installed
        pytest.skip(str(missing))
    for photo in photos:
        from_onnx = onnx_probabilities(tmp_path / "model.onnx", photo)
        torch.testing.assert_close(from_onnx, from_eval[photo], rtol=0, atol=1e-5)

    gradio_client = pytest.importorskip("gradio_client", reason="the demo needs vitlit[demo]")
    with serve_demo(checkpoint, tmp_path) as url:
        client = gradio_client.Client(url, verbose=False)
        for photo in photos:
            label, _ = client.predict(gradio_client.handle_file(str(photo)), api_name="/classify")
            shown = {entry["label"]: entry["confidence"] for entry in label["confidences"]}
            assert list(shown) == sorted(CLASSES, key=lambda name: -from_eval[photo][CLASSES.index(name)])
            for name, probability in shown.items():
                assert probability == pytest.approx(float(from_eval[photo][CLASSES.index(name)]), abs=1e-5)
