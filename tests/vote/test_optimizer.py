"""SignVoteLion in one process (it is Lion, bit for bit), its input checks, its state dicts, and
skip_gradient_allreduce's check. Across processes: tests/vote/test_distributed.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from lion_integrations.vote import SignVoteLion, skip_gradient_allreduce


def make_params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(7, 5), (13,), ()]]


@pytest.mark.parametrize("options", [{}, {"cautious": True}, {"maximize": True, "vote": "average"}])
def test_one_process_is_lion_bit_for_bit(options):
    expected, actual = make_params(), make_params()
    lion_options = {k: v for k, v in options.items() if k != "vote"}
    lion = Lion(expected, lr=0.05, weight_decay=0.3, fused=False, foreach=False, **lion_options)
    vote = SignVoteLion(actual, lr=0.05, weight_decay=0.3, **options)
    generator = torch.Generator().manual_seed(1)
    for step in range(20):
        for p, q in zip(expected, actual):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = None if (step % 3 == 1 and q.dim() == 0) else p.grad.clone()
            if q.grad is None:
                p.grad = None
        lion.step()
        vote.step()
    for p, q in zip(expected, actual):
        assert torch.equal(p, q)
        assert torch.equal(lion.state[p]["exp_avg"], vote.state[q]["exp_avg"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"vote": "minority"}, ValueError, "Invalid vote: 'minority'"),
        ({"collective": "ring"}, ValueError, "Invalid collective: 'ring'"),
        ({"cautious": "yes"}, TypeError, "Invalid cautious: 'yes'"),
        ({"skip_ddp_allreduce": 1}, TypeError, "Invalid skip_ddp_allreduce: 1"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        SignVoteLion(make_params(), **kwargs)


def test_skip_gradient_allreduce_needs_the_ddp_wrapper():
    with pytest.raises(ValueError, match="Invalid model: Linear"):
        skip_gradient_allreduce(nn.Linear(2, 2))


def test_state_dict_names_the_rank_and_loads_lion_state():
    params = make_params()
    optimizer = SignVoteLion(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = optimizer.state_dict()
    assert state["vote"] == {"rank": 0, "world_size": 1}
    lion = Lion(make_params(), lr=0.1, fused=False)
    restored = SignVoteLion(make_params(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one process: nothing to warn about
        restored.load_state_dict(state)
        restored.load_state_dict(lion.state_dict())
    lion.load_state_dict(state)  # and Lion loads ours


def test_nonfinite_gradient_elements_abstain_keep_their_momentum_and_warn():
    param = nn.Parameter(torch.ones(4, 4))
    optimizer = SignVoteLion([param], lr=0.1, betas=(0.9, 0.99))
    param.grad = torch.ones(4, 4)
    optimizer.step()
    momentum = optimizer.state[param]["exp_avg"].clone()
    weights = param.detach().clone()
    grad = torch.ones(4, 4)
    grad[0, 0], grad[1, 2] = float("nan"), float("inf")
    param.grad = grad
    with pytest.warns(RuntimeWarning, match=r"NaN or inf gradient elements in param 0 of group 0 .*2 of 16"):
        optimizer.step()
    state = optimizer.state[param]["exp_avg"]
    assert torch.isfinite(state).all()
    for row, col in ((0, 0), (1, 2)):
        assert state[row, col] == momentum[row, col] and param[row, col] == weights[row, col]
    assert torch.equal(param.detach()[2], weights[2] - 0.1)  # finite elements took the ordinary step
    assert optimizer.nonfinite_steps == 1


def test_nonfinite_raise_is_refused():
    with pytest.raises(ValueError, match=r"Invalid nonfinite: 'raise' \(SignVoteLion supports 'skip' only"):
        SignVoteLion([nn.Parameter(torch.ones(2))], nonfinite="raise")
