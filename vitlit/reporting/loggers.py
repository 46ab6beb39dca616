"""The one place that knows what each Lightning logger can take: pictures, files, hyperparameters with final metrics.

Public APIs: TensorBoard's ``SummaryWriter.add_image`` and ``TensorBoardLogger.log_hyperparams(params,
metrics)`` (its HPARAMS tab), MLflow's client ``log_image`` / ``log_artifact`` (artifacts of the run), W&B's
``WandbLogger.log_image`` and the run summary. One exception: TensorBoard photo grids are stored as JPEG through
:func:`vitlit.private_api.add_tensorboard_summary` (``add_image`` encodes only PNG, about a second per grid).
The CSV logger takes metrics and ``hparams.yaml`` only; the run folder holds the pictures as PNG files anyway.
Other loggers get the metrics and hyperparameters.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from vitlit.private_api import add_tensorboard_summary
from vitlit.reporting.figures import figure_to_array

IMAGE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)


def takes_images(loggers: Iterable[Logger]) -> bool:
    """Whether any of ``loggers`` shows pictures (so drawing them is worth its CPU seconds)."""
    return any(isinstance(logger, IMAGE_LOGGERS) for logger in loggers)


def add_tensorboard_image(writer: Any, tag: str, image: np.ndarray, step: int, photo: bool = False) -> None:
    """Add an RGB uint8 image (H, W, 3) to TensorBoard's IMAGES tab.

    ``photo=True`` stores it as a JPEG: ``SummaryWriter.add_image`` always encodes PNG, which takes
    about a second for a grid of photos, every epoch; a JPEG takes a few milliseconds. No public
    ``SummaryWriter`` method writes a ready-made image summary, hence the private helper.
    """
    if not photo:
        writer.add_image(tag, image, step, dataformats="HWC")
        return
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    height, width = image.shape[:2]
    encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    add_tensorboard_summary(writer, Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


def log_image(loggers: Iterable[Logger], tag: str, image: np.ndarray, step: int, photo: bool = False) -> None:
    """Send an RGB uint8 image (H, W, 3) named ``tag`` (e.g. ``val/predictions``) at ``step`` to every logger
    that takes pictures. MLflow keeps it as the artifact ``<tag>/step_<step>.png`` (``.jpg`` for a ``photo``)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            add_tensorboard_image(logger.experiment, tag, image, step, photo)
        elif isinstance(logger, MLFlowLogger):
            name = f"{tag}/step_{step:06d}.{'jpg' if photo else 'png'}"
            logger.experiment.log_image(logger.run_id, image, artifact_file=name)
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [image], step=step)


def log_figure(loggers: Sequence[Logger], tag: str, figure: Figure, step: int, photo: bool = False) -> None:
    """:func:`log_image` of a matplotlib figure, rendered once and only when a logger takes pictures."""
    if takes_images(loggers):
        log_image(loggers, tag, figure_to_array(figure), step, photo)


def log_files(loggers: Iterable[Logger], paths: Iterable[str | Path], folder: str = "report") -> None:
    """Attach finished files (the run report: PNGs, metrics.json) to the loggers that keep files: MLflow as
    artifacts under ``folder/``, W&B as images ``<folder>/<name>`` (PNGs only)."""
    paths = [Path(path) for path in paths]
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for path in paths:
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=folder)
        elif isinstance(logger, WandbLogger):
            for path in paths:
                if path.suffix == ".png":
                    logger.log_image(f"{folder}/{path.stem}", [str(path)])


def log_scalars(loggers: Iterable[Logger], scalars: Mapping[str, float], step: int) -> None:
    """``log_metrics`` on every logger (each one's public API)."""
    for logger in loggers:
        logger.log_metrics(dict(scalars), step=step)


def log_tensorboard_hparams(
    logger: TensorBoardLogger,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float],
    step: int,
    swept: Collection[str] = (),
) -> None:
    """What ``TensorBoardLogger.log_hyperparams(hparams, metrics)`` writes, with the ``swept`` columns marked
    ``differs``: TensorBoard's table puts those first and shows only the first five (the rest sorted by name)."""
    logger.log_hyperparams(dict(hparams))  # hparams.yaml; with default_hp_metric=false no summaries yet
    logger.log_metrics(dict(metrics), step)
    experiment, session_start, session_end = hparams_summaries(dict(hparams), dict(metrics))
    plugin_data = experiment.value[0].metadata.plugin_data
    content = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in swept
    plugin_data.content = content.SerializeToString()
    for summary in (experiment, session_start, session_end):
        add_tensorboard_summary(logger.experiment, summary, step)


def log_final_hparams(
    loggers: Iterable[Logger],
    hparams: Mapping[str, Any],
    metrics: Mapping[str, float],
    step: int,
    compared: Mapping[str, Any] | None = None,
    swept: Collection[str] = (),
) -> None:
    """The run's hyperparameters with its final metrics beside them: TensorBoard's HPARAMS tab (``compared``
    instead of ``hparams`` when given, ``swept`` columns first: :func:`log_tensorboard_hparams`), MLflow's params
    and metrics, W&B's config and run summary, the CSV logger's hparams.yaml and metrics.csv."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_tensorboard_hparams(logger, compared if compared is not None else hparams, metrics, step, swept)
            continue
        logger.log_hyperparams(dict(hparams))
        if metrics:
            logger.log_metrics(dict(metrics), step=step)
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(dict(metrics))


def close_loggers(loggers: Iterable[Logger]) -> None:
    """Flush and close every logger. A W&B run is finished too: the next run in the same process (a sweep,
    tests) would otherwise reuse it."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
