"""lion_integrations.schedules: warmup schedules, their LambdaLR, state dicts and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from lion_integrations.schedules import WarmupSchedule, warmup_cosine, warmup_schedule


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("cosine", {0: 0.0, 2: 0.5, 4: 1.0, 8: 0.1 + 0.9 * 0.5, 12: 0.1, 30: 0.1}),
        ("linear", {0: 0.0, 1: 0.25, 4: 1.0, 6: 0.1 + 0.9 * 0.75, 12: 0.1, 30: 0.1}),
        ("constant", {0: 0.0, 3: 0.75, 4: 1.0, 12: 1.0, 30: 1.0}),
    ],
)
def test_warmup_schedule_factors(shape, expected):
    schedule = WarmupSchedule(warmup_steps=4, total_steps=12, shape=shape, min_lr_ratio=0.1)
    assert {step: schedule(step) for step in expected} == pytest.approx(expected, abs=1e-12)
    # monotone after warmup for the decaying shapes
    values = [schedule(step) for step in range(4, 13)]
    assert values == sorted(values, reverse=True)


def test_warmup_cosine_scheduler_lrs_and_state_dict():
    param = nn.Parameter(torch.zeros(3))
    optimizer = Lion([param], lr=0.2, fused=False)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=6)
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.2 * f for f in (0, 0.5, 1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0)]
    assert seen == pytest.approx(expected, abs=1e-12)
    # the callable object is saved, so a scheduler built with other settings comes back exactly
    other = warmup_schedule(Lion([nn.Parameter(torch.zeros(3))], lr=0.2, fused=False), 1, 100, "linear")
    other.load_state_dict(scheduler.state_dict())
    assert vars(other.lr_lambdas[0]) == vars(scheduler.lr_lambdas[0])
    assert other.last_epoch == scheduler.last_epoch


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"warmup_steps": -1}, ValueError, "Invalid warmup_steps: -1"),
        ({"warmup_steps": 20}, ValueError, "Invalid warmup_steps: 20"),
        ({"warmup_steps": 1.5}, TypeError, "Invalid warmup_steps: 1.5"),
        ({"total_steps": 0}, ValueError, "Invalid total_steps: 0"),
        ({"shape": "cos"}, ValueError, "Invalid shape: 'cos'"),
        ({"min_lr_ratio": 1.5}, ValueError, "Invalid min_lr_ratio: 1.5"),
    ],
)
def test_warmup_schedule_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        WarmupSchedule(**{"warmup_steps": 2, "total_steps": 10, **kwargs})
