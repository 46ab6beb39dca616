"""Pictures of a run, as matplotlib figures: learning curves, confusion matrix, prediction grid, attention overlay.

Pure functions of numbers and images; no Lightning. They build ``matplotlib.figure.Figure`` objects
directly (no ``pyplot``, so no global figure state and no display needed). ``figure_to_array``
turns one into an RGB array for TensorBoard, ``save_figure`` into a PNG file. Sizes are fixed in
inches at ``DPI`` dots per inch, so a file's pixel size follows from its content.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitlit.reporting.annotated_image import prediction_title
from vitlit.reporting.atomic_files import written_atomically

DPI = 100
ATTENTION_ALPHA = 0.55  # the attention heat map's opacity over a photo (figures and the demo page)
RIGHT, WRONG = "#1a7f37", "#cf222e"  # title colours of correct and wrong predictions
CURVES_SIZE = (12.0, 4.5)  # inches: 1200 x 450 pixels
CELL_SIZE = (3.0, 3.45)  # inches per image of a grid: the image and a two-line title
HEADING_HEIGHT = 0.4  # inches above a grid with a heading


def display_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised model inputs (B, 3, H, W) -> viewable uint8 RGB images (B, H, W, 3), ``x * std + mean``.

    The one place that undoes the data pipeline's normalisation for display. uint8 inputs (not yet
    normalised) are returned as they are.
    """
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        pixels = images.float() * std_tensor + mean_tensor
        images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render ``figure`` to an RGB uint8 array (H, W, 3), for ``SummaryWriter.add_image(..., dataformats="HWC")``."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``DPI`` (whole or not at all); returns the path."""
    FigureCanvasAgg(figure)
    with written_atomically(path) as temporary:  # a full disk leaves no half picture
        figure.savefig(temporary, dpi=DPI, format="png")
    return Path(path)


def curves_figure(history: Sequence[Mapping[str, float]], final: Mapping[str, float] | None = None) -> Figure:
    """Two panels, "Loss" and "Accuracy" by epoch, train against val (the reference notebook's figure).

    ``history`` holds one mapping per epoch with ``epoch`` and any of ``{train,val}/{loss,acc}``;
    ``final`` may add ``test/loss`` and ``test/acc``, drawn as dashed horizontal lines.
    """
    final = final or {}
    last_epoch = max((row["epoch"] for row in history), default=1)
    figure = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, (metric, title) in zip(panels, (("loss", "Loss"), ("acc", "Accuracy")), strict=True):
        for stage, colour in (("train", "#0969da"), ("val", "#bc4c00")):
            points = [(row["epoch"], row[f"{stage}/{metric}"]) for row in history if f"{stage}/{metric}" in row]
            if points:
                epochs, values = zip(*points, strict=True)
                axes.plot(epochs, values, marker="o", color=colour, label=f"{stage}_{metric}")
        if f"test/{metric}" in final:
            value = final[f"test/{metric}"]
            axes.axhline(value, color="#6e7781", linestyle="--", label=f"test_{metric} {value:.4f}")
        axes.set_title(title)
        axes.set_xlabel("Epochs")
        axes.set_xlim(0.5, last_epoch + 0.5)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        if metric == "acc":
            axes.set_ylim(-0.02, 1.02)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    return figure


def confusion_matrix_figure(counts: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Rows are true classes, columns predictions; colours are row-normalised (recall on the diagonal),
    each cell shows its count and its share of the row."""
    counts = np.asarray(counts)
    num_classes = len(class_names)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(2.0 + 0.75 * num_classes, 6.0), 30.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(num_classes)
    slanted = num_classes > 4
    axes.set_xticks(ticks, labels=class_names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title(title)
    if num_classes <= 30:
        font = 12 if num_classes <= 6 else 8
        for row in range(num_classes):
            for column in range(num_classes):
                colour = "white" if shares[row, column] > 0.5 else "black"
                text = f"{counts[row, column]}\n{shares[row, column]:.0%}"
                axes.text(column, row, text, ha="center", va="center", color=colour, fontsize=font)
    return figure


def _grid(num_images: int, heading: str | None = None) -> tuple[Figure, list]:
    """A figure of square image cells with room for a two-line title above each (and ``heading`` on top).

    Cells are placed by hand: a layout engine spends most of a grid's drawing time measuring ticks.
    """
    columns = min(num_images, math.ceil(math.sqrt(num_images)))
    rows = math.ceil(num_images / columns)
    cell_width, cell_height = CELL_SIZE
    top = HEADING_HEIGHT if heading else 0.0
    width, height = cell_width * columns, cell_height * rows + top
    figure = Figure(figsize=(width, height), dpi=DPI)
    margin = 0.05  # inches between images
    cells = []
    for index in range(num_images):
        row, column = divmod(index, columns)
        left = column * cell_width + margin
        bottom = height - top - (row + 1) * cell_height + margin
        side = cell_width - 2 * margin
        axes = figure.add_axes((left / width, bottom / height, side / width, side / height))
        axes.set_axis_off()
        cells.append(axes)
    if heading:
        figure.text(0.5, 1.0 - 0.5 * top / height, heading, ha="center", va="center", fontsize=14)
    return figure, cells


def _cell_title(axes, text: str, colour: str) -> None:
    axes.text(0.5, 1.01, text, transform=axes.transAxes, ha="center", va="bottom", color=colour, fontsize=11)


def prediction_grid_figure(
    images: np.ndarray, labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """A grid of images (B, H, W, 3) uint8, each titled ``Pred: <class> | Prob: <p>`` over ``True: <class>``,
    green when the prediction is right and red when wrong. ``probabilities`` is (B, classes)."""
    figure, cells = _grid(len(images))
    for axes, image, label, row in zip(cells, images, labels, np.asarray(probabilities), strict=True):
        predicted = int(row.argmax())
        axes.imshow(image)
        title = f"{prediction_title(class_names[predicted], float(row[predicted]))}\nTrue: {class_names[label]}"
        _cell_title(axes, title, RIGHT if predicted == label else WRONG)
    return figure


def attention_figure(
    images: np.ndarray,
    maps: torch.Tensor | np.ndarray,
    labels: Sequence[int],
    predicted: Sequence[int],
    class_names: Sequence[str],
    method: str = "rollout",
) -> Figure:
    """Each image (B, H, W, 3) uint8 under its attention map (B, h, w) in [0, 1], upsampled to the image
    and drawn as a translucent heat map (bright: where the class token looked)."""
    maps = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    upsampled = F.interpolate(maps[:, None], size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    heading = f"Class-token attention ({method.replace('_', ' ')}): brighter is more attention"
    figure, cells = _grid(len(images), heading=heading)
    for axes, image, heat, label, guess in zip(cells, images, upsampled.numpy(), labels, predicted, strict=True):
        axes.imshow(image)
        axes.imshow(heat, cmap="inferno", alpha=ATTENTION_ALPHA, vmin=0.0, vmax=1.0)
        _cell_title(axes, f"Pred: {class_names[guess]}\nTrue: {class_names[label]}", RIGHT if guess == label else WRONG)
    return figure
