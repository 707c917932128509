"""Helpers of the bf16 weight-store tests (Kahan summation, stochastic rounding)."""

import torch
from torch import nn

from lion_integrations import Lion, Lion4bit, Lion8bit
from lion_integrations.state import COMPENSATION
from tests.helpers.optimizer import PATHS as ALL_PATHS

CLASSES = [Lion, Lion8bit, Lion4bit]
# bf16/fp16 weights never take the fp32 AVX-512 kernel: "fused" is torch.compile's step for them.
PATHS = {name: ALL_PATHS[name] for name in ("for-loop", "foreach", "fused")}
QUANTIZED = dict(block_size=64, min_quantized_size=1024)


def options(cls, **kwargs):
    return {**(QUANTIZED if cls in (Lion8bit, Lion4bit) else {}), **kwargs}


def make_params(dtype=torch.bfloat16, seed=0):
    """A fusable matrix (2**16 elements), a quantizable one with a short last block, and a bias."""
    torch.manual_seed(seed)
    shapes = [(256, 256), (40, 100), (100,)]
    return [nn.Parameter((torch.randn(shape) * 0.05).to(dtype)) for shape in shapes]


def run_steps(cls, params, steps, seed=1, **kwargs):
    optimizer = cls(params, lr=1e-4, weight_decay=0.1, **options(cls, **kwargs))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator).to(param.dtype)
        optimizer.step()
    return optimizer


def snapshot(optimizer):
    """Every parameter and state tensor, in order."""
    tensors = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            tensors.append(("param", param.detach().clone()))
            tensors += [(key, value.clone()) for key, value in sorted(optimizer.state[param].items())]
    return tensors


def assert_identical(first, second):
    assert [key for key, _ in first] == [key for key, _ in second]
    for (key, a), (_, b) in zip(first, second):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{key} differs in {(a != b).sum().item()} elements"



def compensated(optimizer) -> list[bool]:
    """For each parameter that has state: whether it keeps a Kahan buffer of its own dtype."""
    flags = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state:
                buffer = state.get(COMPENSATION)
                flags.append(buffer is not None and buffer.dtype == param.dtype == torch.bfloat16)
    return flags
