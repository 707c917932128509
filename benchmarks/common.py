"""Shared helpers for the benchmarks: step timing, the memory-bandwidth floor, state size, tables and plots.

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


def state_bytes_per_param(optimizer: torch.optim.Optimizer, params) -> float:
    """Bytes of optimizer state (every tensor in `optimizer.state`, nested dicts too) per parameter."""
    total = 0
    for param in params:
        for value in optimizer.state[param].values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
            elif isinstance(value, dict):  # bitsandbytes nests its quantized state
                total += sum(v.numel() * v.element_size() for v in value.values() if isinstance(v, torch.Tensor))
    return total / sum(p.numel() for p in params)


def speed_and_memory_plot(path, title: str, rows: list[tuple[str, float | None, float | None]], ratio_label: str) -> None:
    """Two bar panels, one bar per contender: a time ratio (`ratio_label`) and state bytes/param."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _, _ in rows]
    figure, (speed_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.6), sharey=True)
    for axis, values, label in ((speed_axis, [r[1] for r in rows], ratio_label),
                                (memory_axis, [r[2] for r in rows], "optimizer state, bytes/param")):
        bars = axis.barh(names, [v or 0.0 for v in values], color="tab:blue")
        for bar, value in zip(bars, values):
            axis.annotate("n/a" if value is None else f"{value:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                          xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        axis.set_xlabel(label)
        axis.grid(axis="x", alpha=0.3)
    speed_axis.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    speed_axis.invert_yaxis()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_speed_report(output_dir, stem: str, report: str, title: str, results: dict, floor: float, ratio_label: str) -> None:
    """Print `report` and write it to output_dir/stem.md, and the bars of `results` ({name: (step
    seconds, state bytes/param), or why it has none}; times as ratios to `floor`) to output_dir/stem.png."""
    print(report)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.md").write_text(report + "\n")
    rows = [(name, r[0] / floor, r[1]) if isinstance(r, tuple) else (name, None, None) for name, r in results.items()]
    speed_and_memory_plot(output_dir / f"{stem}.png", title, rows, ratio_label)


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
