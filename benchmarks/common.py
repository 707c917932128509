"""Shared measurement helpers for the benchmarks: step timing and the memory-bandwidth floor.

Every number a benchmark prints is a ratio of two times measured in the same run, so results
carry over between machines: a step's time against the memory floor (the bytes a step must move
divided by the in-place bandwidth of this machine), and against peer optimizers. Contenders and the
bandwidth probe are timed in interleaved rounds, keeping each one's fastest time (`interleaved_seconds`).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

MIB = 2**20


def interleaved_seconds(functions: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Fastest wall time of each function over `rounds` rounds that call every function once, in turn.

    On a shared machine other jobs slow some calls down; interleaving spreads that over every
    contender alike, and the minimum keeps the undisturbed time, so ratios of these are stable.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def inplace_add(numel: int) -> tuple[Callable[[], object], int]:
    """(`a += b` over fp32 buffers of `numel` elements, the bytes it moves: reads a, b; writes a)."""
    a, b = torch.randn(numel), torch.randn(numel)
    return (lambda: a.add_(b, alpha=1e-7)), 3 * 4 * numel


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
