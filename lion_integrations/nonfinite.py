"""Skipped NaN/inf gradient elements counted inside a caller's ``torch.compile``.

An eager step reads its skipped counts on the host and warns at once (`Lion._report_nonfinite`). A
step traced into a caller's graph cannot: a host read would break the graph. There the counts are
added, in the graph, to a device tensor (`CompiledSkipTally`), and the next eager moment (an eager
step, or a read of ``optimizer.nonfinite_steps``) reads and reports them.
"""

from __future__ import annotations

from typing import Any

import torch


class CompiledSkipTally:
    """Per-parameter counts of skipped gradient elements, and of steps that skipped any, kept on
    `device` while steps run inside ``torch.compile``.

    `slots` maps each parameter's description (`optimizer.param_description`) to its slot; one more
    slot takes parameters described otherwise (renamed since), and the last counts steps.
    """

    def __init__(self, slots: dict[str, int], device: torch.device) -> None:
        self.slots = slots
        self.counts = torch.zeros(len(slots) + 2, dtype=torch.int64, device=device)
        self.pending = False

    def extend(self, names: list[str]) -> None:
        """Slots for more parameters (described by `names`), their counts zero."""
        for name in names:
            self.slots.setdefault(name, len(self.slots))
        counts = torch.zeros(len(self.slots) + 2, dtype=torch.int64, device=self.counts.device)
        counts[: len(self.counts) - 2] = self.counts[:-2]
        counts[-2:] = self.counts[-2:]
        self.counts = counts

    def add(self, skipped: list[tuple[str, Any, int]]) -> None:
        """Add a step's (parameter, skipped elements, elements), counts as ints or 0-dim tensors,
        without reading them on the host."""
        if not skipped:
            return
        device = self.counts.device
        counts = torch.stack([torch.as_tensor(count).reshape(()).to(device, torch.int64) for _, count, _ in skipped])
        slots = torch.tensor([self.slots.get(name, len(self.slots)) for name, _, _ in skipped], device=device)
        self.counts.index_add_(0, slots, counts)
        self.counts[-1] += (counts.sum() > 0).to(torch.int64)
        self.pending = True

    def drain(self) -> tuple[int, list[tuple[str, int]]]:
        """(steps that skipped elements, [(parameter, skipped elements)]) since the last drain, which
        are then zeroed; (0, []) without a host read when nothing was added."""
        if not self.pending:
            return 0, []
        values = self.counts.tolist()
        self.counts.zero_()
        self.pending = False
        names = [*sorted(self.slots, key=self.slots.__getitem__), "other parameters"]
        return values[-1], [(name, value) for name, value in zip(names, values[:-1]) if value]
