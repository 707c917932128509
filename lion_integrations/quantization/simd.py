"""The fused quantized step as an AVX-512 kernel, for fp32 parameters on x86-64 CPUs.

Inductor compiles the codec's selects and the rule into vectorized C++, but not into the byte
permutes and gathers that make a table look-up one instruction, so its step is compute-bound at
several times the memory floor. `simd_step.cpp` is that loop written with AVX-512 intrinsics; this
module completes it from the two sources it must not restate:

* the rule: `avx512.rule_source` (`rule.lion_update_finite_` written as AVX-512 statements) goes in
  front of it;
* the codec: the decode tables are `codec.decode_codes` of every code, the encode constants those
  of `codec.nearest_code` and `codec.stochastic_code4` (its magnitudes, gaps and `codec.mix32`'s
  multipliers), so both directions give the codec's values (tests compare them).

`avx512.load_library` compiles and caches it; where that fails, or the CPU lacks AVX-512 (with
VBMI, for the byte permutes), `unavailable_reason` says why and the fused step stays the Inductor one.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path
from typing import Callable

import torch

from ..avx512 import (
    CPU_FEATURES, float32, float_literal, in_cpu_memory, kernel_unavailable_reason, load_library, pointer_array,
    rule_source, written,
)
from .codec import (
    DECADE_SCALE,
    DECADES,
    DRAW_BITS,
    FOUR_BIT_GAPS,
    FOUR_BIT_MAGNITUDES,
    FOUR_BIT_MIDPOINTS,
    HASH_MULTIPLIERS,
    RESCALE,
    TINY_ABSMAX,
    decade_encode_constants,
    decode_codes,
)

TEMPLATE = Path(__file__).with_name("simd_step.cpp")
QUANTIZED_CPU_FEATURES = (*CPU_FEATURES, "avx512vbmi")


# count_below's 16 buckets, (shift, first bucket): 8 bits, two binades each from 2**-21 up (decade
# tops are 3.3 binades apart); 4 bits, half a binade each from 2**-7 up (midpoints are over 1.7x apart).
BUCKETS = {8: (24, (127 - 21) >> 1), 4: (22, (127 - 7) << 1)}
BUCKET_COUNT = 16


def _lanes(values, count: int = 16, pad: float = 0.0) -> str:
    values = list(values)
    return ", ".join(float_literal(v) for v in values + [pad] * (count - len(values)))


def counts_below_buckets(thresholds, bits: int) -> list[int]:
    """count_below's table: for each of its buckets, how many `thresholds` lie below its floor."""
    shift, first_bucket = BUCKETS[bits]
    thresholds = [float32(t) for t in thresholds]
    floors = [0.0] + [
        float(torch.tensor((first_bucket + bucket) << shift, dtype=torch.int32).view(torch.float32))
        for bucket in range(1, BUCKET_COUNT)
    ] + [math.inf]
    counts = []
    for low, high in zip(floors, floors[1:]):
        if sum(low <= t < high for t in thresholds) > 1:
            raise AssertionError(f"two thresholds in the bucket [{low}, {high}): widen BUCKETS[{bits}]")
        counts.append(sum(t < low for t in thresholds))
    return counts


def magnitude_bytes8() -> str:
    """The four byte planes of the 128 magnitudes of the 8-bit map, as a C initializer."""
    magnitudes = decode_codes(torch.arange(128), 8).contiguous()
    planes = magnitudes.view(torch.uint8).view(128, 4).t()  # little-endian: plane 0 is the low byte
    return ", ".join("{" + ", ".join(map(str, plane.tolist())) + "}" for plane in planes)


def magnitude_floors4() -> list[float]:
    """The float32 just below each 4-bit magnitude: |x| > floor exactly when |x| >= magnitude, so
    count_below gives `codec.stochastic_code4`'s lower index."""
    return [float(torch.nextafter(torch.tensor(m), torch.tensor(0.0))) for m in FOUR_BIT_MAGNITUDES]


def source_code() -> str:
    """simd_step.cpp with the rule and the codec's tables filled in."""
    encode8 = [decade_encode_constants(decade) for decade in range(DECADES)]
    for decade, (slope, offset, cap) in enumerate(encode8):  # magnitude_index8 leaves out the cap
        top = float32(DECADE_SCALE[decade]) if decade < DECADES - 1 else 1.0
        if float32(float32(top * float32(slope)) - float32(offset)) > cap - 0.25:
            raise AssertionError(f"decade {decade}'s top encodes too close to its cap: keep the minimum")
    tops8 = DECADE_SCALE[: DECADES - 1]  # decade t holds magnitudes above t of these
    fields = {
        "MAGNITUDE_BYTES8": magnitude_bytes8(),
        "PLANE_ORDER": ", ".join(str(16 * (i // 4 % 4) + 4 * (i // 16) + i % 4) for i in range(64)),
        "DECODE4": _lanes(decode_codes(torch.arange(16), 4).tolist()),
        "DECADES_BELOW8": ", ".join(map(str, counts_below_buckets(tops8, 8))),
        "DECADE_TOPS8": _lanes(tops8, pad=math.inf),
        "SLOPE8": _lanes(slope for slope, _, _ in encode8),
        "OFFSET8": _lanes(offset for _, offset, _ in encode8),
        "MIDPOINTS_BELOW4": ", ".join(map(str, counts_below_buckets(FOUR_BIT_MIDPOINTS, 4))),
        "MIDPOINTS4": _lanes(FOUR_BIT_MIDPOINTS, pad=math.inf),
        "FLOORS_BELOW4": ", ".join(map(str, counts_below_buckets(magnitude_floors4(), 4))),
        "FLOORS4": _lanes(magnitude_floors4(), pad=math.inf),
        "LOWER4": _lanes((0.0, *FOUR_BIT_MAGNITUDES)),
        "GAPS4": _lanes(FOUR_BIT_GAPS),
        "DRAW_BITS": str(DRAW_BITS),
        "HASH_MULTIPLIER1": f"{HASH_MULTIPLIERS[0]:#x}u",
        "HASH_MULTIPLIER2": f"{HASH_MULTIPLIERS[1]:#x}u",
        "TINY_ABSMAX": float_literal(TINY_ABSMAX),
        "RESCALE": float_literal(RESCALE),
        **{f"SHIFT{bits}": str(shift) for bits, (shift, _) in BUCKETS.items()},
        **{f"FIRST_BUCKET{bits}": str(first) for bits, (_, first) in BUCKETS.items()},
    }
    source = TEMPLATE.read_text()
    for name, value in fields.items():
        source = source.replace(f"@{name}@", value)
    return rule_source(QUANTIZED_CPU_FEATURES) + source


@functools.lru_cache(maxsize=None)
def compiled_step() -> Callable[..., int]:
    """The kernel, ``quantized_lion_step`` of simd_step.cpp, as a ctypes function (its library built
    on first use, then reused from the cache folder); a call returns nonzero when the kernel could not
    allocate its block buffers, and adds each parameter's count of non-finite gradient elements to
    its last argument."""
    compiled = load_library("simd_step", source_code(), QUANTIZED_CPU_FEATURES)
    entry_point = compiled.quantized_lion_step
    entry_point.restype = ctypes.c_int
    entry_point.argtypes = (
        [ctypes.c_int] + [ctypes.POINTER(ctypes.c_void_p)] * 4 + [ctypes.POINTER(ctypes.c_int64)] * 2
        + [ctypes.c_int64, ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 4
        + [ctypes.c_int] + [ctypes.POINTER(ctypes.c_int64)] * 3
    )
    return entry_point


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None when the AVX-512 kernel can run here, else why not."""
    return kernel_unavailable_reason(compiled_step, "quantized step")


def applies(param: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether the kernel steps this parameter: fp32 parameter and gradient in CPU memory
    (`avx512.in_cpu_memory`), and the kernel runs here."""
    return in_cpu_memory(param, grad) and unavailable_reason() is None


def step_(
    params, grads, codes, absmaxes, coefficients, *, bits: int, block_size: int, cautious: bool = False,
    roundings=None,
) -> list[int]:
    """One step, in place, of contiguous (rows, cols) fp32 parameters with their gradients, codes and
    absmax (contiguous, in the codec's row layout), all of one param group, in one kernel call
    (`cautious`: the masked rule, with `coefficients.step_size` the cautious step size of all).
    `roundings`: per parameter, None (codes rounded to nearest) or (key, first index) of its
    stochastically rounded 4-bit codes (`codec.code_draws`); None for all nearest.
    Returns, per parameter, how many gradient elements were NaN or inf (and skipped)."""
    count = len(params)
    if not count:
        return []
    skipped = (ctypes.c_int64 * count)()

    def sizes(dim):
        return (ctypes.c_int64 * count)(*(param.shape[dim] for param in params))

    roundings = roundings or [None] * count
    keys = (ctypes.c_int64 * count)(*(-1 if rounding is None else rounding[0] for rounding in roundings))
    first_indices = (ctypes.c_int64 * count)(*(0 if rounding is None else rounding[1] for rounding in roundings))
    if bits != 4 and any(key >= 0 for key in keys):
        raise ValueError(f"Invalid roundings for bits={bits}: only 4-bit codes are rounded stochastically")

    failed = compiled_step()(
        count, pointer_array(params), pointer_array(grads), pointer_array(codes), pointer_array(absmaxes), sizes(0),
        sizes(1),
        block_size, bits, int(cautious), coefficients.step_size, coefficients.update_weight, coefficients.momentum_weight,
        coefficients.decay, torch.get_num_threads(), skipped, keys, first_indices,
    )
    if failed:
        raise MemoryError("lion_integrations: the AVX-512 quantized step could not allocate its block buffers")
    written(params, codes, absmaxes)
    return list(skipped)
