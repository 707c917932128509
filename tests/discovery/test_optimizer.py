"""DiscoveredOptimizer (lion_integrations.discovery.optimizer): the Lion program equals Lion, state
dicts, pickling, program files, per-group programs, and input checks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lion_integrations import Lion
from lion_integrations.discovery import DiscoveredOptimizer
from tests.helpers.discovery import ADAMW, small_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lion_program_equals_the_lion_optimizer():
    ours, reference = small_params(), small_params()
    opt = DiscoveredOptimizer(ours, program="lion", lr=0.01, weight_decay=0.1)
    ref = Lion(reference, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, fused=False)
    for step in range(5):
        torch.manual_seed(100 + step)
        grads = [torch.randn_like(p) for p in ours]
        for p, q, grad in zip(ours, reference, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, reference):
        assert torch.allclose(p, q, atol=1e-6)
        assert torch.allclose(opt.state[p]["m"], ref.state[q]["exp_avg"], atol=1e-6)


def test_optimizer_state_dict_pickle_files_and_aliasing(tmp_path):
    path = tmp_path / "found.txt"
    path.write_text(str(ADAMW))
    params = small_params()
    opt = DiscoveredOptimizer(params, program=str(path), lr=1e-3)
    assert opt.program == ADAMW and opt.defaults["program"] == str(ADAMW)
    params[0].grad, params[1].grad = torch.ones(6, 4), torch.ones(4)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.program == ADAMW
    restored = DiscoveredOptimizer(small_params(), program="lion", lr=1.0)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert restored.param_groups[0]["program"] == str(ADAMW) and restored.param_groups[0]["lr"] == 1e-3
    # a program that keeps the gradient itself as state: the state must not alias p.grad
    param = torch.nn.Parameter(torch.zeros(3))
    keep = DiscoveredOptimizer([param], program="update = g * lr\nreturn update, g, v", lr=0.1)
    param.grad = torch.tensor([1.0, -2.0, 3.0])
    keep.step()
    keep.zero_grad(set_to_none=False)
    assert torch.equal(keep.state[param]["m"], torch.tensor([1.0, -2.0, 3.0]))
    assert torch.allclose(param.detach(), torch.tensor([-0.1, 0.2, -0.3]))
    # param groups with their own program
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    groups = DiscoveredOptimizer([{"params": [a], "program": "sgd_momentum"}, {"params": [b]}], program="lion", lr=0.5)
    a.grad, b.grad = torch.full((2,), 4.0), torch.full((2,), 4.0)
    groups.step()
    assert torch.allclose(a.detach(), torch.full((2,), 1 - 0.5 * 0.4)) and torch.allclose(b.detach(), torch.full((2,), 0.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"program": "nesterov"}, "not program text, a builtin name"),
        ({"program": "update = w * lr"}, "does not depend on the gradient"),
        ({"program": "update = tan(g)"}, "unknown op 'tan'"),
        ({"program": 3}, "Invalid program"),
        ({"lr": -1.0}, "Invalid lr"),
        ({"weight_decay": "x"}, "Invalid weight_decay"),
    ],
)
def test_optimizer_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscoveredOptimizer(small_params(), **{"program": "lion", **kwargs})
