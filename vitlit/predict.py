"""Classify images with a checkpoint: ``python -m vitlit.predict ckpt_path=<ckpt> inputs=[photo.jpg,folder/]``.

Prints the top-k classes per image (a table, or JSON with ``json=true``), writes ``predictions.json``
and a copy of each image titled ``Pred: pizza | Prob: 0.921`` (``annotated/``) into its own run
folder, ``outputs/predict/runs/<date>_<time>/``. Class names and the eval views come from the
checkpoint (:class:`vitlit.inference.Predictor`); Lightning is never imported. See conf/predict.yaml.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vitlit.configs import CONFIG_DIR
from vitlit.data.image_folder import HEIF_EXTENSIONS, HEIF_INSTALL, IMAGE_EXTENSIONS, images_in, log_ignored_files
from vitlit.inference.predictor import ImageDecodeError, Predictor, top_classes
from vitlit.reporting.annotated_image import prediction_title, save_annotated_image
from vitlit.reporting.atomic_files import write_text_atomically
from vitlit.reporting.console import RichConsoleHandler
from vitlit.user_errors import user_errors_as_messages

log = logging.getLogger(__name__)


def image_files(inputs: str | Sequence[str]) -> tuple[dict[Path, Path], dict[Path, str]]:
    """Image files named by ``inputs`` -> a short name for each: files as given (named by their file name),
    folders searched recursively in sorted order (named ``<folder>/<path inside it>``). Duplicates are dropped.

    Also returns the inputs that name no image (a missing path, a file that is not an image, a folder without
    images) -> why, so that the good ones are still classified. Other files inside folders are counted in a warning.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    files: dict[Path, Path] = {}
    problems: dict[Path, str] = {}
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    for entry in inputs:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            found, ignored = images_in(path)
            log_ignored_files(path, ignored)
            if not found:
                problems[path] = f"a folder without images ({extensions})"
            for file in found:
                files.setdefault(file.resolve(), Path(path.resolve().name) / file.relative_to(path))
        elif path.is_file():
            if path.suffix.lower() in HEIF_EXTENSIONS - IMAGE_EXTENSIONS:
                problems[path] = HEIF_INSTALL
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                problems[path] = f"not an image file ({extensions})"
            else:
                files.setdefault(path.resolve(), Path(path.name))
        else:
            problems[path] = "no file or folder there"
    return files, problems


def _unique_name(name: Path, taken: set[Path]) -> Path:
    """``name`` with a .png suffix, numbered when an earlier image already took it."""
    candidate, number = name.with_suffix(".png"), 1
    while candidate in taken:
        number += 1
        candidate = name.with_name(f"{name.stem}_{number}.png")
    taken.add(candidate)
    return candidate


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Classify every image of ``cfg.inputs`` with the checkpoint ``cfg.ckpt_path``.

    Returns one record per image: ``path``, ``predictions`` (the top ``cfg.top_k`` as ``{"class", "probability"}``),
    ``probabilities`` (every class) and ``annotated`` (the titled copy, when ``cfg.annotate``); then one record
    ``{"path", "error"}`` per input that could not be classified (missing, not an image, undecodable). Also writes
    them to ``<cfg.paths.output_dir>/predictions.json``. Raises when no input could be classified.
    """
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, device=cfg.get("device", "auto"))
    names_of_files, problems = image_files(list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else str(cfg.inputs))
    files = list(names_of_files)
    output_dir = Path(cfg.paths.output_dir)
    taken: set[Path] = set()
    log.info("classifying %d images with %s on %s", len(files), cfg.ckpt_path, predictor.device)

    records = []
    batch_size = int(cfg.batch_size)
    for start in range(0, len(files), batch_size):
        batch, images = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(predictor.load_image(path))
                batch.append(path)
            except ImageDecodeError as error:
                problems[path] = str(error)
        for path, image, row in zip(batch, images, predictor.probabilities(images, batch_size), strict=True):
            top = top_classes(row, predictor.class_names, cfg.top_k)
            record: dict[str, Any] = {
                "path": str(path),
                "predictions": [{"class": name, "probability": probability} for name, probability in top],
                "probabilities": {name: float(p) for name, p in zip(predictor.class_names, row, strict=True)},
            }
            if cfg.get("annotate", True):
                target = output_dir / "annotated" / _unique_name(names_of_files[path], taken)
                save_annotated_image(image.permute(1, 2, 0).numpy(), prediction_title(*top[0]), target)
                record["annotated"] = str(target)
            records.append(record)

    failed = "\n".join(f"  {path}: {why}" for path, why in problems.items())
    if not records:
        raise ValueError(f"none of the inputs could be classified:\n{failed}\nPass image files or folders of images.")
    if problems:
        log.warning("%d inputs could not be classified:\n%s", len(problems), failed)
    records += [{"path": str(path), "error": why} for path, why in problems.items()]
    write_text_atomically(output_dir / "predictions.json", json.dumps(records, indent=2) + "\n")
    log.info("predictions: %s", output_dir / "predictions.json")
    return records


def predictions_table(records: Sequence[dict[str, Any]]) -> Table:
    """One row per input: its path and the top-k classes with their probabilities, or why it was not classified."""
    table = Table(title="Predictions", title_justify="left")
    table.add_column("image", overflow="fold")  # the full path, folded, never cut
    ranks = max((len(record.get("predictions", ())) for record in records), default=0)
    for rank in range(ranks):
        table.add_column(f"#{rank + 1}")
        table.add_column("prob", justify="right")
    if any("error" in record for record in records):
        table.add_column("not classified", overflow="fold", style="red")
    for record in records:  # Text, not markup: a path or a reason may hold brackets
        cells: list[str | Text] = [Text(record["path"])]
        for prediction in record.get("predictions", ()):
            cells += [Text(prediction["class"]), f"{prediction['probability']:.3f}"]
        if "error" in record:
            cells += [""] * (2 * ranks) + [Text(record["error"])]
        table.add_row(*cells)
    return table


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    if cfg.json:  # keep stdout parseable: info goes only to the run's log file, warnings to stderr
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, RichConsoleHandler)]:
            root.removeHandler(handler)
            to_stderr = logging.StreamHandler(sys.stderr)
            to_stderr.setLevel(logging.WARNING)
            to_stderr.setFormatter(handler.formatter)
            root.addHandler(to_stderr)
    with user_errors_as_messages():
        records = predict(cfg)
    if cfg.json:
        shown = ("path", "predictions", "error")
        print(json.dumps([{key: r[key] for key in shown if key in r} for r in records], indent=2))
    else:
        console = Console()
        console.width = max(console.width, 120)  # room for long paths when stdout is not a terminal
        console.print(predictions_table(records))
    failed = [record["path"] for record in records if "error" in record]
    if failed:  # exit status 1: not every input was classified
        sys.exit(f"Error: {len(failed)} of {len(records)} inputs could not be classified: {', '.join(failed)}")


if __name__ == "__main__":
    main()
