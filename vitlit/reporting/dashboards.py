"""Pictures of each validation epoch and of the test run, for every logger that shows them: confusion matrix,
predictions, attention."""

from __future__ import annotations

import lightning as L
import torch

from vitlit.models.attention_maps import ATTENTION_METHODS, attention_maps
from vitlit.reporting.figures import attention_figure, confusion_matrix_figure, prediction_grid_figure
from vitlit.reporting.loggers import log_figure, log_scalars, takes_images
from vitlit.reporting.stage_results import StageResultsCallback, StageSummary, display_sample


class Dashboards(StageResultsCallback):
    """Sends pictures to the loggers after every validation epoch (``val/...``) and test run (``test/...``):
    TensorBoard's IMAGES tab, MLflow artifacts, W&B media (:mod:`vitlit.reporting.loggers`).

    - ``<stage>/confusion_matrix``: class names on the axes, counts, row-normalised colours;
    - ``<stage>/predictions``: a fixed sample of ``num_images`` images, spread over the stage's images,
      in real colours, titled ``Pred: <class> | Prob: <p>`` and ``True: <class>`` (green right, red wrong);
    - ``<stage>/attention``: the same sample under the ViT's class-token attention (``attention`` =
      ``rollout`` or ``last_layer``; null skips it).

    ``every_n_epochs`` > 1 draws validation only every n-th epoch and the last (each drawing costs
    about a CPU second, which matters when a GPU makes epochs short).

    Per-class precision, recall and F1 go to every logger's metrics as ``<stage>_per_class/<metric>/<class>``:
    validation's once, when fitting ends (from the last validation epoch), and the test run's.
    Does nothing without a logger that shows pictures (TensorBoard, MLflow, W&B).
    """

    def __init__(self, num_images: int = 16, attention: str | None = "rollout", every_n_epochs: int = 1):
        super().__init__(num_images)
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.dashboards.every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        if attention is not None and attention not in ATTENTION_METHODS:
            raise ValueError(
                f"callbacks.dashboards.attention={attention!r} is not one of: {', '.join(ATTENTION_METHODS)} (or null)"
            )
        self.attention = attention
        self._frozen_maps: dict[str, torch.Tensor] = {}

    def active(self, trainer: L.Trainer, stage: str) -> bool:
        if not takes_images(trainer.loggers):
            return False
        epoch = trainer.current_epoch + 1
        return stage != "val" or epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs

    def on_stage_end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, summary: StageSummary) -> None:
        maps = self._attention(trainer, pl_module, summary, stage)  # on every process: sharded models need them all
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        title = f"{stage}, epoch {trainer.current_epoch + 1}" if stage == "val" else stage
        figures = {
            "confusion_matrix": confusion_matrix_figure(
                summary.counts, summary.class_names, f"Confusion matrix ({title}): accuracy {summary.accuracy:.4f}"
            )
        }
        images = display_sample(summary.images, trainer.datamodule)
        if len(summary.labels):
            figures["predictions"] = prediction_grid_figure(
                images, summary.labels, summary.probabilities, summary.class_names
            )
        if maps is not None:
            predicted = summary.probabilities.argmax(axis=1).tolist()
            figures["attention"] = attention_figure(
                images, maps, summary.labels, predicted, summary.class_names, self.attention
            )
        for name, figure in figures.items():
            log_figure(trainer.loggers, f"{stage}/{name}", figure, step, photo=name != "confusion_matrix")
        if stage == "test":
            self._log_per_class(trainer, stage, summary)

    def _attention(self, trainer: L.Trainer, pl_module: L.LightningModule, summary: StageSummary, stage: str):
        model = getattr(pl_module, "model", None)
        if self.attention is None or model is None or not len(summary.labels):
            return None
        # A frozen backbone's attention on the stage's fixed sample never changes: drawn once, not every epoch.
        frozen = getattr(pl_module, "freeze_backbone", False)
        if frozen and stage in self._frozen_maps:
            return self._frozen_maps[stage]
        parameter = next(model.parameters())
        images = summary.images.to(device=parameter.device, dtype=parameter.dtype)
        with trainer.precision_plugin.forward_context():
            _, _, maps = attention_maps(model, images, self.attention)
        maps = maps.float().cpu()
        if frozen:
            self._frozen_maps[stage] = maps
        return maps

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" in self.summaries and trainer.is_global_zero and takes_images(trainer.loggers):
            self._log_per_class(trainer, "val", self.summaries["val"])

    @staticmethod
    def _log_per_class(trainer: L.Trainer, stage: str, summary: StageSummary) -> None:
        scalars = {
            f"{stage}_per_class/{metric}/{name}": scores[metric]
            for name, scores in summary.per_class.items()
            for metric in ("precision", "recall", "f1")
        }
        log_scalars(trainer.loggers, scalars, trainer.global_step)
