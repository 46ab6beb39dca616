"""A photo titled with its prediction, ``Pred: pizza | Prob: 0.921`` in a band above it, as the replaced notebook
showed its predictions: ``vitlit.predict``'s ``annotated/`` copies. Drawn with PIL, so predict needs no matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitlit.reporting.atomic_files import written_atomically

TITLE_BAND = 50  # pixels
TITLE_SIZE = 22  # pixels, Pillow's built-in font (FreeType)


def prediction_title(predicted: str, probability: float) -> str:
    """``Pred: <class> | Prob: <p>``, the replaced notebook's title for a prediction."""
    return f"Pred: {predicted} | Prob: {probability:.3f}"


def annotated_image(image: np.ndarray, title: str, max_side: int = 1024) -> Image.Image:
    """One photo (H, W, 3) uint8, scaled to fit ``max_side`` and to at least 400 pixels wide (so the title fits),
    under a white band holding ``title``, centred: a PIL image."""
    height, width = image.shape[:2]
    scale = min(max_side / max(height, width), max(1.0, 400 / width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    photo = Image.fromarray(image).resize(size, Image.Resampling.BICUBIC) if scale != 1 else Image.fromarray(image)
    canvas = Image.new("RGB", (size[0], size[1] + TITLE_BAND), "white")
    canvas.paste(photo, (0, TITLE_BAND))
    draw = ImageDraw.Draw(canvas)
    draw.text((size[0] / 2, TITLE_BAND / 2), title, fill="black", font=ImageFont.load_default(TITLE_SIZE), anchor="mm")
    return canvas


def save_annotated_image(image: np.ndarray, title: str, path: str | Path) -> Path:
    """Write :func:`annotated_image` as a PNG at ``path`` (folders created; a whole file or none)."""
    with written_atomically(path) as temporary:
        annotated_image(image, title).save(temporary, format="PNG")
    return Path(path)
