"""Counting the bytes a rank sends, from the collectives it actually issues.

`count_collectives()` wraps the `torch.distributed` collectives called from Python (those the vote
issues) and records each call; `counting_allreduce_hook` is DDP's own gradient all-reduce (torch's
``default_hooks.allreduce_hook``) with the same record, since DDP issues it from C++.

A record's `bytes_sent` is what one rank sends under the bandwidth-optimal ring algorithms, for a
tensor of n bytes on this rank and W ranks: all-reduce 2(W-1)/W x n; all-gather (W-1) x n;
reduce-scatter (W-1)/W x n; broadcast n.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

SENT_FACTORS = {
    "all_reduce": lambda world: 2 * (world - 1) / world,
    "all_gather": lambda world: world - 1,
    "all_gather_into_tensor": lambda world: world - 1,
    "all_gather_single": lambda world: world - 1,
    "reduce_scatter_tensor": lambda world: (world - 1) / world,
    "broadcast": lambda world: 1.0,
}


@dataclass(frozen=True)
class CollectiveCall:
    """One collective: its name, this rank's tensor bytes (the input of an all-gather), the world size."""

    name: str
    tensor_bytes: int
    world_size: int

    @property
    def bytes_sent(self) -> float:
        return self.tensor_bytes * SENT_FACTORS[self.name](self.world_size) if self.world_size > 1 else 0.0


@dataclass
class CollectiveLog:
    calls: list[CollectiveCall] = field(default_factory=list)

    def record(self, name: str, tensor: torch.Tensor, group=None) -> None:
        self.calls.append(CollectiveCall(name, tensor.numel() * tensor.element_size(), dist.get_world_size(group)))

    @property
    def bytes_sent(self) -> float:
        return sum(call.bytes_sent for call in self.calls)

    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    def clear(self) -> None:
        self.calls.clear()


def _input_tensor(name: str, args, kwargs) -> torch.Tensor:
    if name in ("all_gather_into_tensor", "all_gather_single"):  # (output, input)
        return kwargs.get("input_tensor", args[1] if len(args) > 1 else None)
    if name == "all_gather":  # (tensor_list, tensor)
        return kwargs.get("tensor", args[1] if len(args) > 1 else None)
    if name == "reduce_scatter_tensor":  # (output, input)
        return kwargs.get("input", args[1] if len(args) > 1 else None)
    return kwargs.get("tensor", args[0] if args else None)


@contextlib.contextmanager
def count_collectives(log: CollectiveLog | None = None):
    """Record every collective of `SENT_FACTORS` called through ``torch.distributed`` in the block;
    yields the `CollectiveLog`."""
    log = CollectiveLog() if log is None else log
    originals = {name: getattr(dist, name) for name in SENT_FACTORS if hasattr(dist, name)}

    def counting(name, original):
        def call(*args, **kwargs):
            log.record(name, _input_tensor(name, args, kwargs), kwargs.get("group"))
            return original(*args, **kwargs)

        return call

    for name, original in originals.items():
        setattr(dist, name, counting(name, original))
    try:
        yield log
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def counting_allreduce_hook(log: CollectiveLog):
    """DDP's default gradient all-reduce as a communication hook that records each bucket in `log`."""

    def hook(process_group, bucket):
        log.record("all_reduce", bucket.buffer(), process_group)
        return default_hooks.allreduce_hook(process_group, bucket)

    return hook
