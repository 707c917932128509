"""The Lion rule as AVX-512 code, and the fp32 step built from it, for x86-64 CPUs.

`rule.lion_update_finite_` (the update rule with the non-finite policy) is run once with
`CodeWriter`, an ops table (like `rule.TENSOR_OPS`) whose operations write C statements on 16-lane
vectors instead of computing. `avx512_rule.h` wraps those statements into ``lion_rule``, which the
kernels put in their loops: `avx512_step.cpp` here (fp32 parameters and momentum: the fused CPU
step of `Lion`) and the quantized step of `quantization.simd`. So the kernels never restate the rule.

A kernel's source is compiled once with the system's C++ compiler (``$CXX``, else g++) into a
cache folder (``$LION_INTEGRATIONS_CACHE``, else ``~/.cache/lion_integrations``) and loaded with
ctypes. Where that fails, or the CPU lacks AVX-512, `unavailable_reason` says why and the step
takes another path; a failed build also warns once (a CPU without AVX-512 does not). The answer
is kept for the process, so ``LION_INTEGRATIONS_SIMD=0`` (the kernels off) must be set before the
first step.

The fp32 step reads each parameter, gradient and momentum element once and writes the parameter
and momentum once, counting NaN/inf gradient elements in the same loop: the memory floor of a
Lion step, with the non-finite check for free (the cautious rule first counts what it keeps, in
a pass of its own). Writing through raw pointers, it bumps the tensors' version counters itself,
so autograd still sees the in-place update. Its rounding is eager torch's (ATen's CPU lerp, no
fused multiply-adds but the ones written), so it agrees with the other paths bit for bit.
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
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from .rule import LionCoefficients, lion_update_finite_

RULE_TEMPLATE = Path(__file__).with_name("avx512_rule.h")
STEP_TEMPLATE = Path(__file__).with_name("avx512_step.cpp")
# -ffp-contract=off: no fused multiply-adds but the ones written, so the rounding is eager torch's.
FLAGS = ("-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
CPU_FEATURES = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
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


def float32(value: float) -> float:
    """`value` rounded to float32, as a Python float."""
    return float(torch.tensor(value, dtype=torch.float32))


def float_literal(value: float) -> str:
    """`value` rounded to float32, as an exact C float literal (hexadecimal), or +-INFINITY."""
    return f"{float32(value).hex()}f" if math.isfinite(value) else ("INFINITY" if value > 0 else "-INFINITY")


def rule_source(cpu_features: Sequence[str] = CPU_FEATURES) -> str:
    """avx512_rule.h with the rule and the CPU check (for `cpu_features`) filled in."""
    fields = {
        "RULE": "\n".join(f"        {line}" for line in rule_statements()),
        "CAUTIOUS_RULE": "\n".join(f"        {line}" for line in rule_statements(cautious=True)),
        "CPU_SUPPORTS": " && ".join(f'__builtin_cpu_supports("{feature}")' for feature in cpu_features),
    }
    source = RULE_TEMPLATE.read_text()
    for name, value in fields.items():
        source = source.replace(f"@{name}@", value)
    return source


def compiler() -> list[str]:
    """The compiler command: $CXX (which may carry arguments, e.g. "ccache g++"), else g++ or c++."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    found = shutil.which("g++") or shutil.which("c++")
    if not found:
        raise RuntimeError("no C++ compiler found (set CXX)")
    return [found]


def cache_folder() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lion_integrations"
    return Path(os.environ.get("LION_INTEGRATIONS_CACHE", default))


def load_library(name: str, source: str, cpu_features: Sequence[str] = CPU_FEATURES) -> ctypes.CDLL:
    """`source` (which starts with `rule_source(cpu_features)`) compiled into the cache folder as
    `name`_<hash>.so on first use, then loaded; raises RuntimeError when compiling fails,
    `CpuLacksFeatures` when the CPU lacks one of `cpu_features`."""
    command = [*compiler(), *FLAGS, *(f"-m{feature}" for feature in cpu_features)]
    key = hashlib.sha256("\0".join([source, *command]).encode()).hexdigest()[:20]
    folder = cache_folder()
    path = folder / f"{name}_{key}.so"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            source_path, built = Path(scratch) / f"{name}.cpp", Path(scratch) / f"{name}.so"
            source_path.write_text(source)
            result = subprocess.run([*command, str(source_path), "-o", str(built)], capture_output=True, text=True)
            if result.returncode:
                errors = [line for line in result.stderr.splitlines() if "error" in line] or [result.stderr.strip()]
                raise RuntimeError(f"{shlex.join(compiler())} failed: {errors[0]}")
            os.replace(built, path)  # atomic: processes compiling at once each leave a whole file
    library = ctypes.CDLL(str(path))
    if not library.cpu_supported():
        raise CpuLacksFeatures(f"the CPU lacks AVX-512 {'/'.join(f.removeprefix('avx512').upper() for f in cpu_features)}")
    return library


class CpuLacksFeatures(RuntimeError):
    """The kernel was built, but this CPU cannot run it."""


def kernel_unavailable_reason(load: Callable[[], object], kernel: str) -> str | None:
    """None when the kernel that `load` builds and loads (raising if it cannot) runs here, else why
    not: disabled by ``LION_INTEGRATIONS_SIMD=0``, not an x86-64 CPU, or what `load` raised. A
    failed build (no compiler, an unwritable cache...) warns, naming `kernel` and what takes its
    place; a CPU without the features does not: that is what the fallback is for."""
    if os.environ.get("LION_INTEGRATIONS_SIMD", "1") == "0":
        return "disabled by LION_INTEGRATIONS_SIMD=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    try:
        load()
    except CpuLacksFeatures as error:
        return f"the AVX-512 kernel is unavailable: {error}"
    except Exception as error:  # no compiler, a failed build, an unwritable cache
        warnings.warn(
            f"lion_integrations: the AVX-512 {kernel} could not be built ({error}); the fused path runs "
            "torch.compile's step instead (LION_INTEGRATIONS_SIMD=0 chooses that without this warning)",
            RuntimeWarning,
            stacklevel=2,
        )
        return f"the AVX-512 kernel is unavailable: {error}"
    return None


@functools.lru_cache(maxsize=None)
def compiled_step():
    """``lion_step`` of avx512_step.cpp as a ctypes function (its library built on first use)."""
    library = load_library("avx512_step", rule_source() + STEP_TEMPLATE.read_text())
    entry_point = library.lion_step
    entry_point.restype = None
    entry_point.argtypes = (
        [ctypes.c_int] + [ctypes.POINTER(ctypes.c_void_p)] * 3 + [ctypes.POINTER(ctypes.c_int64)]
        + [ctypes.POINTER(ctypes.c_float), ctypes.c_int] + [ctypes.c_float] * 3
        + [ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
    )
    return entry_point


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """None when the fp32 AVX-512 step can run here, else why not."""
    return kernel_unavailable_reason(compiled_step, "fp32 step")


def in_cpu_memory(*tensors: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Whether `tensors` are plain tensors (or parameters) of `dtype` whose memory a kernel can address
    on the CPU: not a tensor subclass (a DTensor, a FakeTensor without storage...)."""
    return all(
        type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device.type == "cpu" and tensor.dtype == dtype
        for tensor in tensors
    )


def fits(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor) -> bool:
    """Whether the fp32 kernel can step this parameter: fp32 parameter, gradient and momentum in CPU
    memory (`in_cpu_memory`), parameter and momentum contiguous (a strided gradient is copied)."""
    return in_cpu_memory(param, grad, exp_avg) and param.is_contiguous() and exp_avg.is_contiguous()


def applies(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor) -> bool:
    """`fits`, and the kernel runs on this machine."""
    return fits(param, grad, exp_avg) and unavailable_reason() is None


def pointer_array(tensors) -> ctypes.Array:
    """The data pointers of `tensors`, as a C array for a kernel's arguments."""
    return (ctypes.c_void_p * len(tensors))(*(tensor.data_ptr() for tensor in tensors))


def written(*tensor_lists) -> None:
    """Tell autograd that a kernel wrote the tensors of `tensor_lists` in place (their version
    counters go up, as an in-place torch op's do), so a graph that saved them raises on backward."""
    torch.autograd.graph.increment_version([tensor for tensors in tensor_lists for tensor in tensors])


def step_(params, grads, exp_avgs, coefficients: LionCoefficients, *, step_sizes=None, cautious: bool = False) -> list[int]:
    """One step, in place, of fp32 parameters and momenta (`applies`) with their gradients, all in one
    kernel call. `step_sizes`: each parameter's step size (the cautious rule's own), else
    `coefficients.step_size` for all. Returns, per parameter, how many gradient elements were NaN or
    inf (those elements keep their parameter and momentum)."""
    count = len(params)
    if not count:
        return []
    grads = [grad.contiguous() for grad in grads]
    skipped = (ctypes.c_int64 * count)()
    step_sizes = [coefficients.step_size] * count if step_sizes is None else step_sizes
    compiled_step()(
        count, pointer_array(params), pointer_array(grads), pointer_array(exp_avgs),
        (ctypes.c_int64 * count)(*(param.numel() for param in params)),
        (ctypes.c_float * count)(*(float(step_size) for step_size in step_sizes)), int(cautious),
        coefficients.update_weight, coefficients.momentum_weight, coefficients.decay, torch.get_num_threads(),
        skipped,
    )
    written(params, exp_avgs)
    return list(skipped)
