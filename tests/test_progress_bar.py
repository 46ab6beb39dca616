"""The rich progress bar's epoch counter (vitlit.reporting.progress_bar.RichProgressBar)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from conftest import compose_config
from lightning.pytorch.demos.boring_classes import BoringModel

from vitlit.reporting.progress_bar import RichProgressBar


@pytest.mark.parametrize(
    ("limits", "described"), [({"max_epochs": -1, "max_steps": 5}, "Epoch 2"), ({"max_epochs": 3}, "Epoch 2/2")]
)
def test_the_epoch_counter_has_no_negative_total_when_steps_end_the_run(tmp_path: Path, limits, described):
    bar = RichProgressBar()
    trainer = L.Trainer(
        **limits, limit_train_batches=2, limit_val_batches=0, logger=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[bar],
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert trainer.global_step == min(limits.get("max_steps", 6), 6)  # 2 batches per epoch
    assert bar._get_train_description(2).strip() == described


def test_the_default_callbacks_use_it():
    assert compose_config([]).callbacks.progress_bar._target_ == "vitlit.reporting.progress_bar.RichProgressBar"
