import itertools

import pytest
import torch

from vitlit.training.schedule import resumed_total_steps, warmup_cosine


def learning_rates(steps: int, **kwargs) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=steps, **kwargs)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_rises_linearly_then_cosine_decays_to_min_lr():
    rates = learning_rates(100, warmup=0.1, warmup_start_factor=0.01, min_lr=0.0)
    assert rates[0] == pytest.approx(0.01)
    assert rates[5] == pytest.approx(0.505)
    assert rates[10] == pytest.approx(1.0)
    assert rates[55] == pytest.approx(0.5)
    assert rates[99] == pytest.approx(0.000305, abs=1e-6)
    assert all(a <= b for a, b in itertools.pairwise(rates[:11]))
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_warmup_can_be_a_step_count_and_zero_warmup_is_pure_cosine():
    assert learning_rates(20, warmup=4)[4] == pytest.approx(1.0)
    rates = learning_rates(20, warmup=0, min_lr=0.1)
    assert rates[0] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(0.55)


def resumed_learning_rates(first_steps: int, done: int, new_steps: int, **kwargs) -> tuple[list[float], list[float]]:
    """Rates of a run of ``first_steps`` stopped after ``done`` steps, then of its resume as a run of ``new_steps``
    (a fresh scheduler loading the first one's state, as Lightning does), to the new end and one step past it."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=first_steps, **kwargs)
    before = []
    for _ in range(done):
        before.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = warmup_cosine(optimizer, total_steps=new_steps, **kwargs)
    resumed.load_state_dict(state)
    after = []
    for _ in range(done, new_steps + 1):
        after.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        resumed.step()
    return before, after


@pytest.mark.parametrize("new_steps", [40, 400, 14, 20])  # more epochs (400: a longer warmup), fewer, the same
@pytest.mark.parametrize("warmup", [0.1, 3])  # a fraction, a step count
def test_a_resumed_schedule_goes_on_from_its_rate_to_min_lr_at_the_new_end(new_steps: int, warmup):
    before, after = resumed_learning_rates(20, 10, new_steps, warmup=warmup, min_lr=0.05)
    assert after[0] == pytest.approx(learning_rates(20, warmup=warmup, min_lr=0.05)[10])  # where it was
    assert all(a >= b for a, b in itertools.pairwise(after))  # never back up
    assert after[-1] == pytest.approx(0.05)  # min_lr at the new end
    if new_steps == 20:  # the same length: exactly the uninterrupted run
        assert before + after[:-1] == learning_rates(20, warmup=warmup, min_lr=0.05)


def test_a_resume_past_the_new_end_is_refused_and_anothers_scheduler_state_is_replaced(caplog):
    with pytest.raises(ValueError, match=r"at step 10, past this run's last step \(8\)"):
        resumed_learning_rates(20, 10, 8)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.SequentialLR(  # vitlit 06f6cff's warmup + cosine
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=2),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 18),
        ],
        milestones=[2],
    )
    for _ in range(5):
        optimizer.step()
        old.step()
    scheduler = warmup_cosine(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=30)
    with caplog.at_level("INFO", logger="vitlit"):
        scheduler.load_state_dict(old.state_dict())
    assert scheduler.last_epoch == 5 and "another scheduler's" in caplog.text


def progress(global_step: int, epochs_processed: int, epochs_completed: int, batches: int, last: bool) -> dict:
    """The parts of a Lightning checkpoint that say how far its run got."""
    epoch = {"ready": epochs_processed, "started": epochs_processed, "processed": epochs_processed}
    return {
        "global_step": global_step,
        "loops": {
            "fit_loop": {
                "epoch_progress": {"current": {**epoch, "completed": epochs_completed}},
                "epoch_loop.batch_progress": {"current": {"completed": batches}, "is_last_batch": last},
            }
        },
    }


@pytest.mark.parametrize(
    ("checkpoint", "estimate", "max_epochs", "accumulate", "total"),
    [
        (progress(4, 2, 1, 2, last=True), 12, 3, 1, 8),  # 2 epochs of 2 steps (2 ranks), then 1 of 4 (1 process)
        (progress(6, 2, 1, 3, last=True), 12, 4, 1, 12),  # the same length: Lightning's estimate
        (progress(4, 1, 1, 1, last=False), 9, 3, 1, 9),  # mid-epoch 2 of 3-step epochs, the same length
        (progress(5, 1, 1, 4, last=False), 9, 3, 2, 9),  # mid-epoch, accumulating 2 batches per step
        ({"global_step": 5}, 12, 3, 1, 12),  # no loop state: the estimate
    ],
)
def test_a_resumed_run_ends_where_its_remaining_epochs_take_it(checkpoint, estimate, max_epochs, accumulate, total):
    assert resumed_total_steps(checkpoint, estimate, max_epochs, accumulate) == total
