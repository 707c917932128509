"""One Lion step on quantized momentum: decode -> `lion_step_tensor_` -> encode.

`quantized_lion_step_` is that step on a group of blocks: the for-loop path runs it eagerly, the
fused path runs it through `torch.compile` (dynamic shapes, the step's scalars as one fp32 tensor,
like `lion_integrations.fused`, so neither a new shape nor a new learning rate recompiles). Inductor
turns it into one loop over blocks; for each block it decodes the momentum, updates the parameter
and the momentum into a block-sized buffer (in cache, never a full-size fp32 tensor), reduces the
block's new absmax and encodes the codes, so every byte is read once. (The one exception: rows'
short last 4-bit blocks, when block_size does not divide the row, are stepped through an fp32
buffer the size of those tails.) The compiled step writes the new codes to a separate workspace,
copied back afterwards (2 bytes per element): encoding into the codes it is reading makes Inductor
give up the per-block loop.

On x86-64 CPUs with AVX-512, the fused path steps fp32 parameters with `simd`'s kernel instead:
the same pass, with the rule generated from `rule.py` and the codec's tables, and the same results
as the eager step, bit for bit (Inductor's lerp rounds differently, by an ulp at times). bf16/fp16
parameters take it through an fp32 copy of their weight, stored back by `rule.store_weight_`.

Every path runs `rule.lion_update_finite_`: a NaN or inf gradient element leaves its parameter and
momentum as they were, so a block's absmax never becomes NaN; each path also counts those elements.
The compiled step is one copy per dtype combination (see `lion_integrations.fused`).
"""

from __future__ import annotations

import functools

import torch

from ..fused import INDUCTOR_OPTIONS, compiled_unavailable_reason, dtype_key, function_copy, run_compiled
from ..rule import LOW_PRECISION_DTYPES, LionCoefficients, compute_dtype, lion_step_tensor_, store_weight_, weight_in
from . import simd
from .codec import (
    CODES_DTYPE,
    block_views,
    code_draws,
    contiguous_strides,
    decode_blocks,
    decode_nibbles,
    encode_blocks,
    encode_nibbles,
    padded_to_whole_bytes,
)

# As the fp32 kernel's (a parallel loop whatever the first call's size), and no index bound checks.
_INDUCTOR_OPTIONS = {**INDUCTOR_OPTIONS, "assert_indirect_indexing": False}
# Largest workspace the fused step keeps per device (elements of codes); bigger parameters are
# stepped in slices of rows that fit it.
WORKSPACE_BYTES = 1 << 24


def quantized_lion_step_(
    param, grad, codes, absmax, new_codes, step_size, update_weight, momentum_weight, decay, *, bits, cautious=False,
    compensation=None, random_bits=None, code_draws=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on blocks: `param`, `grad` (..., L); `codes`, `new_codes` (..., L or L/2); `absmax` (...).

    Updates `param` in place, writes the new momentum's codes to `new_codes` (which may be `codes`
    when run eagerly) and returns its absmax and the number of non-finite gradient elements of each
    block (skipped, see `rule.lion_update_finite_`). For 4 bits, `param` and `grad` are pairs of
    halves (..., L/2), the elements of the low and of the high nibbles, so that every loop runs over bytes.
    `cautious`: the masked rule, with `step_size` the parameter's cautious step size. `compensation`
    (the Kahan buffer) and `random_bits` (stochastic rounding's draws) are laid out like `param`, or
    None (`rule.store_weight_`). `code_draws`: None, codes rounded to nearest; or (4 bits) the
    codec's draws (`codec.code_draws`), laid out like `param`, for stochastically rounded codes.
    """
    scalars = (step_size, update_weight, momentum_weight, decay)
    if bits == 4:
        exp_avgs = decode_nibbles(codes, absmax)
        skipped = 0
        for half, (param_half, grad_half, exp_avg) in enumerate(zip(param, grad, exp_avgs)):
            finite = lion_step_tensor_(
                param_half, grad_half, exp_avg, *scalars, cautious=cautious, skip_nonfinite=True,
                compensation=compensation[half] if compensation is not None else None,
                random_bits=random_bits[half] if random_bits is not None else None,
            )
            skipped = skipped + (~finite).sum(-1, dtype=torch.int32)
        encoded, new_absmax = encode_nibbles(*exp_avgs, draws=code_draws)
    else:
        exp_avg = decode_blocks(codes, absmax, bits)
        finite = lion_step_tensor_(
            param, grad, exp_avg, *scalars, cautious=cautious, skip_nonfinite=True, compensation=compensation,
            random_bits=random_bits,
        )
        skipped = (~finite).sum(-1, dtype=torch.int32)
        encoded, new_absmax = encode_blocks(exp_avg, bits, code_draws)
    new_codes.copy_(encoded)
    return new_absmax, skipped


# One function per (bits, part, cautious) so that each has its own code object, hence its own Dynamo
# cache: full blocks (rows, n, block_size) and a row's short last block (rows, 1, t) are different graphs.
# `compensation` and `random_bits` (None, or as `param`: pairs of halves for 4 bits) select the bf16/fp16
# weight store, `code_draws` (None, or as `param`) stochastic codes; Dynamo keeps one graph per choice.
def _step8_full(param, grad, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(param, grad, codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=8)


def _step8_tail(param, grad, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(param, grad, codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=8)


def _step4_full(param_low, param_high, grad_low, grad_high, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(
        (param_low, param_high), (grad_low, grad_high), codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=4)


def _step4_tail(param_low, param_high, grad_low, grad_high, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(
        (param_low, param_high), (grad_low, grad_high), codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=4)


def _cautious_step8_full(param, grad, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(param, grad, codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=8, cautious=True)


def _cautious_step8_tail(param, grad, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(param, grad, codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=8, cautious=True)


def _cautious_step4_full(param_low, param_high, grad_low, grad_high, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(
        (param_low, param_high), (grad_low, grad_high), codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=4,
        cautious=True)


def _cautious_step4_tail(param_low, param_high, grad_low, grad_high, codes, absmax, new_codes, scalars, compensation=None, random_bits=None, code_draws=None):
    return quantized_lion_step_(
        (param_low, param_high), (grad_low, grad_high), codes, absmax, new_codes, *scalars.unbind(), compensation=compensation, random_bits=random_bits, code_draws=code_draws, bits=4,
        cautious=True)


_STEPS = {
    (8, "full", False): _step8_full, (8, "tail", False): _step8_tail,
    (4, "full", False): _step4_full, (4, "tail", False): _step4_tail,
    (8, "full", True): _cautious_step8_full, (8, "tail", True): _cautious_step8_tail,
    (4, "full", True): _cautious_step4_full, (4, "tail", True): _cautious_step4_tail,
}


@functools.lru_cache(maxsize=None)
def compiled_quantized_step(bits: int, part: str, cautious: bool = False, key: str = "float32_float32"):
    """The compiled step for `bits`, `part` ('full' blocks or the 'tail' ones), the cautious rule or
    not, and the parameter and gradient dtypes `key` (`fused.dtype_key`), built once per process."""
    return torch.compile(
        function_copy(_STEPS[bits, part, cautious], key), fullgraph=True, dynamic=True, options=_INDUCTOR_OPTIONS
    )


_workspaces: dict[torch.device, torch.Tensor] = {}


def _workspace_like(codes: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor shaped like `codes` (contiguous, not a view), in memory kept per device."""
    buffer = _workspaces.get(codes.device)
    if buffer is None or buffer.numel() < codes.numel():
        buffer = _workspaces[codes.device] = torch.empty(codes.numel(), dtype=CODES_DTYPE, device=codes.device)
    return buffer.new_empty(0).set_(buffer.untyped_storage(), 0, codes.shape, contiguous_strides(codes.shape))


def _row_slices(rows: int, bytes_per_row: int, fused: bool):
    """Row ranges to step in turn: all rows, or (fused) slices whose codes fit the workspace."""
    step = rows if not fused else max(1, WORKSPACE_BYTES // max(1, bytes_per_row))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def step_quantized_param_(param, grad, codes, absmax, coefficients, *, bits, block_size, fused, cautious=False,
                          compensation=None, draw=None, rounding=None):
    """Step one parameter (or local shard) whose momentum is `codes`/`absmax` in the row layout;
    returns how many of its gradient elements were non-finite (skipped)."""
    return step_quantized_params_(
        [(param, grad, codes, absmax, compensation, draw, rounding)], coefficients, bits=bits, block_size=block_size,
        fused=fused, cautious=cautious,
    )[0]


def step_quantized_params_(
    items, coefficients: LionCoefficients, *, bits: int, block_size: int, fused: bool, cautious: bool = False
) -> list:
    """Step parameters of one param group on one device: `items` are (param, grad, codes, absmax),
    optionally followed by compensation, draw and rounding: the Kahan buffer or None; None or
    `draw(param)` giving stochastic rounding's random bits (called in the order of `items`); None
    (codes rounded to nearest) or (key, first index) for stochastically rounded 4-bit codes: the
    `codec.rounding_key` of this step and the index of the shard's first element in its whole
    tensor (`codec.code_draws`, computed in the AVX-512 kernel alike).

    Fused, fp32 parameters on a CPU with AVX-512 run `simd`'s kernel, all in one call, and bf16/fp16
    ones too, through an fp32 copy (`_step_fp32_copy_`); the others the compiled step, one call per
    block shape (not fused: the eager step). `cautious`: the
    masked rule, `coefficients.step_size` being the cautious step size of every item. Returns, per
    item, how many gradient elements were non-finite and skipped (an int, or a 0-dim tensor).
    """
    kernel_tensors, kernel_keys, kernel_items, write_back, scalars = ([], [], [], []), [], [], [], {}
    skipped: list = [0] * len(items)
    for position, (param, grad, codes, absmax, *store) in enumerate(items):
        compensation, draw, rounding = (*store, None, None, None)[:3]
        if rounding is not None and bits != 4:
            raise ValueError(f"Invalid rounding for bits={bits}: only 4-bit codes are rounded stochastically")
        rows = absmax.shape[0]
        if param.numel() == 0 or rows == 0:
            continue
        if fused and (draw is not None or param.dtype in LOW_PRECISION_DTYPES and simd.applies(param.float(), grad.float())):
            skipped[position] = _step_fp32_copy_(
                param, grad, codes, absmax, coefficients, compensation, draw, rounding, bits, block_size, cautious
            )
            continue
        # Plain tensors sharing the storage (views of a leaf that requires grad trip autograd checks
        # in compiled code); non-contiguous ones are stepped in a contiguous copy written back after.
        param, grad, codes, absmax = param.detach(), grad.detach(), codes.detach(), absmax.detach()
        originals = [tensor for tensor in (param, codes, absmax, compensation) if tensor is not None]
        stepped = [tensor if tensor.is_contiguous() else tensor.contiguous() for tensor in originals]
        write_back += [(work, original) for work, original in zip(stepped, originals) if work is not original]
        work_param, work_codes, work_absmax = stepped[:3]
        as_rows = (work_param.view(rows, -1), grad.contiguous().view(rows, -1), work_codes.view(rows, -1), work_absmax)
        store_rows = (
            stepped[3].view(rows, -1) if compensation is not None else None,
            draw(param).view(rows, -1) if draw is not None else None,
        )
        if fused and simd.applies(param, grad) and store_rows == (None, None):
            for bucket, tensor in zip(kernel_tensors, as_rows):
                bucket.append(tensor)
            kernel_keys.append(rounding)
            kernel_items.append(position)
            continue
        draws_rows = code_draws(*as_rows[0].shape, *rounding, device=param.device) if rounding is not None else None
        dtype = compute_dtype(param, absmax)
        if fused and dtype not in scalars:
            scalars[dtype] = coefficients.as_tensor(param.device, dtype)
        skipped[position] = _step_blocks_(
            *as_rows, coefficients, bits, block_size, fused, scalars.get(dtype), cautious, *store_rows, draws_rows
        )
    if kernel_tensors[0]:
        counts = simd.step_(
            *kernel_tensors, coefficients, bits=bits, block_size=block_size, cautious=cautious, roundings=kernel_keys
        )
        for position, count in zip(kernel_items, counts):
            skipped[position] = count
    for work, original in write_back:
        original.copy_(work)
    return skipped


def _step_fp32_copy_(param, grad, codes, absmax, coefficients, compensation, draw, rounding, bits, block_size,
                     cautious):
    """The fused step of a bf16/fp16 parameter through its fp32 weight (`rule.weight_in`, a copy),
    stepped by the AVX-512 kernel where it applies (else compiled) and stored back with
    `rule.store_weight_`: the eager step's arithmetic and draws, bit for bit. Taken on CPUs with the
    kernel, and for stochastic rounding everywhere (Inductor fails to compile its bit arithmetic into
    the per-block loop). Returns the skipped (non-finite) gradient elements."""
    random_bits = draw(param) if draw is not None else None
    weight = weight_in(param.detach(), compensation).contiguous()
    if weight.data_ptr() == param.data_ptr():
        weight = weight.clone()
    (skipped,) = step_quantized_params_(
        [(weight, grad.float(), codes, absmax, None, None, rounding)], coefficients, bits=bits, block_size=block_size,
        fused=True,
        cautious=cautious,
    )
    store_weight_(param.detach(), weight, compensation, random_bits)
    return skipped


def _step_blocks_(param_rows, grad_rows, codes_rows, absmax, coefficients, bits, block_size, fused, scalars,
                  cautious=False, compensation_rows=None, random_bits_rows=None, draws_rows=None):
    """`quantized_lion_step_` over the block views of 2-D rows: compiled (fused, with the step's
    scalars as one tensor) or eagerly. `compensation_rows`, `random_bits_rows`, `draws_rows` (the
    codes' draws): as `param_rows`, or None. Returns the number of skipped (non-finite) gradient elements."""
    if fused:
        torch._dynamo.mark_static(scalars)  # its 4 is a constant, not a size shared with blocks
        key = dtype_key(param_rows, grad_rows)
        if compensation_rows is not None or random_bits_rows is not None:
            key += "_kahan" if compensation_rows is not None else "_stochastic"
        if draws_rows is not None:
            key += "_stochastic_codes"

    def value_parts(rows, start, stop):
        if rows is None:
            return [None, None]
        return [part for part, _, _ in block_views(
            rows[start:stop], codes_rows[start:stop], absmax[start:stop], bits, block_size)]

    skipped = 0
    for start, stop in _row_slices(absmax.shape[0], codes_rows.shape[1], fused):
        parts = block_views(param_rows[start:stop], codes_rows[start:stop], absmax[start:stop], bits, block_size)
        grad_parts = value_parts(grad_rows, start, stop)
        compensation_parts = value_parts(compensation_rows, start, stop)
        random_bits_parts = value_parts(random_bits_rows, start, stop)
        draws_parts = value_parts(draws_rows, start, stop)
        for name, (part_param, part_codes, part_absmax), part_grad, part_compensation, part_random_bits, part_draws in zip(
            ("full", "tail"), parts, grad_parts, compensation_parts, random_bits_parts, draws_parts
        ):
            if part_param.numel() == 0:
                continue
            targets = (part_param, part_compensation)
            if bits == 4 and part_param.shape[-1] % 2:  # a short block of odd length: a copy padded to whole bytes
                part_param, part_grad, part_compensation, part_random_bits, part_draws = (
                    padded_to_whole_bytes(t) if t is not None else None
                    for t in (part_param, part_grad, part_compensation, part_random_bits, part_draws)
                )
            stepped = (part_param, part_compensation)
            if bits == 4:  # as the elements of the low and of the high nibbles
                part_param, part_grad, part_compensation, part_random_bits, part_draws = (
                    t.chunk(2, dim=-1) if t is not None else None
                    for t in (part_param, part_grad, part_compensation, part_random_bits, part_draws)
                )
            if fused:
                new_codes = _workspace_like(part_codes)
                tensors = (*part_param, *part_grad) if bits == 4 else (part_param, part_grad)
                new_absmax, part_skipped = run_compiled(
                    compiled_quantized_step(bits, name, cautious, key), _STEPS[bits, name, cautious],
                    f"{bits}-bit {name} blocks of {key}", *tensors, part_codes, part_absmax, new_codes, scalars,
                    part_compensation, part_random_bits, part_draws,
                )
                part_codes.copy_(new_codes)
            else:
                new_absmax, part_skipped = quantized_lion_step_(
                    part_param, part_grad, part_codes, part_absmax, part_codes, *coefficients.scalars(), bits=bits,
                    cautious=cautious, compensation=part_compensation, random_bits=part_random_bits,
                    code_draws=part_draws,
                )
            part_absmax.copy_(new_absmax)
            skipped = skipped + part_skipped.sum()
            for work, target in zip(stepped, targets):
                if work is not target:
                    target.copy_(work[..., : target.shape[-1]])
    return skipped


@functools.lru_cache(maxsize=None)
def quantized_fused_unavailable_reason(device_type: str, bits: int) -> str | None:
    """None when the compiled quantized step builds and runs on `device_type`, else why it does not."""
    if device_type == "cpu" and simd.unavailable_reason() is None:
        return None  # fp32 parameters run the AVX-512 kernel; others compile when first stepped

    def probe() -> None:
        param = torch.zeros(2, 8, device=device_type)
        codes = torch.zeros(2, 8 * bits // 8, dtype=torch.uint8, device=device_type)
        absmax = torch.zeros(2, 2, device=device_type)
        coefficients = LionCoefficients(0.0, 0.0, 0.0, 1.0)
        step_quantized_param_(
            param, torch.zeros_like(param), codes, absmax, coefficients, bits=bits, block_size=4, fused=True
        )

    return compiled_unavailable_reason(device_type, probe)
