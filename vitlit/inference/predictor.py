"""How vitlit classifies an image, written once: decode, the evaluation views, normalise, the network, average.

An image is decoded upright (JPEGs at a reduced scale when the checkpoint's data module did so), resized and
centre-cropped once per view (``data.eval_crop_fraction``: one fraction, or several for multi-scale views),
normalised with the checkpoint's mean and std, and classified; the logits of every view, and of its mirror
image with ``test_time_flip``, are averaged, then turned into probabilities. Evaluation (``ViTClassifier``),
prediction, the demo and the ONNX graph all go through :func:`normalize` and :func:`average_logits`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError

from vitlit.data.image_folder import load_rgb
from vitlit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_fractions, eval_transform
from vitlit.inference.checkpoint import (
    checkpoint_class_names,
    eval_transform_settings,
    network_from_checkpoint,
    read_checkpoint,
)
from vitlit.models.attention_maps import attention_maps
from vitlit.models.vit import ViT


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; anything else is passed to ``torch.device``."""
    if str(name) != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float images normalised with ``mean``/``std`` (broadcastable, e.g. (1, 3, 1, 1));
    float images are taken as already normalised and pass unchanged."""
    if images.is_floating_point():
        return images
    return (images.float() / 255.0 - mean) / std


def average_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, test_time_flip: bool
) -> torch.Tensor:
    """Logits (B, classes) of ``forward`` averaged over the views of each image and, with ``test_time_flip``, their
    mirror images. ``images`` (B, 3, S, S) is one view each, (B, V, 3, S, S) V views."""
    views = images.shape[1] if images.ndim == 5 else 1
    images = images.flatten(0, 1) if images.ndim == 5 else images
    logits = forward(images)
    if test_time_flip:
        logits = (logits + forward(images.flip(-1))) / 2
    return logits.unflatten(0, (-1, views)).mean(dim=1)


def top_k_shown(k: int, class_count: int) -> int:
    """``top_k`` as shown: at least one class, at most every class."""
    return max(1, min(int(k), class_count))


def top_classes(probabilities: torch.Tensor, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one image (:func:`top_k_shown`), most probable first."""
    values, indices = probabilities.topk(top_k_shown(k, len(class_names)))
    return [(class_names[i], float(v)) for v, i in zip(values, indices.tolist(), strict=True)]


class ImageDecodeError(ValueError):
    """A file that is not an image PIL can decode; the message says why (``cannot be decoded (...)``)."""


class Predictor:
    """A trained network with its class names and evaluation views: decoded images -> class probabilities.

    ``Predictor.from_checkpoint("last.ckpt")`` builds it from a checkpoint alone, on ``device`` (``auto``: CUDA,
    then MPS, then the CPU). ``probabilities(images)`` takes uint8 RGB tensors (3, H, W) of any size, as
    :meth:`load_image` decodes them, and returns (N, classes) float32 on the CPU.
    """

    def __init__(
        self,
        network: ViT,
        class_names: Sequence[str],
        *,
        eval_crop_fraction: float | Sequence[float] = 0.875,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        test_time_flip: bool = False,
        fast_decode: bool = False,
        device: str | torch.device = "auto",
    ):
        self.device = resolve_device(device)
        self.network = network.eval().to(self.device)
        self.class_names = tuple(class_names)
        fractions = crop_fractions(eval_crop_fraction)
        size = network.image_size
        self.views = [eval_transform(size, fraction, interpolation, normalize=False) for fraction in fractions]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.test_time_flip = test_time_flip
        # JPEGs decode at a reduced scale keeping the largest resize, as the data modules decode them.
        self.draft_size = round(size / min(fractions)) if fast_decode else None

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike | Mapping[str, Any], device: str | torch.device = "auto"
    ) -> Predictor:
        """The predictor a vitlit checkpoint (a path, or what :func:`read_checkpoint` returned) describes."""
        if not isinstance(checkpoint, Mapping):
            checkpoint = read_checkpoint(checkpoint)
        hparams, settings = checkpoint["hyper_parameters"], eval_transform_settings(checkpoint)
        return cls(
            network_from_checkpoint(checkpoint),
            checkpoint_class_names(checkpoint),
            eval_crop_fraction=settings.get("eval_crop_fraction", 0.875),
            interpolation=settings.get("interpolation", "bilinear"),
            mean=hparams.get("mean", settings.get("mean", IMAGENET_MEAN)),
            std=hparams.get("std", settings.get("std", IMAGENET_STD)),
            test_time_flip=bool(hparams.get("test_time_flip", False)),
            fast_decode=bool(settings["fast_decode"]),
            device=device,
        )

    def load_image(self, path: str | os.PathLike) -> torch.Tensor:
        """Decode an image file as evaluation does: uint8 RGB (3, H, W), upright. Raises :class:`ImageDecodeError`
        when it cannot be decoded."""
        try:
            return load_rgb(Path(path), self.draft_size)
        except OSError as error:  # PIL's UnidentifiedImageError is one too
            # PIL's message for an unknown format names the file again, or a server's temporary copy of it.
            why = "not a picture format PIL decodes" if isinstance(error, UnidentifiedImageError) else str(error)
            raise ImageDecodeError(f"cannot be decoded ({why})") from None

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (3, H, W) -> its views, uint8 (V, 3, S, S)."""
        return torch.stack([view(image) for view in self.views])

    @torch.no_grad()
    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """Prepared images, uint8 (B, V, 3, S, S) -> averaged logits (B, classes), float32 on the CPU."""
        images = normalize(views.to(self.device), self.mean, self.std)
        return average_logits(self.network, images, self.test_time_flip).float().cpu()

    def probabilities(self, images: Sequence[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
        """Decoded images, uint8 (3, H, W) each -> class probabilities (N, classes), float32 on the CPU."""
        rows = [
            self.logits(torch.stack([self.prepare(image) for image in images[start : start + batch_size]]))
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(rows).softmax(dim=-1) if rows else torch.empty(0, len(self.class_names))

    @torch.no_grad()
    def probabilities_and_attention(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image, uint8 (3, H, W) -> its probabilities (classes,), its first view uint8 (3, S, S) and the class
        token's attention rollout over that view (h, w) in [0, 1]. The network runs once per view (and mirror)."""
        views = self.prepare(image)
        normalised = normalize(views.to(self.device), self.mean, self.std)
        maps: list[torch.Tensor] = []

        def forward_recording_attention(images: torch.Tensor) -> torch.Tensor:
            if maps:  # the mirrored views: their attention is not shown
                return self.network(images)
            logits, _, attention = attention_maps(self.network, images, method="rollout")
            maps.append(attention[0])
            return logits

        logits = average_logits(forward_recording_attention, normalised[None], self.test_time_flip)
        return logits.float().softmax(dim=-1)[0].cpu(), views[0], maps[0].cpu()
