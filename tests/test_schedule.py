import itertools

import pytest
import torch

from vitlit.training.schedule import warmup_cosine


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
