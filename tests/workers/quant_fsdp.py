"""Worker for tests/quantization/test_distributed.py: Lion8bit/Lion4bit under FSDP2 (gloo, CPU, torchrun).

    torchrun --nproc-per-node=2 quant_fsdp.py train BITS REPORT.json
    torchrun --nproc-per-node=N quant_fsdp.py reshard PHASE DIR REPORT.json

`train`: a fully_shard'ed model against an unsharded replica stepped with the all-reduced
gradient; checks that the state is built on local shards (decided on the global size), that the
sharded run equals the replica bit for bit, and DCP's get/set_optimizer_state_dict, full and sharded.

`reshard`: PHASE `save` (2 ranks) trains 6 steps, saves a DCP checkpoint, trains 6 more and records
the final weights; `load1` (1 rank) loads it, checks the state equals the one saved, saves it again
and trains on; `resume2` (2 ranks) loads that and trains the last 6 steps, which must reproduce
`save`'s final weights exactly. Each phase writes REPORT.json (rank 0) with what it measured.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from lion_integrations import Lion4bit, Lion8bit
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)
CLASSES = {8: Lion8bit, 4: Lion4bit}
OPTIONS = dict(lr=1e-3, weight_decay=0.1, min_quantized_size=4096)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # (96, 64): 6144 elements, 3072 per shard: quantized only if decided on the global size.
    # (40, 100): 4000 < 4096: full precision. (5, 1000): 5 rows over 2 ranks (3 and 2).
    return nn.Sequential(
        nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 40), nn.Tanh(), nn.Linear(40, 100), nn.Tanh(),
        nn.Linear(100, 1000, bias=False), nn.Tanh(), nn.Linear(1000, 5),
    )


def batch(step: int, rank: int):
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 64, generator=generator)


def loss_of(model, inputs):
    return model(inputs).pow(2).mean()


def shard(model: nn.Module, mesh) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def states_equal(first: dict, second: dict) -> bool:
    """Per-parameter optimizer states (FQN -> {key: tensor}) equal, comparing full tensors."""
    if first.keys() != second.keys():
        return False
    for name, entry in first.items():
        if entry.keys() != second[name].keys():
            return False
        for key, value in entry.items():
            if not torch.equal(full(value), full(second[name][key])):
                return False
    return True


def train(bits: int, report_path: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    replica = make_model()
    model = shard(copy.deepcopy(replica), mesh)
    optimizer = CLASSES[bits](model.parameters(), **OPTIONS)
    reference = CLASSES[bits](replica.parameters(), **OPTIONS)
    for step in range(8):
        inputs = batch(step, rank)
        optimizer.zero_grad()
        loss_of(model, inputs).backward()
        optimizer.step()
        reference.zero_grad()
        loss_of(replica, inputs).backward()
        for param in replica.parameters():
            dist.all_reduce(param.grad)
            param.grad /= world
        reference.step()

    report = {"world": world}
    params = list(model.parameters())
    report["max_diff_vs_replica"] = max(
        float((full(p) - q).abs().max()) for p, q in zip(params, replica.parameters())
    )
    report["quantized"] = ["exp_avg_codes" in optimizer.state[p] for p in params]
    report["shapes"] = [list(p.shape) for p in params]
    local = global_ = 0
    for param in params:
        for value in optimizer.state[param].values():
            local += value.to_local().numel() * value.element_size()
            global_ += value.numel() * value.element_size()
    report["local_state_fraction"] = local / global_
    report["state_is_dtensor"] = all(
        isinstance(v, DTensor) for p in params for v in optimizer.state[p].values()
    )
    # The sharded state, gathered, is the unsharded optimizer's state: rows encode themselves.
    full_options = StateDictOptions(full_state_dict=True)
    full_state = get_optimizer_state_dict(model, optimizer, options=full_options)
    reference_state = reference.state_dict()["state"]
    names = [name for name, _ in model.named_parameters()]
    report["full_state_equals_replica"] = all(
        all(torch.equal(full_state["state"][name][key], reference_state[index][key]) for key in reference_state[index])
        for index, name in enumerate(names)
    )
    # Sharded and full state dicts load into fresh optimizers and reproduce the state.
    sharded_state = get_optimizer_state_dict(model, optimizer)
    report["sharded_values_are_dtensors"] = all(
        isinstance(v, DTensor) for entry in sharded_state["state"].values() for v in entry.values()
    )
    for label, state_dict, options in (("sharded", sharded_state, None), ("full", full_state, full_options)):
        fresh_model = shard(make_model(), mesh)
        set_model_state_dict(fresh_model, get_model_state_dict(model))
        fresh = CLASSES[bits](fresh_model.parameters(), **OPTIONS)
        set_optimizer_state_dict(fresh_model, fresh, copy.deepcopy(state_dict), options=options)
        report[f"{label}_round_trip"] = states_equal(
            get_optimizer_state_dict(fresh_model, fresh)["state"], sharded_state["state"]
        )
    # The last restored copy trains on exactly like the original.
    for step in range(8, 10):
        for m, o in ((model, optimizer), (fresh_model, fresh)):
            o.zero_grad()
            loss_of(m, batch(step, rank)).backward()
            o.step()
    report["continues_identically"] = all(
        torch.equal(full(p), full(q)) for p, q in zip(model.parameters(), fresh_model.parameters())
    )
    if rank == 0:
        Path(report_path).write_text(json.dumps(report))


def reshard(phase: str, directory: str, report_path: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    root = Path(directory)
    model = shard(make_model(), mesh)
    optimizer = Lion8bit(model.parameters(), **OPTIONS)
    report = {"world": world, "phase": phase}

    def train_steps(start, stop, model=model, optimizer=optimizer):
        for step in range(start, stop):
            optimizer.zero_grad()
            # Every rank of every world size sees the same 2-rank data stream, split by rank.
            inputs = torch.cat([batch(step, r) for r in range(2)]).chunk(world)[rank]
            loss_of(model, inputs).backward()
            optimizer.step()

    def share_unlike_uninterrupted(model):
        """Share of weight elements that differ from the run that never stopped (at world size 2)."""
        expected = torch.load(root / "final_uninterrupted.pt", weights_only=True)
        differ = sum(int((full(p).detach() != e).sum()) for p, e in zip(model.parameters(), expected))
        return differ / sum(e.numel() for e in expected)

    def checkpoint():
        return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}

    def full_optimizer_state():
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))

    if phase == "save":
        train_steps(0, 6)
        dcp.save(checkpoint(), checkpoint_id=str(root / "step6_world2"))
        # Bytes on disk of a quantized optimizer checkpoint, on a model of large matrices.
        torch.manual_seed(1)
        large = shard(nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 512)), mesh)
        large_optimizer = Lion8bit(large.parameters(), **OPTIONS)
        large(torch.randn(4, 1024)).sum().backward()
        large_optimizer.step()
        dcp.save({"optim": get_optimizer_state_dict(large, large_optimizer)}, checkpoint_id=str(root / "optim_only"))
        full_state = full_optimizer_state()
        if rank == 0:
            torch.save(full_state, root / "step6_full_optim.pt")
        train_steps(6, 12)
        weights = [full(p).detach() for p in model.parameters()]
        if rank == 0:
            torch.save(weights, root / "final_uninterrupted.pt")
            numel = sum(p.numel() for p in large.parameters())
            disk = sum(f.stat().st_size for f in (root / "optim_only").iterdir())
            report["optimizer_bytes_per_param_on_disk"] = disk / numel
            report["quantized_dtypes"] = sorted({str(v.dtype) for e in full_state["state"].values() for v in e.values()})
    elif phase == "load1":
        state = checkpoint()
        dcp.load(state, checkpoint_id=str(root / "step6_world2"))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
        saved = torch.load(root / "step6_full_optim.pt", weights_only=True)
        report["state_equals_saved"] = states_equal(full_optimizer_state()["state"], saved["state"])
        dcp.save(checkpoint(), checkpoint_id=str(root / "step6_world1"))
        # It trains on at world size 1: gradients of the whole batch differ from the 2-rank mean only
        # by rounding, so few weights may differ from the uninterrupted run; with the momentum lost
        # (a control: the same weights, a fresh optimizer) many do.
        control = shard(make_model(), mesh)
        set_model_state_dict(control, state["model"])
        train_steps(6, 12)
        train_steps(6, 12, control, Lion8bit(control.parameters(), **OPTIONS))
        report["differ_after_resume"] = share_unlike_uninterrupted(model)
        report["differ_without_momentum"] = share_unlike_uninterrupted(control)
    elif phase == "resume2":
        state = checkpoint()
        dcp.load(state, checkpoint_id=str(root / "step6_world1"))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optim"])
        train_steps(6, 12)
        expected = torch.load(root / "final_uninterrupted.pt", weights_only=True)
        report["equals_uninterrupted"] = all(
            torch.equal(full(p).detach(), e) for p, e in zip(model.parameters(), expected)
        )
    if rank == 0:
        Path(report_path).write_text(json.dumps(report))


def main() -> None:
    dist.init_process_group("gloo")
    try:
        if sys.argv[1] == "train":
            train(int(sys.argv[2]), sys.argv[3])
        else:
            reshard(sys.argv[2], sys.argv[3], sys.argv[4])
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
