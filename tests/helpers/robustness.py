"""Helpers of the robustness tests (non-finite gradients, foreign state, dtypes): the execution
paths by name and snapshots of an optimizer's parameters and state."""

import copy

import torch

from lion_integrations import Lion4bit, Lion8bit
from tests.helpers.optimizer import PATHS  # noqa: F401 (the robustness tests' paths)

QUANTIZED = {8: Lion8bit, 4: Lion4bit}


def snapshot(optimizer):
    """(parameters, state) of `optimizer`, copied."""
    params = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]
    return params, copy.deepcopy({i: dict(s) for i, s in enumerate(optimizer.state.values())})


def assert_unchanged(before, optimizer):
    params, state = snapshot(optimizer)
    for expected, actual in zip(before[0], params):
        assert torch.equal(expected, actual)
    assert state.keys() == before[1].keys()
    for index, entry in state.items():
        for key, value in entry.items():
            assert torch.equal(value, before[1][index][key]), key

