"""Cautious masking's per-parameter step sizes: the kept fraction of each WHOLE parameter.

`rule.lion_direction(cautious=True)` masks the update elementwise; the rescaling needs how many
elements of the whole parameter were kept (`rule.cautious_step_size`). A DTensor parameter (FSDP2)
holds a shard per rank, so its shards' counts are summed over the mesh dimensions it is sharded on
(one small all-reduce per mesh and sharding) before the step sizes are taken.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist

from .rule import cautious_step_size
from .sharding import DTensor


def whole_parameter_counts(params, counts: list[int]) -> list[int]:
    """`counts` (one per parameter, of its local shard) summed over the shards of each sharded
    DTensor in `params`. Collective for sharded DTensors: every rank of their meshes must call it
    with the same parameters in the same order."""
    counts = list(counts)
    sharded = defaultdict(list)
    for index, param in enumerate(params):
        if isinstance(param, DTensor):
            dims = tuple(dim for dim, placement in enumerate(param.placements) if placement.is_shard())
            if dims:
                sharded[(id(param.device_mesh), dims)].append(index)
    for (_, dims), indices in sharded.items():
        mesh = params[indices[0]].device_mesh
        totals = torch.tensor([counts[i] for i in indices], dtype=torch.int64, device=mesh.device_type)
        for dim in dims:
            dist.all_reduce(totals, group=mesh.get_group(dim))
        for index, total in zip(indices, totals.tolist()):
            counts[index] = total
    return counts


def cautious_step_sizes(params, local_counts: list[int], step_size) -> list:
    """The cautious step size of each parameter in `params` from its shard's kept count."""
    counts = whole_parameter_counts(params, local_counts)
    return [cautious_step_size(step_size, kept, param.numel()) for kept, param in zip(counts, params)]
