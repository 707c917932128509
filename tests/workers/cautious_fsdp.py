"""Worker for tests/test_cautious.py: cautious Lion and Lion8bit under FSDP2 (2 CPU ranks, gloo).

    torchrun --nproc-per-node=2 cautious_fsdp.py REPORT.json

A fully_shard'ed model against an unsharded replica stepped with the all-reduced gradient: equal
bit for bit only if the cautious rescaling uses the kept fraction of the whole parameter, so the
report also says whether the two shards of a parameter kept different fractions (they must, for
the test to mean anything). Rank 0 writes REPORT.json.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from lion_integrations import Lion, Lion8bit
from lion_integrations.quantization import dequantize_blockwise
from lion_integrations.rule import kept_count
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 8))


def local_momentum(optimizer, param) -> torch.Tensor:
    state = optimizer.state[param]
    if "exp_avg" in state:
        return state["exp_avg"].to_local()
    group = optimizer.param_groups[0]
    return dequantize_blockwise(state["exp_avg_codes"].to_local(), state["exp_avg_absmax"].to_local(),
                                param.to_local().shape, group["bits"], group["block_size"])


def run(cls, options: dict, rank: int, world: int, mesh) -> dict:
    replica = make_model()
    model = copy.deepcopy(replica)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = cls(model.parameters(), lr=1e-2, weight_decay=0.1, cautious=True, **options)
    reference = cls(replica.parameters(), lr=1e-2, weight_decay=0.1, cautious=True, **options)
    fractions = []
    for step in range(6):
        inputs = torch.randn(8, 64, generator=torch.Generator().manual_seed(100 * step + rank))
        for net, opt in ((model, optimizer), (replica, reference)):
            opt.zero_grad()
            net(inputs).pow(2).mean().backward()
        for param in replica.parameters():
            dist.all_reduce(param.grad)
            param.grad /= world
        first = next(model.parameters())
        if step:  # the fraction this rank's shard of the first weight keeps
            fractions.append(kept_count(first.grad.to_local(), local_momentum(optimizer, first), 0.1)
                             / first.to_local().numel())
        optimizer.step()
        reference.step()
    full = [p.full_tensor() if isinstance(p, DTensor) else p for p in model.parameters()]
    gathered = [None] * world
    dist.all_gather_object(gathered, fractions)
    return {
        "max_diff_vs_replica": max(float((p - q).abs().max()) for p, q in zip(full, replica.parameters())),
        "shard_fractions_differ": any(a != b for a, b in zip(*gathered)),
        "quantized": "exp_avg_codes" in optimizer.state[next(model.parameters())],
    }


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    report = {
        "Lion": run(Lion, dict(fused=False), rank, world, mesh),
        "Lion8bit": run(Lion8bit, dict(min_quantized_size=1024, fused=False), rank, world, mesh),
    }
    if rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    dist.barrier()
    exit_now()


if __name__ == "__main__":
    main()
