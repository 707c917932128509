"""Lion8bit/Lion4bit problems shared by the quantization tests: parameters of assorted shapes (some
quantized, some not) in three param groups, a seeded gradient sequence, and decoded momenta."""

from __future__ import annotations

import torch
from torch import nn

from lion_integrations import Lion, Lion4bit, Lion8bit
from lion_integrations.quantization.codec import dequantize_blockwise


CLASSES = {8: Lion8bit, 4: Lion4bit}


def make_problem(seed: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 96), (48, 130), (9,), (3, 5), (300,), (24, 4, 50)]
    params = [nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]
    params.append(nn.Parameter(torch.randn(72, 64, generator=generator).to(dtype).t()))  # non-contiguous
    groups = [
        {"params": params[:3], "lr": 3e-3, "weight_decay": 0.5},
        {"params": params[3:5], "betas": (0.95, 0.98), "block_size": 64},
        {"params": params[5:], "lr": 1e-2, "maximize": True},
    ]
    return params, groups


def run_steps(cls, steps=30, seed=0, dtype=torch.float32, **options):
    params, groups = make_problem(seed, dtype)
    if cls is not Lion:
        options.setdefault("min_quantized_size", 1000)
    optimizer = cls(groups, lr=1e-3, weight_decay=0.1, **options)
    drive(optimizer, params, steps, seed=seed, dtype=dtype)
    return params, optimizer


def drive(optimizer, params, steps, seed=0, dtype=torch.float32, first=0, on_step=None):
    """Steps `first`..`steps`-1 of run_steps' gradient sequence (earlier ones are drawn and dropped)."""
    generator = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        grads = [None if (index == 1 and step % 2) else torch.randn(p.shape, generator=generator).to(dtype)
                 for index, p in enumerate(params)]
        if step < first:
            continue
        for param, grad in zip(params, grads):
            param.grad = grad
        if on_step:
            on_step(step)
        optimizer.step()


def decoded_momentum(optimizer, param, bits=8):
    state = optimizer.state[param]
    if "exp_avg" in state:
        return state["exp_avg"]
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    return dequantize_blockwise(state["exp_avg_codes"], state["exp_avg_absmax"], param.shape, bits, group["block_size"])
