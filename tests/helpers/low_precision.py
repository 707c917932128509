"""Helpers of the bf16 (Kahan, stochastic rounding) adapter tests."""

import torch

from lion_integrations.state import COMPENSATION


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
