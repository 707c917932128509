"""The Lion update rule, written once and run by every execution path.

Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2, per parameter:

    c = b1*m + (1-b1)*g                  # interpolation, used only for its sign
    p = p - lr*(sign(c) + wd*p)          # decoupled weight decay, scaled by lr
    m = b2*m + (1-b2)*g                  # momentum (EMA of gradients), no bias correction

`lion_update_` is generic over an ops table: `TENSOR_OPS` runs it on one tensor (the reference
loop, and the body that `torch.compile` fuses into one pass), `FOREACH_OPS` on lists of tensors.
It runs three stages, which the sign-vote mode (`lion_integrations.vote`) also runs, with the vote
between the first and the second:

    u = lion_direction(g, m)             # sign(c), from this process's gradient and momentum
    lion_apply_(p, u)                    # p = p*(1 - lr*wd) - lr*u
    lion_momentum_(m, g)                 # m = lerp(m, g, 1-b2)

Cautious masking (Liang et al. 2024, "Cautious Optimizers", arXiv 2411.16085), ``cautious=True``:
the direction is 0 wherever sign(c) differs from sign(g) (``u*g > 0`` keeps it; g = 0 never does),
and the step size of a parameter is divided by the fraction of its elements kept,
``lr / max(kept / numel, CAUTIOUS_MIN_FRACTION)`` (`cautious_step_size`), so the update keeps its
overall size. Weight decay is not masked.

Non-finite gradients. `sign(NaN)` is 0, so the rule alone never writes NaN into a parameter, but
it does into the momentum, which then freezes the parameter for good (and, quantized, its whole
block). `lion_update_finite_` is the rule with the policy every path applies: an element whose
gradient is NaN or +-inf is skipped (its parameter and momentum keep their values), the others
take the ordinary step.

Precision. The arithmetic runs in `compute_dtype`: float32 for 16- and 32-bit tensors, float64
when the parameter or its momentum is float64 (as torch's optimizers compute in the parameter's dtype).

A bf16/fp16 parameter is read as a weight in the compute dtype (`weight_in`), stepped, and written
back by one of three stores (`store_weight_`), the same on every execution path:

* nearest: round to the nearest representable value. An update smaller than half the spacing
  of the stored weight is lost (bf16 near 0.05: spacing 2**-12 ~ 2.4e-4, so lr=1e-4 never moves it);
* Kahan-compensated: a compensation buffer ``c`` of the parameter's dtype holds what rounding
  dropped, so the weight is ``p + c``: each step computes ``w = rule(p + c)`` in fp32 and stores
  ``p = round(w)``, ``c = round(w - p)`` (``w - p`` is exact in fp32). Updates accumulate in ``c``
  until they move ``p``, so the sum of updates keeps about twice the dtype's precision;
* stochastic: ``p = round_up(w)`` with probability ``(w - round_down(w)) / spacing``, else
  ``round_down(w)`` (`stochastic_round`): unbiased, ``E[p] = w``, with no buffer, from random bits
  drawn eagerly (`random_bits_like`) so that every path rounds with the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

# Smallest kept fraction the cautious rescaling divides by (the paper's clamp): a parameter whose
# directions are almost all masked moves by at most 1000 x lr on the few it keeps.
CAUTIOUS_MIN_FRACTION = 1e-3


def _keep_agreeing_(update: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`update` set to +0 where ``update * grad > 0`` fails (signs differ, a zero, or a NaN)."""
    return update.masked_fill_(~(update * grad > 0), 0.0)


def _keep_agreeing_foreach_(updates, grads) -> None:
    for update, grad in zip(updates, grads):
        _keep_agreeing_(update, grad)


TENSOR_OPS = SimpleNamespace(
    lerp=torch.lerp,
    lerp_=torch.Tensor.lerp_,
    sign_=torch.Tensor.sign_,
    mul_=torch.Tensor.mul_,
    sub_=torch.Tensor.sub_,
    neg=torch.neg,
    keep_agreeing_=_keep_agreeing_,
    isfinite=torch.isfinite,
    where=torch.where,
)

FOREACH_OPS = SimpleNamespace(
    lerp=torch._foreach_lerp,
    lerp_=torch._foreach_lerp_,
    sign_=torch._foreach_sign_,
    mul_=torch._foreach_mul_,
    sub_=torch._foreach_sub_,
    neg=torch._foreach_neg,
    keep_agreeing_=_keep_agreeing_foreach_,
)


@dataclass(frozen=True)
class LionCoefficients:
    """Scalars of one step, derived in float64 so every path rounds them to fp32 the same way.

    step_size = lr; update_weight = 1-b1; momentum_weight = 1-b2; decay = 1-lr*wd.
    """

    step_size: float
    update_weight: float
    momentum_weight: float
    decay: float

    @classmethod
    def from_group(cls, lr: float, betas: tuple[float, float], weight_decay: float) -> "LionCoefficients":
        # Traced into the caller's graph, a tensor lr stays a graph input (as in torch's own
        # optimizers), so a scheduler's new value neither breaks the graph nor recompiles it.
        if not (isinstance(lr, torch.Tensor) and torch.compiler.is_compiling()):
            lr = float(lr)
        return cls(lr, 1.0 - float(betas[0]), 1.0 - float(betas[1]), 1.0 - lr * float(weight_decay))

    def scalars(self) -> tuple[float, float, float, float]:
        """(step_size, update_weight, momentum_weight, decay): the trailing arguments of `lion_update_`."""
        return self.step_size, self.update_weight, self.momentum_weight, self.decay

    def as_tensor(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The four scalars as one tensor of the compute dtype, so compiled code takes new values
        without recompiling."""
        return torch.tensor(self.scalars(), dtype=dtype, device=device)


def lion_direction(ops, grad, exp_avg, update_weight, *, cautious: bool = False):
    """Stage 1: the update direction sign(lerp(exp_avg, grad, update_weight)), a new tensor (list)
    of -1, 0 and +1; with `cautious`, 0 where it disagrees with sign(grad)."""
    update = ops.lerp(exp_avg, grad, update_weight)
    ops.sign_(update)
    if cautious:
        ops.keep_agreeing_(update, grad)
    return update


def lion_apply_(ops, param, update, step_size, decay) -> None:
    """Stage 2: param <- param*decay - step_size*update (`update` is scaled in place)."""
    ops.mul_(update, step_size)
    if not (isinstance(decay, float) and decay == 1.0):
        ops.mul_(param, decay)
    ops.sub_(param, update)


def lion_momentum_(ops, exp_avg, grad, momentum_weight) -> None:
    """Stage 3: exp_avg <- lerp(exp_avg, grad, momentum_weight)."""
    ops.lerp_(exp_avg, grad, momentum_weight)


def lion_update_(ops, param, grad, exp_avg, step_size, update_weight, momentum_weight, decay, *, cautious=False) -> None:
    """One Lion step, in place on `param` and `exp_avg` (tensors, or lists of tensors with FOREACH_OPS).

    param <- param*decay - step_size*sign(lerp(exp_avg, grad, update_weight))
    exp_avg <- lerp(exp_avg, grad, momentum_weight)

    With `cautious`, the sign is masked (`lion_direction`) and `step_size` should come from
    `cautious_step_size`.
    """
    update = lion_direction(ops, grad, exp_avg, update_weight, cautious=cautious)
    lion_apply_(ops, param, update, step_size, decay)
    lion_momentum_(ops, exp_avg, grad, momentum_weight)


def lion_update_finite_(
    ops, param, grad, exp_avg, step_size, update_weight, momentum_weight, decay, *, cautious=False
):
    """`lion_update_` on the elements whose gradient is finite; the others keep `param` and `exp_avg`.

    The rule runs unchanged on inputs that make it the identity where the gradient is NaN or
    +-inf: gradient := momentum (lerp(m, m, w) = m), step_size := 0, decay := 1. Returns the mask of
    finite gradient elements.
    """
    finite = ops.isfinite(grad)
    grad = ops.where(finite, grad, exp_avg)
    step_size = ops.where(finite, step_size, 0.0)
    if not (isinstance(decay, float) and decay == 1.0):
        decay = ops.where(finite, decay, 1.0)
    lion_update_(ops, param, grad, exp_avg, step_size, update_weight, momentum_weight, decay, cautious=cautious)
    return finite


def compute_dtype(param: torch.Tensor, exp_avg: torch.Tensor) -> torch.dtype:
    """float64 when `param` or `exp_avg` is float64, else float32 (also for 16-bit storage)."""
    return torch.float64 if torch.float64 in (param.dtype, exp_avg.dtype) else torch.float32


def cautious_step_size(step_size, kept: int, total: int):
    """The step size of a cautious update that keeps `kept` of a parameter's `total` elements:
    step_size / max(kept / total, CAUTIOUS_MIN_FRACTION), the ratio taken in float64."""
    return step_size * (total / max(kept, total * CAUTIOUS_MIN_FRACTION)) if total else step_size


def kept_count(grad: torch.Tensor, exp_avg: torch.Tensor, update_weight: float) -> int:
    """How many elements the cautious mask keeps (`lion_direction(cautious=True)` nonzero), in the
    compute dtype."""
    dtype = compute_dtype(grad, exp_avg)
    direction = lion_direction(TENSOR_OPS, grad.to(dtype), exp_avg.to(dtype), update_weight, cautious=True)
    return int(torch.count_nonzero(direction))


# --- Storing the fp32 weight into the parameter's dtype. -----------------------------------------

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)
# Random bits per element for stochastic rounding: enough for every dropped bit of an fp32 weight
# rounded to fp16, subnormals included (at most 23, the fp32 fraction).
RANDOM_BITS = 23
_FRACTION_BITS = 23  # fp32's
_EXPONENT_BIAS = 127


def weight_in(param: torch.Tensor, compensation: torch.Tensor | None = None, dtype: torch.dtype = torch.float32):
    """The weight a step starts from, in `dtype` (the compute dtype): `param` (itself when of that
    dtype), plus its Kahan compensation."""
    if compensation is not None:
        return torch.add(param.to(dtype), compensation)  # type promotion: the buffer enters exactly
    return param.to(dtype)


def random_bits_like(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform int32 in [0, 2**RANDOM_BITS), `tensor`'s shape and device, from `generator` (default:
    the device's generator, seeded by `torch.manual_seed`)."""
    return torch.randint(
        0, 1 << RANDOM_BITS, tensor.shape, dtype=torch.int32, device=tensor.device, generator=generator
    )


def stochastic_round(weight: torch.Tensor, random_bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 `weight` rounded to `dtype` (bf16 or fp16) up or down, with probability of rounding up
    (weight - down) / (up - down), so that the expected result is `weight` (unbiased).

    On the fp32 bits: the `d` low bits that `dtype` cannot hold (16 for bf16; 13 for fp16, more in
    its subnormal range) get `random_bits` mod 2**d added, then are cleared: the carry into the kept
    bits happens with exactly the probability above (integer arithmetic, so every path agrees). An
    fp16 weight below its smallest subnormal s = 2**-24 becomes 0 or s, up with probability |w|/s
    (to 2**-23 of s). Non-finite weights are stored as they are.
    """
    info = torch.finfo(dtype)
    kept_fraction_bits = round(-math.log2(info.eps))
    min_exponent = round(math.log2(info.tiny))
    bits = weight.view(torch.int32)
    exponent = ((bits >> _FRACTION_BITS) & 0xFF).clamp(min=1) - _EXPONENT_BIAS  # fp32 subnormals: 2**-126
    dropped = (_FRACTION_BITS - kept_fraction_bits) + (min_exponent - exponent).clamp(min=0)
    mask = (1 << dropped.clamp(max=_FRACTION_BITS)) - 1
    rounded = ((bits + (random_bits & mask)) & ~mask).view(torch.float32)
    if min_exponent > 1 - _EXPONENT_BIAS:  # fp16: weights below its smallest subnormal s
        smallest = info.tiny * info.eps
        up = random_bits.float() * 2.0**-RANDOM_BITS < weight.abs() * (1.0 / smallest)
        tiny = torch.where(up, smallest, 0.0).copysign(weight)
        rounded = torch.where(dropped > _FRACTION_BITS, tiny, rounded)
    return torch.where(torch.isfinite(weight), rounded, weight).to(dtype)


def store_weight_(param: torch.Tensor, weight: torch.Tensor, compensation: torch.Tensor | None = None,
                  random_bits: torch.Tensor | None = None) -> None:
    """Write `weight` (fp32, or fp64 when the step computes in fp64) into `param`: rounded to nearest; or stochastically with `random_bits`;
    or to nearest keeping the residual ``weight - param`` in `compensation` (Kahan)."""
    if weight is param:
        return
    if random_bits is not None:
        param.copy_(stochastic_round(weight.float(), random_bits, param.dtype))
    elif compensation is not None:
        stored = weight.to(param.dtype)
        compensation.copy_(weight - stored)  # in fp32, exact; then rounded to the buffer's dtype
        param.copy_(stored)
    else:
        param.copy_(weight)


def store_weights_foreach_(params, weights, compensations=None, random_bits=None) -> None:
    """`store_weight_` on lists of one dtype (`compensations` and `random_bits`: lists, or None for none)."""
    if weights[0] is params[0]:
        return
    if random_bits is not None:
        rounded = [stochastic_round(w.float(), r, p.dtype) for p, w, r in zip(params, weights, random_bits)]
        torch._foreach_copy_(params, rounded)
    elif compensations is not None:
        torch._foreach_copy_(params, weights)
        torch._foreach_copy_(compensations, torch._foreach_sub(weights, [p.to(weights[0].dtype) for p in params]))
    else:
        torch._foreach_copy_(params, weights)


def lion_step_tensor_(
    param, grad, exp_avg, step_size, update_weight, momentum_weight, decay, *, cautious=False,
    skip_nonfinite: bool = False, compensation=None, random_bits=None,
) -> torch.Tensor | None:
    """`lion_update_` on one tensor, computed in `compute_dtype` and stored by `store_weight_`
    (`compensation`: the Kahan buffer; `random_bits`: draws for stochastic rounding; neither: nearest).

    With `skip_nonfinite`, runs `lion_update_finite_` and returns its mask of finite gradient
    elements; else returns None.
    """
    dtype = compute_dtype(param, exp_avg)
    param_c, exp_avg_c = weight_in(param, compensation, dtype), exp_avg.to(dtype)
    rule = lion_update_
    if skip_nonfinite:  # the masked scalars become tensors: give them the compute dtype, as a scalar operand has
        step_size, decay = (torch.as_tensor(value, dtype=dtype, device=param.device) for value in (step_size, decay))
        rule = lion_update_finite_
    finite = rule(
        TENSOR_OPS, param_c, grad.to(dtype), exp_avg_c, step_size, update_weight, momentum_weight, decay,
        cautious=cautious,
    )
    store_weight_(param, param_c, compensation, random_bits)
    if exp_avg_c is not exp_avg:
        exp_avg.copy_(exp_avg_c)
    return finite


# The foreach path steps its lists in chunks of about this many elements (or the largest tensor's),
# so that its temporaries (the update, and fp32 copies of 16-bit tensors) stay within one tensor's worth.
FOREACH_CHUNK_NUMEL = 1 << 22


def foreach_chunks(params: list[torch.Tensor]) -> list[slice]:
    """Consecutive slices of `params` holding at most max(FOREACH_CHUNK_NUMEL, largest numel) elements."""
    budget = max([FOREACH_CHUNK_NUMEL] + [p.numel() for p in params])
    chunks, start, total = [], 0, 0
    for index, param in enumerate(params):
        if total + param.numel() > budget and index > start:
            chunks.append(slice(start, index))
            start, total = index, 0
        total += param.numel()
    if start < len(params):
        chunks.append(slice(start, len(params)))
    return chunks


def lion_step_foreach_(params, grads, exp_avgs, step_size, update_weight, momentum_weight, decay, *, cautious=False,
                       compensations=None, random_bits=None) -> None:
    """`lion_update_` on lists of tensors sharing device and dtypes, in `compute_dtype` like
    `lion_step_tensor_`, a chunk (`foreach_chunks`) at a time; `step_size` is one number, or a list
    of one per tensor (cautious step sizes). `compensations`, `random_bits`: lists like `params`, or None."""
    if not params:
        return
    dtype = compute_dtype(params[0], exp_avgs[0])
    for chunk in foreach_chunks(params):
        chunk_compensations = compensations[chunk] if compensations is not None else None
        if chunk_compensations is not None:
            params_c = torch._foreach_add([p.to(dtype) for p in params[chunk]], [c.to(dtype) for c in chunk_compensations])
        else:
            params_c = [p.to(dtype) for p in params[chunk]]
        exp_avgs_c = [m.to(dtype) for m in exp_avgs[chunk]]
        grads_c = [g.to(dtype) for g in grads[chunk]]
        chunk_step_size = step_size[chunk] if isinstance(step_size, list) else step_size
        lion_update_(
            FOREACH_OPS, params_c, grads_c, exp_avgs_c, chunk_step_size, update_weight, momentum_weight, decay,
            cautious=cautious,
        )
        store_weights_foreach_(
            params[chunk], params_c, chunk_compensations, random_bits[chunk] if random_bits is not None else None
        )
        if exp_avgs_c[0] is not exp_avgs[chunk][0]:
            torch._foreach_copy_(exp_avgs[chunk], exp_avgs_c)


def uses_foreach(foreach: bool | None, device_type: str) -> bool:
    """Whether an unfused step runs the foreach form: as `foreach` says, else (None) on CUDA only,
    where one launch per operation for many tensors wins; on CPU the per-tensor loop is faster."""
    return foreach if foreach is not None else device_type == "cuda"


def lion_step_unfused_(
    params, grads, exp_avgs, coefficients: LionCoefficients, *, foreach: bool, cautious: bool = False, step_sizes=None,
    compensations=None, draw=None,
) -> None:
    """One step of lists of tensors sharing device and dtypes: `lion_step_foreach_` on all of them,
    or `lion_step_tensor_` on each. `step_sizes`: one per tensor (cautious step sizes) in place of
    `coefficients.step_size`. `compensations`: the Kahan buffers (a list like `params`) or None;
    `draw(param)`: stochastic rounding's random bits for `param`, called in the order of `params`, or None."""
    _, update_weight, momentum_weight, decay = coefficients.scalars()
    if step_sizes is None:
        step_sizes = [coefficients.step_size] * len(params)
    if foreach:
        step_size = step_sizes if cautious else coefficients.step_size
        random_bits = [draw(param) for param in params] if draw is not None else None
        lion_step_foreach_(
            params, grads, exp_avgs, step_size, update_weight, momentum_weight, decay, cautious=cautious,
            compensations=compensations, random_bits=random_bits,
        )
        return
    for index, (param, grad, exp_avg, step_size) in enumerate(zip(params, grads, exp_avgs, step_sizes)):
        lion_step_tensor_(
            param, grad, exp_avg, step_size, update_weight, momentum_weight, decay, cautious=cautious,
            compensation=compensations[index] if compensations is not None else None,
            random_bits=draw(param) if draw is not None else None,
        )
