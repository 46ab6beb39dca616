"""A web page for a checkpoint: ``python -m vitlit.demo ckpt_path=<ckpt> [server_port=7860]``.

Drop or pick a photo; the page shows the top-k classes with their probabilities and the class token's attention
rollout over the photo as the model sees it (resized and centre-cropped by the checkpoint's eval transform).
Everything comes from the checkpoint, as for ``vitlit.predict``; it runs on the CPU. Needs Gradio
(``pip install 'vitlit[demo]'``). See conf/demo.yaml, and docs/demo.md for a Hugging Face Space.
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
from PIL import UnidentifiedImageError

from vitlit.configs import CONFIG_DIR
from vitlit.data.image_folder import IMAGE_EXTENSIONS, is_image, load_rgb
from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vitlit.models.attention_maps import attention_maps
from vitlit.reporting.figures import ATTENTION_ALPHA, display_images
from vitlit.training.checkpoints import (
    checkpoint_eval_transform,
    class_names,
    classifier_from_checkpoint,
    data_settings,
    eval_transform_settings,
    read_checkpoint,
)
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


class CheckpointClassifier:
    """A checkpoint's classifier on the CPU: a photo file -> its class probabilities and attention overlay."""

    def __init__(self, ckpt_path: str | os.PathLike):
        checkpoint = read_checkpoint(ckpt_path)
        self.path = Path(ckpt_path)
        self.class_names = class_names(checkpoint)
        self.transform = checkpoint_eval_transform(checkpoint)
        settings = eval_transform_settings(checkpoint)
        self.mean, self.std = settings.get("mean", IMAGENET_MEAN), settings.get("std", IMAGENET_STD)
        self.module = classifier_from_checkpoint(checkpoint)
        self.data_root = data_settings(checkpoint).get("root")

    @torch.no_grad()
    def __call__(self, path: str | os.PathLike, name: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Returns the probabilities (classes,) as ``vitlit.predict`` computes them and the model's view of the
        photo (S, S, 3) uint8 under its attention rollout. Raises ``ValueError`` naming the file (``name``, else
        its file name) when it is not an image."""
        try:
            image = load_rgb(path)
        except (UnidentifiedImageError, OSError) as error:
            # PIL's message for an unknown format names the server's temporary copy: no use to the user.
            why = "not a picture format PIL decodes" if isinstance(error, UnidentifiedImageError) else str(error)
            raise ValueError(
                f"{name or Path(path).name} is not an image that can be read ({why}); "
                f"pick a photo ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            ) from None
        inputs = self.transform(image)[None]  # normalised: the module's forward is its ViT's
        first_view = inputs[:, 0] if inputs.ndim == 5 else inputs  # data.eval_crop_fraction as a list: V views
        logits, _, maps = attention_maps(self.module.model, first_view, method="rollout")
        if self.module.test_time_flip or inputs.ndim == 5:  # evaluation averages more views than the one drawn
            logits = self.module.evaluation_logits(inputs)
        seen = display_images(first_view, self.mean, self.std)[0]
        return logits.float().softmax(dim=-1)[0], attention_overlay(seen, maps[0])


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
) -> gradio.Blocks:
    """The page for the checkpoint at ``ckpt_path``: ``build_demo("model.ckpt").launch()`` serves it.

    Its API ``/classify`` takes a photo and returns the top ``top_k`` classes (a ``gr.Label``) and the attention
    overlay (a PNG). ``examples`` photos of the test split are offered when the data is on disk: under
    ``examples_root`` (laid out as ``test/<class>/*.jpg``), else the checkpoint's own data root.
    """
    classifier = CheckpointClassifier(ckpt_path)
    gr = _gradio()
    top_k = max(1, min(int(top_k), len(classifier.class_names)))

    def classify(photo: Mapping[str, Any] | None) -> tuple[dict[str, float] | None, np.ndarray | None]:
        # The upload arrives unprocessed (preprocess=False): gr.Image would decode it first and hide our message.
        if photo is None:
            return None, None
        try:
            probabilities, overlay = classifier(photo["path"], name=photo.get("orig_name"))
        except ValueError as error:
            raise gr.Error(str(error)) from None
        values, indices = probabilities.topk(top_k)
        return {classifier.class_names[i]: float(v) for v, i in zip(values, indices.tolist(), strict=True)}, overlay

    net = classifier.module.hparams.net
    names = ", ".join(classifier.class_names)
    with gr.Blocks(title=f"vitlit: {classifier.path.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## vitlit: {classifier.path.name}\n"
            f"A ViT ({net['depth']} blocks, width {net['embed_dim']}, {net['image_size']} px) that knows "
            f"{len(classifier.class_names)} classes: {names}. Drop or pick a photo."
        )
        with gr.Row():
            photo = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Photo", elem_id="photo")
            with gr.Column():
                label = gr.Label(num_top_classes=top_k, label=f"Top {top_k}", elem_id="prediction")
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
            demo = build_demo(cfg.ckpt_path, cfg.top_k, cfg.examples, cfg.examples_root)
        except ModuleNotFoundError as error:
            sys.exit(f"Error: {error}")
    try:
        demo.launch(server_name=cfg.server_name, server_port=cfg.server_port, share=cfg.share)
    except OSError as error:  # the port is taken
        sys.exit(f"Error: {error} Pick another one: server_port=<port>.")


if __name__ == "__main__":
    main()
