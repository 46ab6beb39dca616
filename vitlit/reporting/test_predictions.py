"""``test_predictions.csv``: one row per test image (path, true class, predicted class, each class's probability),
so the misclassified photos are a filter away: ``awk -F, '$2 != $3' test_predictions.csv``.

Written by the test stage of ``train.py`` and by ``vitlit.eval``, beside ``metrics.json``. Under DDP every rank's
rows are gathered and written once: the samples ``DistributedSampler`` repeats to even out the ranks are dropped.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from vitlit.reporting.atomic_files import written_atomically

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "test_predictions.csv"
COLUMNS = ("path", "true_class", "predicted_class")  # then one "p_<class>" column per class, in label order


def write_predictions_csv(
    path: Path, sources: Sequence[str], labels: Sequence[int], probabilities: torch.Tensor, class_names: Sequence[str]
) -> int:
    """Write the rows (probabilities with 9 significant digits) to ``path``, a whole file or none; return how
    many images were misclassified."""
    predicted = probabilities.argmax(dim=1).tolist()
    with written_atomically(path) as temporary, temporary.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*COLUMNS, *(f"p_{name}" for name in class_names)])
        for source, label, guess, row in zip(sources, labels, predicted, probabilities.tolist(), strict=True):
            writer.writerow([source, class_names[label], class_names[guess], *(f"{p:.9g}" for p in row)])
    return sum(label != guess for label, guess in zip(labels, predicted, strict=True))


def _sample_order(loader: object) -> list[int] | None:
    """The dataset indices the loader visits on this process, in order (its sampler's); None when it has none
    (LitData's streaming loader)."""
    sampler = getattr(loader, "sampler", None)
    try:
        return [int(index) for index in sampler]  # type: ignore[union-attr]
    except TypeError:
        return None


class TestPredictions(L.Callback):
    """Collects each test image's probabilities from the test step's logits and writes ``dirpath``/test_predictions.csv.

    The path column is the image file when the data module keeps one (``datasets["test"].samples``, image folders),
    else the sample's index in the test split (LitData shards).
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.wrong: int | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.test_dataloaders
        self.loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self.order = _sample_order(self.loader)
        self.seen = 0
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        labels, logits = batch[1], outputs["logits"]
        count = len(labels)
        if self.order is not None:
            indices = torch.tensor(self.order[self.seen : self.seen + count], device=labels.device)
        else:
            indices = torch.arange(self.seen, self.seen + count, device=labels.device)
        self.seen += count
        self.rows.append((indices, labels.detach(), logits.detach().float().softmax(dim=-1)))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        class_names = list(pl_module.hparams["class_names"])
        if self.rows:
            indices, labels, probabilities = (torch.cat(column) for column in zip(*self.rows, strict=True))
        else:
            indices = labels = torch.empty(0, dtype=torch.long, device=pl_module.device)
            probabilities = torch.empty(0, len(class_names), device=pl_module.device)
        if trainer.world_size > 1:  # every rank's rows (the same count on each: DistributedSampler pads)
            indices, labels, probabilities = (
                pl_module.all_gather(tensor).flatten(0, 1) for tensor in (indices, labels, probabilities)
            )
        if not trainer.is_global_zero:
            return
        indices, first = _first_of_each(indices.cpu())
        order = indices.argsort()
        indices, labels, probabilities = indices[order], labels.cpu()[first][order], probabilities.cpu()[first][order]
        samples = getattr(getattr(trainer.datamodule, "datasets", {}).get("test"), "samples", None)
        sources = [samples[i][0] if samples is not None else str(i) for i in indices.tolist()]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self.wrong = write_predictions_csv(
            self.dirpath / PREDICTIONS_FILE, sources, labels.tolist(), probabilities, class_names
        )
        log.info("test predictions, a row per image: %s", self.dirpath / PREDICTIONS_FILE)


def _first_of_each(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``indices`` and the position of each one's first occurrence."""
    seen: dict[int, int] = {}
    for position, index in enumerate(indices.tolist()):
        seen.setdefault(index, position)
    return torch.tensor(list(seen), dtype=torch.long), torch.tensor(list(seen.values()), dtype=torch.long)
