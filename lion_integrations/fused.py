"""The fused path: `lion_step_tensor_` compiled by `torch.compile` into one pass over memory.

Inductor emits a C++/OpenMP loop on CPU and a Triton kernel on CUDA. Tensors are flattened to 1-D
and compiled with dynamic shapes, and the step's scalars arrive as one tensor of the compute dtype,
so one graph serves every parameter and every learning rate without recompiling.

Each combination of (parameter, gradient, momentum) dtypes gets its own copy of the step function
(`function_copy`): Dynamo keeps its compiled graphs, and counts recompiles against its limit, per
code object, so a model of many dtypes never exhausts one function's budget. Should a limit be
reached anyway (Dynamo also caps the graphs of a whole process), the call runs eagerly with one
warning instead of failing (`run_compiled`).

Tensors below `MIN_FUSED_NUMEL` elements take the unfused path of their device (the per-tensor
rule on CPU, foreach on CUDA): for them a compiled call's fixed cost (~20-40 us) is larger than the
memory traffic it saves.
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import Callable

import torch

from .rule import LionCoefficients, compute_dtype, lion_step_tensor_, lion_step_unfused_, uses_foreach

FUSED_DEVICE_TYPES = ("cpu", "cuda")
MIN_FUSED_NUMEL = 1 << 16
# A parallel loop whatever size the first call had (Inductor otherwise sizes its OpenMP split by
# the first call's shapes, and the warm-up probe is tiny); casts to bf16/fp16 round as in eager code
# (by default Inductor may keep such intermediates in fp32, which would make a Kahan residual 0).
INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True, "emulate_precision_casts": True}


# Keys of the compiled steps that `run_compiled` has warned about.
_warned_limits: set[str] = set()


def function_copy(function, suffix: str):
    """`function` with a code object of its own (named after `suffix`), hence a Dynamo cache of its own."""
    name = f"{function.__name__}_{suffix}"
    code = function.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, function.__globals__, name, function.__defaults__, function.__closure__)


def dtype_key(*tensors: torch.Tensor) -> str:
    """'float32_bfloat16_...': the dtypes of `tensors`, as a key and a readable suffix."""
    return "_".join(str(tensor.dtype).removeprefix("torch.") for tensor in tensors)


def run_compiled(kernel, eager, key: str, *args):
    """`kernel(*args)`, or `eager(*args)` with one warning per `key` when Dynamo's recompile limit is hit."""
    try:
        return kernel(*args)
    except torch._dynamo.exc.FailOnRecompileLimitHit as error:
        if key not in _warned_limits:
            _warned_limits.add(key)
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            warnings.warn(
                f"lion_integrations: the compiled step for {key} reached torch.compile's recompile limit "
                f"({first_line}); those tensors take the eager step, with the same rule",
                RuntimeWarning,
                stacklevel=2,
            )
        return eager(*args)


def _step_with_scalars_(param, grad, exp_avg, scalars) -> None:
    lion_step_tensor_(param, grad, exp_avg, scalars[0], scalars[1], scalars[2], scalars[3])


def _cautious_step_with_scalars_(param, grad, exp_avg, scalars) -> None:
    lion_step_tensor_(param, grad, exp_avg, scalars[0], scalars[1], scalars[2], scalars[3], cautious=True)


# bf16/fp16 weights stored with Kahan summation or stochastic rounding (`rule.store_weight_`).
def _kahan_step_with_scalars_(param, grad, exp_avg, scalars, compensation, cautious: bool) -> None:
    lion_step_tensor_(
        param, grad, exp_avg, scalars[0], scalars[1], scalars[2], scalars[3], cautious=cautious,
        compensation=compensation,
    )


def _stochastic_step_with_scalars_(param, grad, exp_avg, scalars, random_bits, cautious: bool) -> None:
    lion_step_tensor_(
        param, grad, exp_avg, scalars[0], scalars[1], scalars[2], scalars[3], cautious=cautious,
        random_bits=random_bits,
    )


_STORE_STEPS = {"kahan": _kahan_step_with_scalars_, "stochastic": _stochastic_step_with_scalars_}


@functools.lru_cache(maxsize=None)
def compiled_step(key: str):
    """The compiled kernel for the dtypes `key` (`dtype_key` of parameter, gradient, momentum), built
    once per process and key (Inductor caches the code on disk across runs)."""
    return torch.compile(
        function_copy(_step_with_scalars_, key), fullgraph=True, dynamic=True, options=INDUCTOR_OPTIONS
    )


@functools.lru_cache(maxsize=None)
def compiled_cautious_step(key: str):
    """The compiled kernel of the cautious rule for the dtypes `key`, built on first use."""
    return torch.compile(
        function_copy(_cautious_step_with_scalars_, key), fullgraph=True, dynamic=True, options=INDUCTOR_OPTIONS
    )


@functools.lru_cache(maxsize=None)
def compiled_store_step(store: str, key: str):
    """The compiled kernel for bf16/fp16 weights stored by `store` ('kahan' or 'stochastic') and the
    dtypes `key`, built on first use."""
    return torch.compile(
        function_copy(_STORE_STEPS[store], f"{store}_{key}"), fullgraph=True, dynamic=True, options=INDUCTOR_OPTIONS
    )


def flat_alias(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over `tensor`'s memory that is not a view (Dynamo guards on a view's base shape)."""
    return tensor.new_empty(0).set_(tensor.untyped_storage(), tensor.storage_offset(), (tensor.numel(),), (1,))


def fusable(param: torch.Tensor, exp_avg: torch.Tensor) -> bool:
    """Contiguous tensors of at least MIN_FUSED_NUMEL elements share one graph; the rest run the same
    rule unfused. (A strided layout would add a graph per rank.)"""
    return param.is_contiguous() and exp_avg.is_contiguous() and param.numel() >= max(MIN_FUSED_NUMEL, 2)


def fused_step_(params, grads, exp_avgs, coefficients: LionCoefficients, *, cautious: bool = False,
                compensations=None, draw=None) -> None:
    """Run the compiled kernel on each large parameter; raises whatever compiling raises (but a
    recompile limit: see `run_compiled`). With `cautious`, `coefficients.step_size` is the
    parameters' cautious step size (`rule.cautious_step_size`). `compensations`: the Kahan buffers (a
    list like `params`), or None; `draw(param)`: stochastic rounding's random bits for `param`,
    called in the order of `params` (as the other paths do), or None."""
    store = "kahan" if compensations is not None else "stochastic" if draw is not None else None
    if store is not None:
        compiled, eager = functools.partial(compiled_store_step, store), _STORE_STEPS[store]
    else:
        compiled, eager = (compiled_cautious_step, _cautious_step_with_scalars_) if cautious else (
            compiled_step, _step_with_scalars_)
    scalars: dict[torch.dtype, torch.Tensor] = {}
    rest = ([], [], [], [], [])
    for index, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
        compensation = compensations[index] if compensations is not None else None
        random_bits = draw(param) if draw is not None else None
        if not fusable(param, exp_avg):
            for bucket, tensor in zip(rest, (param, grad, exp_avg, compensation, random_bits)):
                bucket.append(tensor)
            continue
        dtype = compute_dtype(param, exp_avg)
        if dtype not in scalars:
            scalars[dtype] = coefficients.as_tensor(param.device, dtype)
        key = dtype_key(param, grad, exp_avg)
        tensors = (flat_alias(param), flat_alias(grad.contiguous()), flat_alias(exp_avg), scalars[dtype])
        if store is not None:
            tensors += (flat_alias(compensation if compensation is not None else random_bits), cautious)
        run_compiled(compiled(key), eager, key, *tensors)
    rest_params, rest_grads, rest_exp_avgs, rest_compensations, rest_random_bits = rest
    if rest_params:
        drawn = iter(rest_random_bits)  # drawn above, in parameter order
        lion_step_unfused_(
            rest_params, rest_grads, rest_exp_avgs, coefficients, foreach=uses_foreach(None, rest_params[0].device.type),
            cautious=cautious, compensations=rest_compensations if compensations is not None else None,
            draw=(lambda param: next(drawn)) if draw is not None else None,
        )


def compiled_unavailable_reason(device_type: str, probe: Callable[[], object]) -> str | None:
    """None when `probe` (a first call of a compiled kernel on `device_type`) runs, else why it does not."""
    if device_type not in FUSED_DEVICE_TYPES:
        return f"torch.compile fusion is not supported on device type {device_type!r}"
    try:
        probe()
    except Exception as error:  # no C++ compiler, no Triton, unsupported platform...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"compiling failed with {type(error).__name__}: {first_line}"
    return None


@functools.lru_cache(maxsize=None)
def fused_unavailable_reason(device_type: str) -> str | None:
    """None when the compiled kernel builds and runs on `device_type`, else why it does not."""

    def probe() -> None:
        tensors = [torch.zeros(8, device=device_type) for _ in range(3)]
        # The key the step itself passes, so that the probe compiles the function the step runs.
        compiled_step(dtype_key(*tensors))(*tensors, LionCoefficients(0.0, 0.0, 0.0, 1.0).as_tensor(tensors[0].device))

    return compiled_unavailable_reason(device_type, probe)
