"""Cautious masking problems shared by tests/test_cautious.py and tests/quantization/test_cautious.py:
a two-step case computed by hand, and a seeded run over parameters of assorted shapes."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers.optimizer import PATHS as EXPLICIT_PATHS

# "default": fused=None, the AVX-512 kernels where this CPU has them, small tensors unfused otherwise.
PATHS = {**EXPLICIT_PATHS, "default": {}}


def hand_computed_steps():
    """lr=0.1, betas=(0.9, 0.99), wd=0.1, two steps of a 4-element parameter: (grads, expected).

    Step 1 (m=0): directions sign(g) = [1, 1, 0, -1]; the zero gradient is masked: 3 of 4 kept,
    step size 0.1 * 4/3. m = 0.01 g = [0.005, 0.1, 0, -0.01].
    Step 2: c = 0.9 m + 0.1 g = [-0.1955, 0.04, 0, 0.041]: signs [-1, 1, 0, 1] against sign(g)
    [-1, -1, 0, 1]: elements 1 (disagrees) and 2 (zero) masked: 2 of 4 kept, step size 0.2.
    """
    decay = 1 - 0.1 * 0.1
    first = [1.0 * decay - 0.4 / 3, 0.0 * decay - 0.4 / 3, 2.0 * decay, -1.0 * decay + 0.4 / 3]
    second = [first[0] * decay + 0.2, first[1] * decay, first[2] * decay, first[3] * decay - 0.2]
    grads = [[0.5, 10.0, 0.0, -1.0], [-2.0, -0.5, 0.0, 0.5]]
    return grads, [first, second]


def check_hand_computed_steps(cls, path: str, **options) -> torch.nn.Parameter:
    """Two cautious steps of `cls` on `path` against `hand_computed_steps`, on a (4, 16) parameter
    whose every column is the hand-computed one; returns it with its optimizer's state checked."""
    grads, expected = hand_computed_steps()
    param = nn.Parameter(torch.tensor([1.0, 0.0, 2.0, -1.0]).repeat(16, 1).t().contiguous())
    optimizer = cls([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1, cautious=True, **PATHS[path], **options)
    for grad, values in zip(grads, expected):
        param.grad = torch.tensor(grad).repeat(16, 1).t().contiguous()
        optimizer.step()
        torch.testing.assert_close(param.detach()[:, 0], torch.tensor(values))
        assert torch.equal(param.detach(), param.detach()[:, :1].expand(4, 16))
    return optimizer


def run_cautious(cls, path: str, cautious: bool = True, steps: int = 30, **options):
    """(params, optimizer) after `steps` seeded steps of `cls` on `path`."""
    generator = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(64, 96), (40, 33), (17,), ()]]
    optimizer = cls(params, lr=1e-2, weight_decay=0.1, cautious=cautious, **PATHS[path], **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return params, optimizer
