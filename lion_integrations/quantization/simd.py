"""The fused quantized step as an AVX-512 kernel, for fp32 parameters on x86-64 CPUs.

Inductor compiles the codec's selects and the rule into vectorized C++, but not into the byte
permutes and gathers that make a table look-up one instruction, so its step is compute-bound at
several times the memory floor. `simd_step.cpp` is that loop written with AVX-512 intrinsics; this
module completes it from the two sources it must not restate:

* the rule: `rule.lion_update_finite_` (the update rule with the non-finite policy) is run once
  with `CodeWriter`, an ops table (like `TENSOR_OPS`) whose operations write C statements on
  16-lane vectors instead of computing;
* the codec: the decode tables are `codec.decode_codes` of every code, the encode constants those
  of `codec.nearest_code`, so both directions give the codec's values (tests compare them).

The source is compiled once with the system's C++ compiler (``$CXX``, else g++) into a cache
folder (``$LION_INTEGRATIONS_CACHE``, else ``~/.cache/lion_integrations``) and loaded with ctypes.
Where that fails, or the CPU lacks AVX-512, `unavailable_reason` says why and the fused step stays
the Inductor one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..rule import lion_update_finite_
from .codec import (
    DECADE_SCALE,
    DECADES,
    FOUR_BIT_MIDPOINTS,
    RESCALE,
    TINY_ABSMAX,
    decade_encode_constants,
    decode_codes,
)

TEMPLATE = Path(__file__).with_name("simd_step.cpp")
# -ffp-contract=off: no fused multiply-adds but the ones written, so the rounding is eager torch's.
FLAGS = (
    "-O3", "-std=c++17", "-ffp-contract=off", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vbmi",
    "-fopenmp", "-shared", "-fPIC",
)
RULE_ARGUMENTS = ("p", "g", "m", "step_size", "update_weight", "momentum_weight", "decay")


class CodeWriter:
    """An ops table for `lion_update_finite_` that writes the statements of one step on __m512
    values (and __mmask16 lane masks)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.nonnegative = {"step_size"}  # values known to be >= 0 (for sign_times)

    def _temporary(self, expression: str, kind: str = "__m512") -> str:
        name = f"t{len(self.lines)}"
        self.lines.append(f"{kind} {name} = {expression};")
        return name

    def _assign(self, target: str, expression: str) -> None:
        self.lines.append(f"{target} = {expression};")

    @staticmethod
    def _vector(value) -> str:
        return f"_mm512_set1_ps({float_literal(value)})" if isinstance(value, float) else value

    def lerp(self, start, end, weight):
        return self._temporary(f"lerp({start}, {end}, {weight})")

    def lerp_(self, start, end, weight):
        self._assign(start, f"lerp({start}, {end}, {weight})")

    def sign_(self, x):
        self._assign(x, f"sign({x})")

    def mul_(self, x, factor):
        if self.lines and self.lines[-1] == f"{x} = sign({x});" and factor in self.nonnegative:
            # sign(x) * lr, lr >= 0, is lr with x's sign (or 0): one instruction instead of two.
            self.lines[-1] = f"{x} = sign_times({x}, {factor});"
        else:
            self._assign(x, f"scale({x}, {factor})")

    def sub_(self, x, y):
        self._assign(x, f"_mm512_sub_ps({x}, {y})")

    def neg(self, x):
        return self._temporary(f"_mm512_xor_ps({x}, _mm512_set1_ps(-0.0f))")

    def isfinite(self, x):
        return self._temporary(f"finite({x})", kind="__mmask16")

    def keep_agreeing_(self, x, y):
        self._assign(x, f"keep_agreeing({x}, {y})")

    def where(self, condition, value, other):
        name = self._temporary(f"_mm512_mask_blend_ps({condition}, {self._vector(other)}, {self._vector(value)})")
        if all(v in self.nonnegative or (isinstance(v, float) and v >= 0) for v in (value, other)):
            self.nonnegative.add(name)
        return name


def rule_statements(cautious: bool = False) -> list[str]:
    """`lion_update_finite_` as C statements on p, g, m (vectors) and the step's four scalars,
    ending with the return of the mask of finite gradient lanes."""
    writer = CodeWriter()
    finite = lion_update_finite_(writer, *RULE_ARGUMENTS, cautious=cautious)
    return writer.lines + [f"return {finite};"]


# count_below's 16 buckets, (shift, first bucket): 8 bits, two binades each from 2**-21 up (decade
# tops are 3.3 binades apart); 4 bits, half a binade each from 2**-7 up (midpoints are over 1.7x apart).
BUCKETS = {8: (24, (127 - 21) >> 1), 4: (22, (127 - 7) << 1)}
BUCKET_COUNT = 16


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def float_literal(value: float) -> str:
    """`value` rounded to float32, as an exact C float literal (hexadecimal), or +-INFINITY."""
    return f"{_float32(value).hex()}f" if math.isfinite(value) else ("INFINITY" if value > 0 else "-INFINITY")


def _lanes(values, count: int = 16, pad: float = 0.0) -> str:
    values = list(values)
    return ", ".join(float_literal(v) for v in values + [pad] * (count - len(values)))


def counts_below_buckets(thresholds, bits: int) -> list[int]:
    """count_below's table: for each of its buckets, how many `thresholds` lie below its floor."""
    shift, first_bucket = BUCKETS[bits]
    thresholds = [_float32(t) for t in thresholds]
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


def source_code() -> str:
    """simd_step.cpp with the rule and the codec's tables filled in."""
    encode8 = [decade_encode_constants(decade) for decade in range(DECADES)]
    for decade, (slope, offset, cap) in enumerate(encode8):  # magnitude_index8 leaves out the cap
        top = _float32(DECADE_SCALE[decade]) if decade < DECADES - 1 else 1.0
        if _float32(_float32(top * _float32(slope)) - _float32(offset)) > cap - 0.25:
            raise AssertionError(f"decade {decade}'s top encodes too close to its cap: keep the minimum")
    tops8 = DECADE_SCALE[: DECADES - 1]  # decade t holds magnitudes above t of these
    fields = {
        "RULE": "\n".join(f"        {line}" for line in rule_statements()),
        "CAUTIOUS_RULE": "\n".join(f"        {line}" for line in rule_statements(cautious=True)),
        "MAGNITUDE_BYTES8": magnitude_bytes8(),
        "PLANE_ORDER": ", ".join(str(16 * (i // 4 % 4) + 4 * (i // 16) + i % 4) for i in range(64)),
        "DECODE4": _lanes(decode_codes(torch.arange(16), 4).tolist()),
        "DECADES_BELOW8": ", ".join(map(str, counts_below_buckets(tops8, 8))),
        "DECADE_TOPS8": _lanes(tops8, pad=math.inf),
        "SLOPE8": _lanes(slope for slope, _, _ in encode8),
        "OFFSET8": _lanes(offset for _, offset, _ in encode8),
        "MIDPOINTS_BELOW4": ", ".join(map(str, counts_below_buckets(FOUR_BIT_MIDPOINTS, 4))),
        "MIDPOINTS4": _lanes(FOUR_BIT_MIDPOINTS, pad=math.inf),
        "TINY_ABSMAX": float_literal(TINY_ABSMAX),
        "RESCALE": float_literal(RESCALE),
        **{f"SHIFT{bits}": str(shift) for bits, (shift, _) in BUCKETS.items()},
        **{f"FIRST_BUCKET{bits}": str(first) for bits, (_, first) in BUCKETS.items()},
    }
    source = TEMPLATE.read_text()
    for name, value in fields.items():
        source = source.replace(f"@{name}@", value)
    return source


def _compiler() -> list[str]:
    """The compiler command: $CXX (which may carry arguments, e.g. "ccache g++"), else g++ or c++."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    compiler = shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (set CXX)")
    return [compiler]


def cache_folder() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lion_integrations"
    return Path(os.environ.get("LION_INTEGRATIONS_CACHE", default))


@functools.lru_cache(maxsize=None)
def compiled_step() -> Callable[..., int]:
    """The kernel, ``quantized_lion_step`` of simd_step.cpp, as a ctypes function (its library built
    on first use, then reused from the cache folder); a call returns nonzero when the kernel could not
    allocate its block buffers, and adds each parameter's count of non-finite gradient elements to
    its last argument."""
    source, compiler = source_code(), _compiler()
    key = hashlib.sha256("\0".join([source, *compiler, *FLAGS]).encode()).hexdigest()[:20]
    folder = cache_folder()
    path = folder / f"simd_step_{key}.so"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            source_path, built = Path(scratch) / "simd_step.cpp", Path(scratch) / "simd_step.so"
            source_path.write_text(source)
            result = subprocess.run([*compiler, *FLAGS, str(source_path), "-o", str(built)], capture_output=True, text=True)
            if result.returncode:
                errors = [line for line in result.stderr.splitlines() if "error" in line] or [result.stderr.strip()]
                raise RuntimeError(f"{shlex.join(compiler)} failed: {errors[0]}")
            os.replace(built, path)  # atomic: processes compiling at once each leave a whole file
    compiled = ctypes.CDLL(str(path))
    if not compiled.cpu_supported():
        raise RuntimeError("the CPU lacks AVX-512 F/BW/VL/DQ/VBMI")
    entry_point = compiled.quantized_lion_step
    entry_point.restype = ctypes.c_int
    entry_point.argtypes = (
        [ctypes.c_int] + [ctypes.POINTER(ctypes.c_void_p)] * 4 + [ctypes.POINTER(ctypes.c_int64)] * 2
        + [ctypes.c_int64, ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 4
        + [ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
    )
    return entry_point


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None when the AVX-512 kernel can run here, else why not."""
    if os.environ.get("LION_INTEGRATIONS_SIMD", "1") == "0":
        return "disabled by LION_INTEGRATIONS_SIMD=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    try:
        compiled_step()
    except Exception as error:  # no compiler, a failed build, an unwritable cache, a CPU without AVX-512
        return f"the AVX-512 kernel is unavailable: {error}"
    return None


def applies(param: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether the kernel steps this parameter: fp32 parameter and gradient on the CPU."""
    return (
        param.device.type == grad.device.type == "cpu"
        and param.dtype == grad.dtype == torch.float32
        and unavailable_reason() is None
    )


def step_(
    params, grads, codes, absmaxes, coefficients, *, bits: int, block_size: int, cautious: bool = False
) -> list[int]:
    """One step, in place, of contiguous (rows, cols) fp32 parameters with their gradients, codes and
    absmax (contiguous, in the codec's row layout), all of one param group, in one kernel call
    (`cautious`: the masked rule, with `coefficients.step_size` the cautious step size of all).
    Returns, per parameter, how many gradient elements were NaN or inf (and skipped)."""
    count = len(params)
    if not count:
        return []
    skipped = (ctypes.c_int64 * count)()

    def pointers(tensors):
        return (ctypes.c_void_p * count)(*(tensor.data_ptr() for tensor in tensors))

    def sizes(dim):
        return (ctypes.c_int64 * count)(*(param.shape[dim] for param in params))

    failed = compiled_step()(
        count, pointers(params), pointers(grads), pointers(codes), pointers(absmaxes), sizes(0), sizes(1),
        block_size, bits, int(cautious), coefficients.step_size, coefficients.update_weight, coefficients.momentum_weight,
        coefficients.decay, torch.get_num_threads(), skipped,
    )
    if failed:
        raise MemoryError("lion_integrations: the AVX-512 quantized step could not allocate its block buffers")
    return list(skipped)
