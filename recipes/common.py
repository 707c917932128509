"""Helpers every recipe may share; torch and lion_integrations only, so a recipe needs no framework
it does not use itself (the Lightning recipe runs without transformers)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from lion_integrations import Lion
from lion_integrations.fused import MIN_FUSED_NUMEL
from lion_integrations.optimizer import weight_store
from lion_integrations.rule import LOW_PRECISION_DTYPES

# What each store of bf16/fp16 weights (`lion_integrations.optimizer.weight_store`) does with an update.
WEIGHT_STORE_MEANINGS = {
    "kahan": "Kahan summation, the rounding error of each new weight kept in state 'kahan_comp' (2 bytes "
    "per parameter) and added back at the next step: small updates add up",
    "stochastic": "stochastic rounding, each new weight rounded up or down at random, unbiased; no buffer",
    "nearest": "each new weight rounded to nearest: an update below half the weight's spacing is lost",
}


def show_lion_logs() -> None:
    """WARNING and above from every library, and lion_integrations' INFO lines (which optimizer a
    Trainer built, and with which arguments)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lion_integrations").setLevel(logging.INFO)


def require_datasets():
    """The `datasets` module, which `--dataset_name` needs; exits with the install command without it."""
    try:
        import datasets
    except ImportError:
        raise SystemExit("--dataset_name needs the `datasets` package: pip install datasets") from None
    return datasets


def warm_up_lion(device: torch.device) -> None:
    """One Lion step on scratch tensors shaped like a model's (1-D and 2-D, requires_grad, each large
    enough to take the fused path), so the fused path's one-time torch.compile is not timed as training."""
    side = math.isqrt(MIN_FUSED_NUMEL)
    scratch = [torch.zeros(MIN_FUSED_NUMEL, device=device, requires_grad=True),
               torch.zeros(side, side, device=device, requires_grad=True)]
    for tensor in scratch:
        tensor.grad = torch.ones_like(tensor)
    Lion(scratch).step()


def interleaved_seconds(functions: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Fastest time of each function over `rounds` rounds that call every function once, in turn, by
    `clock` (wall time by default; `time.process_time` counts CPU time, for work on one thread).

    On a shared machine other jobs slow some calls down; interleaving spreads that over every
    contender alike, and the minimum keeps the undisturbed time, so ratios of these are stable.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = clock()
            function()
            best[name] = min(best[name], clock() - start)
    return best


def weight_stores(optimizer: torch.optim.Optimizer) -> list[str]:
    """How `optimizer` stores the weights it steps, one entry per kind, in parameter order: the dtype
    ('float32'), and for bf16/fp16 weights the store too ('bfloat16 kahan', see WEIGHT_STORE_MEANINGS).
    Optimizers without Lion's kahan_sum and stochastic_rounding options round to nearest."""
    kinds = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            dtype = str(param.dtype).removeprefix("torch.")
            if param.dtype in LOW_PRECISION_DTYPES:
                kahan_sum, stochastic_rounding = group.get("kahan_sum", False), group.get("stochastic_rounding", False)
                dtype = f"{dtype} {weight_store(param.dtype, kahan_sum, stochastic_rounding)}"
            kinds[dtype] = None
    return list(kinds)


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


@dataclass(frozen=True)
class Column:
    """A column of a comparison table: `title` over `value(row)` in format `spec` (e.g. ".3f"),
    `width` characters, aligned by `align` ("<" for text, ">" for numbers)."""

    title: str
    width: int
    value: Callable[[dict], Any]
    spec: str = ""
    align: str = ">"

    def header(self) -> str:
        return f"{self.title:{self.align}{self.width}}"

    def cell(self, row: dict) -> str:
        return f"{self.value(row):{self.align}{self.width}{self.spec}}"


def format_table(rows: list[dict], columns: tuple[Column, ...]) -> str:
    """A fixed-width text table: the header, a rule as wide, and a line per row."""
    header = "".join(column.header() for column in columns)
    lines = ["".join(column.cell(row) for column in columns) for row in rows]
    return "\n".join([header, "-" * len(header), *lines])
