"""`Lion` state dicts: round trips (momentum dtype included), deepcopy, and all-or-nothing loading
with errors that name the parameter."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from tests.helpers.optimizer import PATHS, make_problem, run_steps, through_checkpoint

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")


def test_momentum_dtype_float32_for_bf16_params_survives_state_dict_round_trip():
    params, optimizer = run_steps("for-loop", steps=3, dtype=torch.bfloat16, momentum_dtype=torch.float32)
    assert all(state["exp_avg"].dtype == torch.float32 for state in optimizer.state.values())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    restored = Lion(make_problem(0, torch.bfloat16)[1], lr=1e-3, momentum_dtype="float32")
    restored.load_state_dict(saved)
    for before, after in zip(optimizer.state.values(), restored.state.values()):
        assert after["exp_avg"].dtype == torch.float32
        assert torch.equal(before["exp_avg"], after["exp_avg"])


@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_then_continue_equals_uninterrupted(path):
    uninterrupted, _ = run_steps(path, steps=20)

    params, optimizer = run_steps(path, steps=10)
    resumed_params, groups, saved_state = through_checkpoint(params, optimizer)
    resumed = Lion(groups, lr=1e-3, weight_decay=0.1, **PATHS[path])
    resumed.load_state_dict(saved_state)
    generator = torch.Generator().manual_seed(1)
    for step in range(20):
        grads = [None if (index == 1 and step % 2) else torch.randn(p.shape, generator=generator)
                 for index, p in enumerate(resumed_params)]
        if step < 10:
            continue  # the first ten steps' gradients were consumed before the checkpoint
        for param, grad in zip(resumed_params, grads):
            param.grad = grad
        resumed.step()
    for expected, actual in zip(uninterrupted, resumed_params):
        assert torch.equal(expected, actual)


def test_deepcopy_gives_an_independent_optimizer_that_continues_identically():
    model = nn.Linear(6, 3)
    optimizer = Lion(model.parameters(), lr=1e-2, weight_decay=0.1, fused=False)
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    inputs = torch.randn(4, 6)
    for m, o in ((model, optimizer), (model_copy, optimizer_copy)):
        o.zero_grad()
        m(inputs).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert optimizer.state[p]["exp_avg"].data_ptr() != optimizer_copy.state[q]["exp_avg"].data_ptr()


def test_mismatched_state_dict_is_rejected_and_changes_nothing():
    source = Lion([nn.Parameter(torch.zeros(3, 2))], lr=0.5, fused=False)
    source.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    source.step()
    target_param = nn.Parameter(torch.zeros(2, 3))
    target = Lion([target_param], lr=0.01, fused=False)
    target_param.grad = torch.ones(2, 3)
    target.step()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=r"'exp_avg' of param 0 has shape \(3, 2\).*\(2, 3\)"):
        target.load_state_dict(source.state_dict())
    bad_lr = copy.deepcopy(target.state_dict())
    bad_lr["param_groups"][0]["lr"] = -3.0
    with pytest.raises(ValueError, match="Invalid lr: -3.0"):
        target.load_state_dict(bad_lr)
    with pytest.raises(ValueError, match="2 param groups"):
        target.load_state_dict({"state": {}, "param_groups": [before["param_groups"][0]] * 2})
    with pytest.raises(ValueError, match="param group 0 has no 'params' list"):
        target.load_state_dict({"state": {}, "param_groups": [{"lr": 0.1}]})
    after = target.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_state_dict_errors_name_the_parameter_of_named_groups():
    model = nn.Linear(3, 2)
    optimizer = Lion(model.named_parameters(), fused=False)
    model.weight.grad, model.bias.grad = torch.ones(2, 3), torch.ones(2)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][1]["exp_avg"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 1 \('bias'\) has shape \(5,\)"):
        optimizer.load_state_dict(saved)
