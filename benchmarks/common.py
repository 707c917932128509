"""Shared helpers for the benchmarks: arguments, step timing, the memory-bandwidth floor, state size,
the AdamW-to-Lion grids, tables, reports and plots.

Every number a benchmark prints is a ratio of two times measured in the same run, so results
carry over between machines: a step's time against the memory floor (the bytes a step must move
divided by the in-place bandwidth of this machine), and against peer optimizers. Contenders and the
bandwidth probe are timed in interleaved rounds, keeping each one's fastest time (`interleaved_seconds`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

import lion_integrations
from lion_integrations.hparams import from_adamw, param_groups

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `recipes`
from recipes.common import interleaved_seconds, state_bytes_per_param  # noqa: E402

MIB = 2**20
LION_BYTES_PER_PARAM = 5 * 4  # an fp32 Lion step reads p, g, m and writes p, m
FLOOR = "in-place add (bandwidth probe)"
PAPER_RATIOS = (3.0, 10.0)  # Chen et al. 2023: Lion's lr 3-10x below AdamW's, weight decay 3-10x above


def arguments(description: str, quick_help: str) -> argparse.ArgumentParser:
    """A parser with every benchmark's options: --quick (`quick_help` says what it cuts) and --output-dir."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    return parser


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device: where the parameters live ("cpu", the default, or "cuda"; on CUDA the fused paths are
    torch.compile's Triton kernels)."""
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"),
                        help="cpu (default) or cuda: where parameters, gradients and state live")


def synchronized(function: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`function`, then a wait for the device to finish its queued work (CUDA runs kernels asynchronously)."""
    if device.type != "cuda":
        return function

    def run() -> None:
        function()
        torch.cuda.synchronize(device)

    return run


def inplace_add(numel: int, device: torch.device = torch.device("cpu")) -> tuple[Callable[[], object], int]:
    """(`a += b` over fp32 buffers of `numel` elements on `device`, the bytes it moves: reads a, b; writes a)."""
    a, b = torch.randn(numel, device=device), torch.randn(numel, device=device)
    return (lambda: a.add_(b, alpha=1e-7)), 3 * 4 * numel


def make_params(total: int, chunk: int = 1 << 20, dtype=torch.float32, seed: int = 0,
                device: torch.device = torch.device("cpu")):
    """Parameters of `chunk` elements each (1024x1024 matrices by default), about `total` in all, with
    grads, on `device`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    side = int(chunk**0.5)
    params = []
    for _ in range(max(1, total // chunk)):
        param = torch.nn.Parameter(torch.randn(side, chunk // side, generator=generator, device=device).to(dtype))
        param.grad = torch.randn(param.shape, generator=generator, device=device).to(dtype)
        params.append(param)
    return params


def measure_steps(contenders: list[tuple[str, Callable | str]], total: int, rounds: int,
                  device: torch.device = torch.device("cpu")) -> tuple[dict, float]:
    """Time each contender's step on its own `make_params(total)` on `device`, in interleaved rounds
    with the bandwidth probe (each call waits for the device: `synchronized`).

    `contenders`: (name, factory building an optimizer from parameters, or the reason there is none).
    Returns (results, floor): results maps each name, in the contenders' order, to (fastest step
    seconds, state bytes/param) or the reason it has none; floor is the fp32 Lion memory floor in
    seconds, `LION_BYTES_PER_PARAM` per parameter at the probe's bandwidth.
    """
    results, steps, states = {}, {}, {}
    for name, factory in contenders:
        if isinstance(factory, str):
            results[name] = factory
            continue
        try:
            params = make_params(total, device=device)
            optimizer = factory(params)
            optimizer.step()
            steps[name] = synchronized(optimizer.step, device)
            states[name] = state_bytes_per_param(optimizer, params)
        except Exception as error:
            results[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    add, add_bytes = inplace_add(total, device)
    timed = interleaved_seconds({FLOOR: synchronized(add, device), **steps}, rounds)
    floor = LION_BYTES_PER_PARAM * total / (add_bytes / timed.pop(FLOOR))
    results.update({name: (seconds, states[name]) for name, seconds in timed.items()})
    return {name: results[name] for name, _ in contenders}, floor


def ratio_table(header: list[str], results: dict, cells: Callable[[float], list[str]],
                note: Callable[[str], str] = lambda name: "") -> str:
    """A markdown table of `measure_steps` results, a row per contender: name, `cells(step seconds)`,
    state bytes/param and `note(name)`; a contender without a time gets "-" cells and its reason as the note."""
    rows = []
    for name, result in results.items():
        if isinstance(result, tuple):
            seconds, state = result
            rows.append([name, *cells(seconds), f"{state:.3f}", note(name)])
        else:
            rows.append([name, *["-"] * (len(header) - 2), result])
    return markdown_table(header, rows)


def build_optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float,
                    **lion_options) -> torch.optim.Optimizer:
    """torch's AdamW for "AdamW", else the lion_integrations class `name` with `lion_options`; no
    weight decay on norms and biases (`hparams.param_groups`)."""
    groups = param_groups(model, weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr)
    return getattr(lion_integrations, name)(groups, lr=lr, **lion_options)


def lion_grid(adamw_points: list[tuple[float, float]], ratios: tuple[float, ...] = PAPER_RATIOS) -> list[tuple[float, float]]:
    """Lion's (lr, weight decay) points: each AdamW point translated by each ratio r, (lr / r, wd * r)."""
    points = [from_adamw(lr, weight_decay, ratio) for lr, weight_decay in adamw_points for ratio in ratios]
    return [(point["lr"], point["weight_decay"]) for point in points]


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path) -> None:
    """Lay `figure` out, write it to `path` (PNG at 120 dpi) and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)


def write_report(output_dir: Path, stem: str, report: str) -> None:
    """Print `report` and write it to output_dir/stem.md."""
    print(report)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.md").write_text(report + "\n")


def speed_and_memory_plot(path, title: str, rows: list[tuple[str, float | None, float | None]], ratio_label: str) -> None:
    """Two bar panels, one bar per contender: a time ratio (`ratio_label`) and state bytes/param."""
    plt = pyplot()
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
    save_figure(figure, path)


def speed_report_head(title: str, params: int, floor_label: str, rounds: int,
                      device: torch.device = torch.device("cpu")) -> list[str]:
    """A speed report's first lines: `title` with the size and the machine, then how the floor and the
    step times were measured."""
    return [
        f"# {title}, {params / 1e6:.0f}M fp32 parameters ({machine_line(device)})",
        "",
        f"{floor_label}: {LION_BYTES_PER_PARAM} bytes/param at the in-place bandwidth measured in this run; "
        f"fastest of {rounds} interleaved rounds each.",
        "",
    ]


def write_speed_report(output_dir, stem: str, report: str, title: str, results: dict, floor: float, ratio_label: str) -> None:
    """Print `report` and write it to output_dir/stem.md, and the bars of `results` ({name: (step
    seconds, state bytes/param), or why it has none}; times as ratios to `floor`) to output_dir/stem.png."""
    write_report(output_dir, stem, report)
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


def machine_line(device: torch.device = torch.device("cpu")) -> str:
    """Where and with what a result was measured, for the reports' headers (the GPU's name on CUDA)."""
    import datetime
    import os
    import platform

    line = (
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    return f"{line}, {torch.cuda.get_device_name(device)}" if device.type == "cuda" else line
