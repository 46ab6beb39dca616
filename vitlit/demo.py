"""A web page for a checkpoint: ``python -m vitlit.demo ckpt_path=<ckpt> [server_port=7860]``.

Drop or pick a photo; the page shows the top-k classes with their probabilities and the class token's attention
rollout over the photo as the model sees it (resized and centre-cropped by the checkpoint's eval transform).
Everything comes from the checkpoint through :class:`vitlit.inference.Predictor`, as for ``vitlit.predict``: the
same probabilities, on a GPU where there is one (``device=auto``). Needs Gradio (``pip install 'vitlit[demo]'``).
See conf/demo.yaml, and docs/demo.md for a Hugging Face Space.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from omegaconf import DictConfig

from vitlit.configs import CONFIG_DIR
from vitlit.data.image_folder import IMAGE_EXTENSIONS, is_image
from vitlit.inference.checkpoint import data_settings, read_checkpoint
from vitlit.inference.predictor import ImageDecodeError, Predictor, top_classes, top_k_shown
from vitlit.reporting.figures import ATTENTION_ALPHA
from vitlit.user_errors import user_errors_as_messages

if TYPE_CHECKING:
    import gradio

log = logging.getLogger(__name__)

API_NAME = "classify"  # gradio_client: Client(url).predict(handle_file(photo), api_name="/classify")
OVERLAY_MIN_SIDE = 320  # pixels: a 32-pixel model input is still visible on the page
INSTALL_HINT = "the demo needs Gradio: pip install 'vitlit[demo]'  (or: pip install gradio)"


def _gradio():
    try:
        import gradio
    except ImportError as error:
        raise ModuleNotFoundError(INSTALL_HINT) from error
    return gradio


class PhotoClassifier:
    """What the page runs: a photo file -> its class probabilities and the model's view under its attention."""

    def __init__(self, ckpt_path: str | os.PathLike, device: str = "auto"):
        checkpoint = read_checkpoint(ckpt_path)
        self.path = Path(ckpt_path)
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device)
        self.net = checkpoint["hyper_parameters"]["net"]
        self.data_root = data_settings(checkpoint).get("root")

    def __call__(self, path: str | os.PathLike, name: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Returns the probabilities (classes,) as ``vitlit.predict`` computes them and the model's view of the
        photo (S, S, 3) uint8 under its attention rollout. Raises ``ValueError`` naming the file (``name``, else
        its file name) when it is not an image."""
        try:
            image = self.predictor.load_image(path)
        except ImageDecodeError as error:
            raise ValueError(
                f"{name or Path(path).name} {error}; pick a photo ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            ) from None
        probabilities, view, attention = self.predictor.probabilities_and_attention(image)
        return probabilities, attention_overlay(view.permute(1, 2, 0).numpy(), attention)


def attention_overlay(image: np.ndarray, attention: torch.Tensor, min_side: int = OVERLAY_MIN_SIDE) -> np.ndarray:
    """``image`` (H, W, 3) uint8 under ``attention`` (h, w) in [0, 1], drawn as a translucent inferno heat map
    (bright: where the class token looked), both upsampled to at least ``min_side`` pixels: (H', W', 3) uint8."""
    scale = max(1, -(-min_side // min(image.shape[:2])))  # a whole factor: small model inputs stay sharp
    size = (image.shape[0] * scale, image.shape[1] * scale)
    shown = image.repeat(scale, axis=0).repeat(scale, axis=1) / 255.0
    heat = F.interpolate(attention[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    colours = colormaps["inferno"](heat.clamp(0, 1).numpy())[..., :3]
    blended = (1 - ATTENTION_ALPHA) * shown + ATTENTION_ALPHA * colours
    return (blended * 255).round().astype(np.uint8)


def example_photos(data_root: str | os.PathLike | None, count: int) -> list[Path]:
    """Up to ``count`` photos of the checkpoint's own test split (``test/``, else ``val/``), one class after
    another; none when the data is not on this machine."""
    if data_root is None or count < 1:
        return []
    root = Path(data_root).expanduser()
    split = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if split is None:
        return []
    per_class = [sorted(p for p in folder.rglob("*") if is_image(p, folder)) for folder in sorted(split.iterdir())]
    per_class = [photos for photos in per_class if photos]
    chosen: list[Path] = []
    for rank in range(max(map(len, per_class), default=0)):
        chosen += [photos[rank] for photos in per_class if rank < len(photos)]
    return chosen[:count]


def build_demo(
    ckpt_path: str | os.PathLike,
    top_k: int = 3,
    examples: int = 6,
    examples_root: str | os.PathLike | None = None,
    device: str = "auto",
) -> gradio.Blocks:
    """The page for the checkpoint at ``ckpt_path``: ``build_demo("model.ckpt").launch()`` serves it.

    Its API ``/classify`` takes a photo and returns the top ``top_k`` classes (a ``gr.Label``) and the attention
    overlay (a PNG); the network runs on ``device`` (``auto``: CUDA, then MPS, then the CPU). ``examples`` photos
    of the test split are offered when the data is on disk: under ``examples_root`` (laid out as
    ``test/<class>/*.jpg``), else the checkpoint's own data root.
    """
    classifier = PhotoClassifier(ckpt_path, device)
    gr = _gradio()
    class_names = classifier.predictor.class_names

    def classify(photo: Mapping[str, Any] | None) -> tuple[dict[str, float] | None, np.ndarray | None]:
        # The upload arrives unprocessed (preprocess=False): gr.Image would decode it first and hide our message.
        if photo is None:
            return None, None
        try:
            probabilities, overlay = classifier(photo["path"], name=photo.get("orig_name"))
        except ValueError as error:
            raise gr.Error(str(error)) from None
        return dict(top_classes(probabilities, class_names, top_k)), overlay

    net = classifier.net
    names = ", ".join(class_names)
    with gr.Blocks(title=f"vitlit: {classifier.path.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## vitlit: {classifier.path.name}\n"
            f"A ViT ({net['depth']} blocks, width {net['embed_dim']}, {net['image_size']} px) that knows "
            f"{len(class_names)} classes: {names}. Drop or pick a photo."
        )
        with gr.Row():
            photo = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Photo", elem_id="photo")
            with gr.Column():
                shown = top_k_shown(top_k, len(class_names))
                label = gr.Label(num_top_classes=shown, label=f"Top {shown}", elem_id="prediction")
                overlay = gr.Image(
                    type="numpy", format="png", interactive=False, label="Attention rollout", elem_id="attention"
                )
        photo.change(classify, inputs=photo, outputs=[label, overlay], api_name=API_NAME, preprocess=False)
        if found := example_photos(examples_root or classifier.data_root, examples):
            gr.Examples([[str(path)] for path in found], inputs=photo, label="Photos of the checkpoint's test split")
    return demo


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="demo")
def main(cfg: DictConfig) -> None:
    with user_errors_as_messages():
        try:
            demo = build_demo(cfg.ckpt_path, cfg.top_k, cfg.examples, cfg.examples_root, cfg.get("device", "auto"))
        except ModuleNotFoundError as error:
            sys.exit(f"Error: {error}")
    try:
        demo.launch(server_name=cfg.server_name, server_port=cfg.server_port, share=cfg.share)
    except OSError as error:  # the port is taken
        sys.exit(f"Error: {error} Pick another one: server_port=<port>.")


if __name__ == "__main__":
    main()
