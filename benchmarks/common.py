"""Shared measurement helpers for the benchmarks: step timing and the memory-bandwidth floor.

Every number a benchmark prints is a ratio of two times measured in the same run, so results
carry over between machines: a step's time against the memory floor (the bytes a step must move
divided by the in-place bandwidth of this machine), and against peer optimizers.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

MIB = 2**20


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `function()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def inplace_bandwidth(numel: int, repeats: int = 9) -> float:
    """Bytes per second of `a += b` over fp32 buffers of `numel` elements (reads a, b; writes a)."""
    a, b = torch.randn(numel), torch.randn(numel)
    seconds = median_seconds(lambda: a.add_(b, alpha=1e-7), repeats)
    return 3 * 4 * numel / seconds


def make_params(total: int, chunk: int = 1 << 20, dtype=torch.float32, seed: int = 0):
    """Parameters of `chunk` elements each (1024x1024 matrices by default), about `total` in all, with grads."""
    generator = torch.Generator().manual_seed(seed)
    side = int(chunk**0.5)
    params = []
    for _ in range(max(1, total // chunk)):
        param = torch.nn.Parameter(torch.randn(side, chunk // side, generator=generator).to(dtype))
        param.grad = torch.randn(param.shape, generator=generator).to(dtype)
        params.append(param)
    return params


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def machine_line() -> str:
    """Where and with what a result was measured, for the reports' headers."""
    import datetime
    import os
    import platform

    return (
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
