"""DTensor plumbing (FSDP2): the rule is elementwise, so every path runs it on the shard a rank holds."""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
except ImportError:  # torch built without distributed: isinstance(x, ()) is always False
    DTensor, Replicate, Shard, distribute_tensor = (), (), (), None

__all__ = ["DTensor", "Replicate", "Shard", "distribute_tensor", "local_shard"]


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this rank holds: a DTensor's local shard, or a plain tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
