"""``optim="lion"`` without ``fused`` in optim_args: compile the fused kernel only when the run repays it.

The fused path (`lion_integrations.fused`) compiles its kernel with torch.compile on the first step
that has a tensor of at least `fused.MIN_FUSED_NUMEL` elements: about 11 s on a 2-core CPU with an
empty Inductor cache, 2-3 s with a warm one, once per process. On that CPU each fused step then
saves about 1.8 ns per parameter against the unfused path (8M fp32 parameters, 2 threads: 3.1 ms
against 17.5 ms a step), so the compile is repaid after about 1.5e9 parameter-steps with a warm
cache and 6e9 with a cold one. On CUDA the unfused path is the foreach one and saves less, so the
compile is repaid later still.

fp32 parameters on an x86-64 CPU with AVX-512 take the fused kernel `avx512` builds from the rule
instead: nothing to compile per process (the library is built once and cached on disk), so they
count for nothing below.

Rule (Trainer knows the run's length when ``max_steps`` is set): with ``optim="lion"``, no ``fused``
key in optim_args, and ``max_steps > 0``, a run of fewer than `FUSED_MIN_PARAMETER_STEPS` = 2e9
parameter-steps (trainable parameters that torch.compile would step x ``max_steps``) takes the unfused path (``fused=False``),
which is said at INFO. Otherwise ``fused=None`` stands and the first step's compile is said once per
process at INFO (with ``fused=True`` too) when a parameter is large enough to take it. Runs set by epochs (``max_steps`` <= 0) keep ``fused=None``:
Trainer computes their length after it has built the optimizer. The quantized variants keep their
fused path: their unfused path is a slow reference (about 80x the fused step's time on CPU) and
their AVX-512 kernel is built once and cached on disk.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .. import avx512
from ..fused import MIN_FUSED_NUMEL
from ..optimizer import as_momentum_dtype, as_real, momentum_dtype_for
from .visibility import info_logger

logger = logging.getLogger(__name__)

FUSED_MIN_PARAMETER_STEPS = 2_000_000_000
COMPILE_NOTE = (
    "the first optimizer step compiles the fused Lion kernel with torch.compile (about 10 s on a small "
    "CPU, 2-3 s with a warm Inductor cache; once per process); optim_args fused=false skips it"
)
_compile_announced = False


def trainable_parameters(model: torch.nn.Module | None) -> list[torch.Tensor]:
    """The parameters of `model` that require a gradient (none without a model)."""
    return [] if model is None else [param for param in model.parameters() if param.requires_grad]


def compiled_parameters(params: list[torch.Tensor], options: dict[str, Any]) -> list[torch.Tensor]:
    """The `params` whose fused step torch.compile would build: all but those the AVX-512 kernel
    steps (fp32 with fp32 momentum on a CPU that runs it, `avx512.applies`)."""
    momentum_dtype = as_momentum_dtype(options.get("momentum_dtype"))

    def kernel_steps(param: torch.Tensor) -> bool:
        real = as_real(param.detach())
        return momentum_dtype_for(real, momentum_dtype) == torch.float32 and avx512.applies(real, real, real)

    return [param for param in params if not kernel_steps(param)]


def fused_pays_off(parameters: int, steps: int) -> bool:
    """Whether compiling the fused kernel is repaid in a run of `steps` optimizer steps over
    `parameters` parameters: at least `FUSED_MIN_PARAMETER_STEPS` parameter-steps."""
    return parameters * steps >= FUSED_MIN_PARAMETER_STEPS


def announce_compile(name: str) -> None:
    """Say once per process, at INFO, that the first step compiles."""
    global _compile_announced
    if not _compile_announced:
        _compile_announced = True
        info_logger(logger).info("optim=%s: %s", name, COMPILE_NOTE)


def short_run(name: str, max_steps: int, params: list[torch.Tensor], options: dict[str, Any]) -> bool:
    """Whether the rule turns the fused path off: "lion" without ``fused`` in `options`, a known
    ``max_steps``, and parameters to compile for (`compiled_parameters`) with fewer parameter-steps
    than repay the compile."""
    count = sum(param.numel() for param in compiled_parameters(params, options))
    return name == "lion" and "fused" not in options and max_steps > 0 and count > 0 and not fused_pays_off(count, max_steps)


def will_compile(name: str, max_steps: int, model: torch.nn.Module | None, options: dict[str, Any]) -> bool:
    """Whether optim `name` with `options` compiles the fused Lion kernel on its first step for
    `model`: "lion", not ``fused=false`` (given, or chosen by the rule), and a parameter of at least
    `fused.MIN_FUSED_NUMEL` elements that the AVX-512 kernel does not step."""
    params = trainable_parameters(model)
    return (
        name == "lion" and options.get("fused") is not False and not short_run(name, max_steps, params, options)
        and any(param.numel() >= MIN_FUSED_NUMEL for param in compiled_parameters(params, options))
    )


def choose_fused(name: str, max_steps: int, model: torch.nn.Module | None, options: dict[str, Any]) -> dict[str, Any]:
    """`options` (the optimizer's keyword options from optim_args) with the path of optim `name` chosen
    by the module's rule: for "lion", ``fused=False`` added for a short run, said at INFO; otherwise
    the compile announced when there will be one. Other names are left as they are."""
    params = trainable_parameters(model)
    if short_run(name, max_steps, params, options):
        count = sum(param.numel() for param in compiled_parameters(params, options))
        info_logger(logger).info(
            "optim=%s: unfused path (fused=False): %d steps x %d parameters = %.2g parameter-steps, fewer than "
            "the %.0e that repay compiling the fused kernel; optim_args fused=true compiles it anyway",
            name, max_steps, count, count * max_steps, FUSED_MIN_PARAMETER_STEPS,
        )
        return {**options, "fused": False}
    if will_compile(name, max_steps, model, options):
        announce_compile(name)
    return options
