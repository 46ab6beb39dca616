"""Each helper of vitlit.private_api against the real library: these fail, by name, when a release moves the API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from vitlit.private_api import (
    add_tensorboard_summary,
    at_last_batch_of_epoch,
    batches_started_in_epoch,
    cpu_has_native_bf16,
    fit_loop_progress,
    is_compiled,
    job_return_value,
    mark_batch_dynamic,
    set_up_training_data,
)


def test_is_compiled_sees_module_compile():
    module = nn.Linear(2, 2)
    assert not is_compiled(module)
    module.compile()
    assert is_compiled(module)


def test_mark_batch_dynamic_gives_one_graph_for_every_batch_size():
    graphs = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend=counting_backend, fullgraph=True)
    for batch in (2, 5, 7):
        images = torch.ones(batch, 3)
        mark_batch_dynamic(images)
        assert torch.equal(double(images), images * 2)
    assert len(graphs) == 1


def test_add_tensorboard_summary_writes_the_summary(tmp_path: Path):
    writer = SummaryWriter(tmp_path)
    add_tensorboard_summary(writer, Summary(value=[Summary.Value(tag="check", simple_value=0.5)]), step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    [event] = events.Scalars("check")
    assert (event.step, event.value) == (3, 0.5)


def test_job_return_value_returns_a_failed_jobs_exception_without_raising():
    done = JobReturn(status=JobStatus.COMPLETED)
    done.return_value = 0.75
    assert job_return_value(done) == 0.75
    error = ValueError("the job failed")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert job_return_value(failed) is error
    with pytest.raises(Exception, match="the job failed"):
        failed.return_value  # noqa: B018  # the public API re-raises: the reason for the helper


def test_cpu_has_native_bf16_agrees_with_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert cpu_has_native_bf16() is bool({"avx512_bf16", "amx_bf16"} & set(flags))


def _fit_boring_model(tmp_path: Path, callbacks=()):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
    )  # fmt: skip
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    return trainer


def test_fit_loop_progress_reads_the_epochs_and_batches_a_checkpoint_records(tmp_path: Path):
    _fit_boring_model(tmp_path)
    epochs, batches = fit_loop_progress(torch.load(tmp_path / "end.ckpt", weights_only=False))
    assert epochs["processed"] == 2 and epochs["completed"] == 2
    assert batches["is_last_batch"] is True and batches["current"]["completed"] == 3
    assert fit_loop_progress({}) == (None, {})  # a checkpoint without loop state


def test_the_batch_progress_helpers_follow_the_training_loop(tmp_path: Path):
    import lightning as L

    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            seen.append((batches_started_in_epoch(trainer), at_last_batch_of_epoch(trainer)))

    _fit_boring_model(tmp_path, [Record()])
    assert seen == [(1, False), (2, False), (3, True)] * 2


def test_set_up_training_data_builds_the_fit_loops_loader_when_steps_end_the_run(tmp_path: Path):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    built = []

    class Record(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            built.append(trainer.train_dataloader is not None)
            set_up_training_data(trainer)
            built.append(trainer.train_dataloader is not None)

    trainer = L.Trainer(
        max_epochs=-1, max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert built == [False, True] and trainer.global_step == 2
