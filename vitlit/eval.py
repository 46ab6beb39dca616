"""Evaluate a checkpoint on a test split: ``python -m vitlit.eval ckpt_path=<ckpt> [data=image_folder data.root=...]``.

Writes the run report (confusion_matrix.png, predictions.png, curves.png from the checkpoint's own
training history, metrics.json) and TensorBoard events into its own run folder,
``outputs/eval/runs/<date>_<time>/``; nothing beside the checkpoint is touched. See conf/eval.yaml.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vitlit.configs import CONFIG_DIR
from vitlit.data.datamodule import ImageFolderDataModule
from vitlit.data.streaming import StreamingDataModule
from vitlit.inference.checkpoint import (
    EVAL_TRANSFORM_KEYS,
    checkpoint_class_names,
    data_settings,
    eval_transform_settings,
    read_checkpoint,
)
from vitlit.reporting.report import RunReport
from vitlit.training.checkpoints import classifier_from_checkpoint
from vitlit.training.trainer import build_trainer, finish_loggers
from vitlit.user_errors import user_errors_as_messages

log = logging.getLogger(__name__)


def data_arguments(checkpoint: dict[str, Any], data: DictConfig | None) -> dict[str, Any]:
    """The data module's arguments: the checkpoint's, overridden by the non-null keys of ``data``.

    The eval transform's settings (``EVAL_TRANSFORM_KEYS``) always come from the checkpoint: the model
    only knows the images it was trained on.
    """
    arguments = {**data_settings(checkpoint), **eval_transform_settings(checkpoint)}
    for key in data or {}:
        if key in EVAL_TRANSFORM_KEYS or key == "_target_":
            continue  # read the others alone: data=<option> interpolates image_size from a model config absent here
        value = data[key]
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if value is not None:
            arguments[key] = value
    if "root" not in arguments and "input_dir" not in arguments:
        raise ValueError(
            "the checkpoint does not record its data folder; pass data=image_folder data.root=/path/to/images"
        )
    return arguments


def data_module(arguments: dict[str, Any]) -> ImageFolderDataModule | StreamingDataModule:
    """The data module the arguments describe: an image folder (``root``) or LitData shards (``input_dir``)."""
    cls = ImageFolderDataModule if "root" in arguments else StreamingDataModule
    accepted = inspect.signature(cls).parameters  # a checkpoint of one kind evaluated on data of the other
    return cls(**{key: value for key, value in arguments.items() if key in accepted})


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` on the test stage's split; write the report into ``cfg.paths.output_dir``.

    Returns the test metrics (``test/loss``, ``test/acc``).
    """
    checkpoint = read_checkpoint(cfg.ckpt_path)
    module = classifier_from_checkpoint(checkpoint)
    datamodule = data_module(data_arguments(checkpoint, cfg.get("data")))
    datamodule.prepare_data()
    if tuple(datamodule.class_names) != checkpoint_class_names(checkpoint):
        source = datamodule.root / "train" if hasattr(datamodule, "root") else datamodule.input_dir
        raise ValueError(
            f"the checkpoint was trained on the classes {list(checkpoint_class_names(checkpoint))}, but {source} "
            f"holds {list(datamodule.class_names)}; evaluate on images of the same classes"
        )

    trainer = build_trainer(cfg)
    reports = [callback for callback in trainer.callbacks if isinstance(callback, RunReport)]
    for report in reports:  # the training history the checkpoint carries, for curves.png
        report.load_state_dict(checkpoint.get("callbacks", {}).get(report.state_key, {}))

    log.info("evaluating %s (classes: %s)", cfg.ckpt_path, ", ".join(checkpoint_class_names(checkpoint)))
    trainer.test(module, datamodule=datamodule)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    for report in reports:
        report.write(cfg.paths.output_dir, trainer, metrics, checkpoint=str(Path(cfg.ckpt_path).expanduser().resolve()))
    finish_loggers(trainer)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> float:
    with user_errors_as_messages():
        return evaluate(cfg)["test/acc"]


if __name__ == "__main__":
    main()
