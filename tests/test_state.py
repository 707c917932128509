"""`lion_integrations.state` through `load_state_dict`: foreign optimizer state (AdamW's, SGD's,
another model's) and NaN momentum refused, naming what differs; load hooks around the checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lion_integrations import Lion, Lion8bit
from tests.helpers.robustness import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")


def trained_model_and(optimizer_factory, steps=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    optimizer = optimizer_factory(model.parameters())
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 8)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("cls", [Lion, Lion8bit])
@pytest.mark.parametrize(
    "source, message",
    [
        (torch.optim.AdamW, r"state of param 0 holds 'exp_avg_sq', 'step', which Lion(8bit)? does not keep "
                            r"\(it looks like Adam/AdamW state\)"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
         r"state of param 0 has no momentum: it lacks 'exp_avg'; it holds 'momentum_buffer', which Lion(8bit)? "
         r"does not keep \(it looks like SGD state\)"),
    ],
)
def test_foreign_optimizer_state_is_refused_naming_what_differs(cls, source, message):
    model, foreign = trained_model_and(source)
    optimizer = cls(model.parameters(), lr=1e-4)
    model(torch.randn(5, 8)).sum().backward()
    optimizer.step()
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(foreign.state_dict())
    assert_unchanged(before, optimizer)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99) and optimizer.param_groups[0]["lr"] == 1e-4


def test_state_of_another_model_is_refused_naming_the_shapes():
    _, source = trained_model_and(lambda p: Lion(p, lr=1e-3))
    other = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 4))
    optimizer = Lion(other.named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 0 \('0.weight'\) has shape \(16, 8\), the parameter has shape \(12, 8\)"):
        optimizer.load_state_dict(source.state_dict())


@pytest.mark.parametrize("cls", [Lion, Lion8bit])
def test_nan_momentum_in_a_checkpoint_is_refused_naming_the_parameter(cls):
    model, optimizer = trained_model_and(lambda p: cls(p, lr=1e-3))
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][1]["exp_avg"][3] = float("nan")
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 1 holds NaN or inf values"):
        optimizer.load_state_dict(saved)
    assert_unchanged(before, optimizer)
    saved["state"][1]["exp_avg"][3] = float("inf")
    with pytest.raises(ValueError, match=r"'exp_avg' of param 1 holds NaN or inf values"):
        optimizer.load_state_dict(saved)


def test_load_pre_hooks_run_before_the_check_and_post_hooks_after_once_each():
    # A pre-hook can adapt a foreign checkpoint: here it keeps AdamW's first moment as Lion's momentum.
    model, adamw = trained_model_and(torch.optim.AdamW)
    optimizer = Lion(model.parameters(), lr=1e-4)
    calls = []

    def keep_first_moment(opt, state_dict):
        calls.append("pre")
        state = {k: {"exp_avg": v["exp_avg"]} for k, v in state_dict["state"].items()}
        groups = [{"params": g["params"], "lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
                  for g in state_dict["param_groups"]]
        return {"state": state, "param_groups": groups}

    def after(opt):
        calls.append(("post", len(opt.state)))

    optimizer.register_load_state_dict_pre_hook(keep_first_moment)
    optimizer.register_load_state_dict_post_hook(after)
    optimizer.load_state_dict(adamw.state_dict())
    assert calls == ["pre", ("post", 4)]
    for p in model.parameters():
        assert torch.equal(optimizer.state[p]["exp_avg"], adamw.state[p]["exp_avg"])
    assert optimizer.param_groups[0]["nonfinite"] == "skip"  # a key the checkpoint lacks keeps its value
