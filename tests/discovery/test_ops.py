"""The function set (lion_integrations.discovery.ops): protected ops stay finite and follow their math."""

from __future__ import annotations

import pytest
import torch

from lion_integrations.discovery.ops import OPS, TINY as OP_TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_protected_ops_stay_finite_and_follow_their_math():
    x = torch.tensor([-4.0, -1e-30, 0.0, 2.0, 1e4])
    for op in OPS.values():
        args = [x] + [torch.flip(x, [0])] * (op.arity - 1)
        assert torch.isfinite(op.fn(*args)).all(), op.name
    assert torch.equal(OPS["sqrt"].fn(x), x.abs().sqrt())
    assert torch.equal(OPS["div"].fn(torch.ones(2), torch.tensor([0.0, -0.0])), torch.tensor([1 / OP_TINY, 1 / OP_TINY]))
    assert torch.allclose(OPS["interp"].fn(torch.tensor(2.0), torch.tensor(4.0), 0.25), torch.tensor(2.5))
    assert torch.equal(OPS["clip"].fn(x, -2.0), x.clamp(-2, 2))
    assert OPS["norm"].fn(torch.tensor([3.0, 4.0])).item() == 5.0
