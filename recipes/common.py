"""Helpers every recipe may share; torch and lion_integrations only, so a recipe needs no framework
it does not use itself (the Lightning recipe runs without transformers)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from lion_integrations import Lion


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
    """One Lion step on scratch tensors shaped like a model's (1-D and 2-D, requires_grad), so the
    fused path's one-time torch.compile is not timed as training."""
    scratch = [torch.zeros(8, device=device, requires_grad=True), torch.zeros(4, 8, device=device, requires_grad=True)]
    for tensor in scratch:
        tensor.grad = torch.ones_like(tensor)
    Lion(scratch).step()


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
