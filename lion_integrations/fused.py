"""The fused path: `lion_step_tensor_` compiled by `torch.compile` into one pass over memory.

Inductor emits a C++/OpenMP loop on CPU and a Triton kernel on CUDA. Tensors are flattened to 1-D
and compiled with dynamic shapes, and the step's scalars arrive as one fp32 tensor, so one graph
serves every parameter and every learning rate without recompiling.
"""

from __future__ import annotations

import functools
import torch

from .rule import lion_step_tensor_

FUSED_DEVICE_TYPES = ("cpu", "cuda")


def _step_with_scalars_(param, grad, exp_avg, scalars) -> None:
    lion_step_tensor_(param, grad, exp_avg, scalars[0], scalars[1], scalars[2], scalars[3])


@functools.lru_cache(maxsize=None)
def compiled_step():
    """The compiled kernel, built once per process (Inductor caches the code on disk across runs)."""
    return torch.compile(_step_with_scalars_, fullgraph=True, dynamic=True)


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view when the layout allows it, so all parameters share one compiled graph."""
    return tensor.view(-1) if tensor.is_contiguous() else tensor


def fused_step_(params, grads, exp_avgs, scalars: torch.Tensor) -> None:
    """Run the compiled kernel on each parameter; raises whatever compiling raises."""
    kernel = compiled_step()
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        param_view, exp_avg_view = flat(param), flat(exp_avg)
        grad_view = grad.reshape(param_view.shape) if param_view.dim() == 1 else grad
        kernel(param_view, grad_view, exp_avg_view, scalars)


@functools.lru_cache(maxsize=None)
def fused_unavailable_reason(device_type: str) -> str | None:
    """None when the compiled kernel builds and runs on `device_type`, else why it does not."""
    if device_type not in FUSED_DEVICE_TYPES:
        return f"torch.compile fusion is not supported on device type {device_type!r}"
    try:
        probe = [torch.zeros(8, device=device_type) for _ in range(3)]
        fused_step_(probe[:1], probe[1:2], probe[2:], torch.zeros(4, device=device_type))
    except Exception as error:  # no C++ compiler, no Triton, unsupported platform...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"compiling failed with {type(error).__name__}: {first_line}"
    return None
