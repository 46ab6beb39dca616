"""Image pipelines (torchvision transforms v2): uint8 image tensor (3, H, W) -> normalised float (3, S, S).

With ``normalize=False`` they stay in uint8 (3, S, S): the data module sends uint8 batches to the device
and the LightningModule normalises them there.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUTO_AUGMENTS = {
    "trivialaugment": v2.TrivialAugmentWide,  # Müller & Hutter 2021
    "randaugment": v2.RandAugment,  # Cubuk et al. 2020
    "augmix": v2.AugMix,  # Hendrycks et al. 2020
}


def _interpolation(name: str) -> v2.InterpolationMode:
    try:
        return v2.InterpolationMode(name.lower())
    except ValueError:
        choices = ", ".join(mode.value for mode in v2.InterpolationMode)
        raise ValueError(f"data.interpolation={name!r} is not one of: {choices}") from None


def train_transform(
    image_size: int = 224,
    crop_scale: Sequence[float] = (0.08, 1.0),
    horizontal_flip: float = 0.5,
    auto_augment: str | None = None,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
    random_erasing: float = 0.0,
) -> v2.Compose:
    """Random resized crop, horizontal flip, optional automatic augmentation, then normalisation (if ``normalize``).

    ``random_erasing`` is the probability of erasing one random rectangle (Zhong et al. 2020) to the mean
    colour, i.e. to zero after normalisation (timm's ``re_mode="const"``); in uint8 it is the rounded mean.
    """
    steps = [
        v2.RandomResizedCrop(
            image_size, scale=tuple(crop_scale), interpolation=_interpolation(interpolation), antialias=True
        ),
        v2.RandomHorizontalFlip(horizontal_flip),
    ]
    if auto_augment:
        if auto_augment not in AUTO_AUGMENTS:
            raise ValueError(f"data.auto_augment={auto_augment!r} is not one of: {', '.join(AUTO_AUGMENTS)} (or null)")
        steps.append(AUTO_AUGMENTS[auto_augment]())  # these policies work on uint8 images
    steps += _to_normalised_float(mean, std, normalize)
    if random_erasing:
        fill = 0.0 if normalize else [round(255 * channel) for channel in mean]
        steps.append(v2.RandomErasing(random_erasing, value=fill))
    return v2.Compose(steps)


def eval_transform(
    image_size: int = 224,
    crop_fraction: float | Sequence[float] = 0.875,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
) -> v2.Compose | StackedViews:
    """Resize the shorter side to ``image_size / crop_fraction`` (256 for 224), centre-crop ``image_size``,
    then normalise (if ``normalize``).

    Several fractions give one such view per fraction, stacked (V, 3, S, S): multi-scale test-time
    augmentation, whose logits ``ViTClassifier.evaluation_logits`` averages.
    """
    views = [
        v2.Compose(
            [
                v2.Resize(round(image_size / fraction), interpolation=_interpolation(interpolation), antialias=True),
                v2.CenterCrop(image_size),
                *_to_normalised_float(mean, std, normalize),
            ]
        )
        for fraction in crop_fractions(crop_fraction)
    ]
    return views[0] if len(views) == 1 else StackedViews(views)


class Pipelines(NamedTuple):
    """A data module's transforms on uint8 images, and the size JPEGs may be draft-decoded at (None: full size)."""

    train: v2.Compose | StackedViews
    eval: v2.Compose | StackedViews
    draft_size: int | None


def pipelines(
    image_size: int,
    train_augment: bool,
    train_crop_scale: Sequence[float],
    horizontal_flip: float,
    auto_augment: str | None,
    random_erasing: float,
    eval_crop_fraction: float | Sequence[float],
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    fast_decode: bool,
) -> Pipelines:
    """The train and eval transforms of a data module (unnormalised: the model normalises on the device).

    Data modules call it as ``pipelines(**pipeline_settings(self.hparams))``: the arguments are theirs, by name.
    """
    fractions = crop_fractions(eval_crop_fraction)
    evaluation = eval_transform(image_size, fractions, interpolation, mean, std, normalize=False)
    if train_augment:
        training = train_transform(
            image_size,
            train_crop_scale,
            horizontal_flip,
            auto_augment,
            interpolation,
            mean,
            std,
            normalize=False,
            random_erasing=random_erasing,
        )
    elif len(fractions) == 1:
        training = evaluation
    else:  # one view: training batches stay (B, 3, S, S)
        training = eval_transform(image_size, fractions[0], interpolation, mean, std, normalize=False)
    return Pipelines(training, evaluation, round(image_size / min(fractions)) if fast_decode else None)


def pipeline_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of :func:`pipelines`, picked by name from a data module's hyperparameters."""
    return {name: hparams[name] for name in inspect.signature(pipelines).parameters}


def crop_fractions(crop_fraction: float | Sequence[float]) -> tuple[float, ...]:
    """``data.eval_crop_fraction`` (one fraction or a list) as a tuple of fractions (their range: config_checks)."""
    return (crop_fraction,) if isinstance(crop_fraction, (int, float)) else tuple(crop_fraction)


class StackedViews(torch.nn.Module):
    """Applies every view transform to the same image and stacks the results: (V, 3, S, S)."""

    def __init__(self, views: Sequence[v2.Transform]):
        super().__init__()
        self.views = torch.nn.ModuleList(views)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([view(image) for view in self.views])


def _to_normalised_float(mean: Sequence[float], std: Sequence[float], normalize: bool) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)] if normalize else []
