"""The demo page (``python -m vitlit.demo``): its API answers what the checkpoint's model says, it refuses files
that are not images with a message, and a real browser sees the prediction and the attention overlay."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, checkpoint_eval_transform, compose_config, make_image_folder
from matplotlib import colormaps
from PIL import Image

from vitlit.data.image_folder import load_rgb
from vitlit.inference.checkpoint import read_checkpoint
from vitlit.training.module import ViTClassifier
from vitlit.training.pipeline import train

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install -e '.[demo]'")

from vitlit.demo import API_NAME, PhotoClassifier, attention_overlay, example_photos  # noqa: E402

CLASSES = ("cat", "dog", "owl")
BROWSER = ("chromium", "chromedriver")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 1-epoch micro ViT at 32 pixels on three colour classes; its test split holds 2 photos per class."""
    tmp = tmp_path_factory.mktemp("demo")
    root = make_image_folder(tmp / "images", {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 2)})
    small = ["model.net.image_size=32", "model.net.patch_size=8"]
    train(compose_config([*TINY_RUN, f"data.root={root}", "trainer.max_epochs=1", "test=false", *small], tmp / "run"))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def photos_of(checkpoint: Path) -> list[Path]:
    root = Path(read_checkpoint(checkpoint)["datamodule_hyper_parameters"]["root"])
    return [root / "test" / name / "0.jpg" for name in CLASSES]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_demo(checkpoint: Path, folder: Path) -> Iterator[str]:
    """``python -m vitlit.demo`` on a free port, as a user starts it: its URL once the page is served."""
    port = free_port()
    environment = os.environ | {"VITLIT_LOG_DIR": str(folder / "outputs"), "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "vitlit.demo", f"ckpt_path={checkpoint}", f"server_port={port}"]
    with open(folder / "demo.out", "w") as output:
        process = subprocess.Popen(command, cwd=folder, env=environment, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not serve {url}:\n{(folder / 'demo.out').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(checkpoint: Path) -> Iterator[str]:
    with serve_demo(checkpoint, checkpoint.parents[2]) as url:
        yield url


@pytest.fixture(scope="module")
def client(served: str):
    return gradio_client.Client(served, verbose=False)


def model_probabilities(checkpoint: Path, photo: Path) -> torch.Tensor:
    """The checkpoint's class probabilities for ``photo``, computed with plain PyTorch, not vitlit's demo code."""
    module = ViTClassifier.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        return module(checkpoint_eval_transform(read_checkpoint(checkpoint))(load_rgb(photo))[None]).softmax(-1)[0]


def test_a_bad_checkpoint_is_one_error_message(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    command = [sys.executable, "-m", "vitlit.demo", f"ckpt_path={tmp_path / 'notes.ckpt'}"]
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    environment["VITLIT_LOG_DIR"] = str(tmp_path / "outputs")
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Error: " in result.stderr and "notes.ckpt is not a vitlit checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_page_answers_with_the_models_own_classes_and_probabilities(checkpoint, client):
    for photo in photos_of(checkpoint):
        label, overlay = client.predict(gradio_client.handle_file(str(photo)), api_name=f"/{API_NAME}")
        expected = model_probabilities(checkpoint, photo)
        assert label["label"] == CLASSES[int(expected.argmax())]
        returned = {entry["label"]: entry["confidence"] for entry in label["confidences"]}
        assert list(returned) == [CLASSES[i] for i in expected.argsort(descending=True).tolist()]  # top_k=3
        for name, probability in returned.items():
            assert probability == pytest.approx(float(expected[CLASSES.index(name)]), abs=1e-5)
        with Image.open(overlay) as image:  # the 32-pixel model input under its rollout, scaled up tenfold
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (320, 320))


@pytest.mark.parametrize("name", ["notes.txt", "not_a_photo.jpg"])
def test_a_file_that_is_not_an_image_gets_a_message_naming_it(client, tmp_path, name):
    (tmp_path / name).write_text("shopping list: eggs, milk")
    with pytest.raises(gradio_client.exceptions.AppError, match=f"{name} cannot be decoded"):
        client.predict(gradio_client.handle_file(str(tmp_path / name)), api_name=f"/{API_NAME}")


@pytest.mark.parametrize(
    ("section", "setting"),
    [
        ("hyper_parameters", {"test_time_flip": True}),
        ("datamodule_hyper_parameters", {"eval_crop_fraction": [0.875, 1.0]}),
    ],
)
def test_checkpoints_that_average_views_get_the_averaged_probabilities(checkpoint, tmp_path, section, setting):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved[section] = {**saved[section], **setting}
    torch.save(saved, tmp_path / "averaging.ckpt")
    photo = photos_of(checkpoint)[0]
    probabilities, _ = PhotoClassifier(tmp_path / "averaging.ckpt")(photo)
    module = ViTClassifier.load_from_checkpoint(tmp_path / "averaging.ckpt").eval()
    transform = checkpoint_eval_transform(read_checkpoint(tmp_path / "averaging.ckpt"))
    with torch.no_grad():
        expected = module.evaluation_logits(transform(load_rgb(photo))[None]).softmax(-1)[0]
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-6)


def test_examples_are_the_test_splits_photos_one_class_after_another(tmp_path):
    root = make_image_folder(tmp_path / "images", {"train": {"cat": 1}, "test": {"cat": 3, "dog": 1, "owl": 2}})
    names = [str(path.relative_to(root / "test")) for path in example_photos(root, 5)]
    assert names == ["cat/0.jpg", "dog/0.jpg", "owl/0.jpg", "cat/1.jpg", "owl/1.jpg"]
    assert example_photos(tmp_path / "elsewhere", 5) == []  # the data is not on this machine
    assert example_photos(None, 5) == []


def test_the_overlay_is_the_photo_under_the_inferno_heat_map_scaled_up():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    attention = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # only the top-left patch
    overlay = attention_overlay(image, attention, min_side=8)
    assert overlay.shape == (8, 8, 3) and overlay.dtype == np.uint8
    for pixel, heat in (((0, 0), 1.0), ((7, 7), 0.0)):
        expected = np.round((0.45 * 100 / 255 + 0.55 * np.array(colormaps["inferno"](heat)[:3])) * 255)
        np.testing.assert_array_equal(overlay[pixel], expected)


@pytest.mark.skipif(
    not all(shutil.which(program) for program in BROWSER),
    reason="the browser test needs the distribution's Chromium: apt-get install chromium chromium-driver",
)
def test_a_browser_shows_the_predicted_class_and_the_attention_overlay(checkpoint, served):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    # The system chromedriver: Selenium Manager would try to download one.
    browser = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        browser.get(served)
        wait = WebDriverWait(browser, 60)
        upload = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#photo input[type=file]"))
        assert "Photos of the checkpoint's test split" in browser.page_source
        photo = photos_of(checkpoint)[2]
        upload.send_keys(str(photo))

        def shown(selector: str, attribute: str | None = None) -> str:
            found = browser.find_elements(By.CSS_SELECTOR, selector)
            return (found[0].get_attribute(attribute) if attribute else found[0].text) if found else ""

        predicted = wait.until(lambda _: shown("#prediction [data-testid='label-output-value']"))
        assert predicted == CLASSES[int(model_probabilities(checkpoint, photo).argmax())]
        assert wait.until(lambda _: shown("#attention img", "src"))
    finally:
        browser.quit()
