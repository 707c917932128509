"""Lion problems shared by the core optimizer tests: the execution paths, parameters of assorted
shapes in three param groups, a seeded run of steps, and a checkpoint round trip."""

from __future__ import annotations

import io

import torch
from torch import nn

from lion_integrations import Lion


PATHS = {
    "for-loop": dict(fused=False, foreach=False),
    "foreach": dict(fused=False, foreach=True),
    "fused": dict(fused=True),  # fp32 on a CPU with AVX-512: its kernel; else torch.compile's step
    "fused-compiled": dict(fused=True),  # torch.compile's step (the conftest turns the kernels off)
}


def make_problem(seed: int, dtype=torch.float32):
    """Parameters of assorted shapes (a scalar, odd sizes, a non-contiguous one) in three groups."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(17, 9), (9,), (), (3, 5, 7), (64, 33), (1,)]
    params = [nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]
    transposed = nn.Parameter(torch.randn(12, 8, generator=generator).to(dtype).t())  # non-contiguous
    params.append(transposed)
    groups = [
        {"params": params[:3], "lr": 3e-3, "weight_decay": 0.5},
        {"params": params[3:5], "betas": (0.95, 0.98)},
        {"params": params[5:], "lr": 1e-2, "maximize": True},
    ]
    return params, groups


def run_steps(path: str, steps: int = 100, dtype=torch.float32, seed: int = 0, **options):
    params, groups = make_problem(seed, dtype)
    optimizer = Lion(groups, lr=1e-3, weight_decay=0.1, **PATHS[path], **options)
    generator = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        for index, param in enumerate(params):
            # leave one parameter without a gradient on odd steps: it must be skipped
            param.grad = None if (index == 1 and step % 2) else torch.randn(param.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer


def through_checkpoint(params, optimizer, make_problem=make_problem, seed: int = 0):
    """`params` and `optimizer.state_dict()` through torch.save and torch.load (weights_only): fresh
    parameters of `make_problem(seed)` holding the saved values, their param groups, and the loaded
    optimizer state dict."""
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed_params, groups = make_problem(seed)
    with torch.no_grad():
        for param, saved in zip(resumed_params, checkpoint["params"]):
            param.copy_(saved)
    return resumed_params, groups, checkpoint["optimizer"]
