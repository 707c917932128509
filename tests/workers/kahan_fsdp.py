"""Worker for tests/test_low_precision_distributed.py: the Kahan buffer of bf16 weights under FSDP2
and torch.distributed.checkpoint (gloo, CPU, torchrun).

    torchrun --nproc-per-node=2 kahan_fsdp.py train CLASS DIR REPORT.json
    torchrun --nproc-per-node=N kahan_fsdp.py reshard PHASE DIR REPORT.json

`train` (CLASS `Lion` or `Lion8bit`): a fully_shard'ed bf16 model trains 4 steps; the report says
whether each parameter's ``kahan_comp`` is a DTensor placed like it (placements, local shape,
dtype). A DCP checkpoint is saved, the model trains 4 steps more; a fresh model and optimizer load
the checkpoint and train the same 4 steps, which must end on the same weights and state bit for
bit. A control loads it without the buffers: they come back as zeros placed like the parameters,
and the run then ends elsewhere (so the buffers hold what the exact resume needs).

`reshard`, with Lion8bit: PHASE `save` (2 ranks) trains 4 steps, saves a DCP checkpoint and the
full optimizer state, trains 4 more and records the final weights; `load1` (1 rank) loads it,
checks the state equals the one saved and saves it again; `resume2` (2 ranks) loads that and trains
the last 4 steps, which must reproduce `save`'s final weights exactly. Rank 0 writes REPORT.json.
"""

from __future__ import annotations

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

from lion_integrations import Lion, Lion8bit
from lion_integrations.state import COMPENSATION
from worker_exit import exit_now, write_report_on_rank0  # noqa: E402  (next to this script)

torch.set_num_threads(1)
CLASSES = {"Lion": Lion, "Lion8bit": Lion8bit}
# lr is below half the bf16 spacing of most weights (2**-12 near 0.1): without the buffer most
# updates would round away. The unfused paths: no compile in the worker.
OPTIONS = dict(lr=1e-4, weight_decay=0.1, kahan_sum=True, fused=False)
QUANTIZED = dict(min_quantized_size=1024, block_size=64)
STEPS = 4


def make_model() -> nn.Module:
    """bf16 weights. Lion8bit quantizes (96, 64) and (40, 96); (5, 40) splits its 5 rows 3 and 2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 40), nn.Tanh(), nn.Linear(40, 5))
    return model.to(torch.bfloat16)


def shard(model: nn.Module, mesh) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def make_optimizer(name: str, model: nn.Module):
    return CLASSES[name](model.parameters(), **OPTIONS, **(QUANTIZED if name == "Lion8bit" else {}))


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's part of step `step`'s batch; every world size sees the same 2-rank data stream."""
    parts = [torch.randn(8, 64, generator=torch.Generator().manual_seed(1000 * step + r)) for r in range(2)]
    return torch.cat(parts).chunk(world)[rank].to(torch.bfloat16)


def train_steps(model, optimizer, start: int, stop: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    for step in range(start, stop):
        optimizer.zero_grad()
        model(batch(step, rank, world)).float().pow(2).mean().backward()
        optimizer.step()


def full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def checkpoint(model, optimizer) -> dict:
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def load(model, optimizer, directory: Path, *, without_buffers: bool = False) -> None:
    state = checkpoint(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    if without_buffers:
        for entry in state["optim"]["state"].values():
            entry.pop(COMPENSATION, None)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])


def placement_of_buffers(model, optimizer) -> list[dict]:
    """For each parameter: how its Kahan buffer is placed next to it."""
    rows = []
    for param in model.parameters():
        buffer = optimizer.state[param].get(COMPENSATION)
        is_dtensor = isinstance(buffer, DTensor)
        rows.append({
            "shape": list(param.shape),
            "dtensor": is_dtensor,
            "same_placements": is_dtensor and buffer.placements == param.placements,
            "same_mesh": is_dtensor and buffer.device_mesh == param.device_mesh,
            "same_local_shape": is_dtensor and buffer.to_local().shape == param.to_local().shape,
            "dtype": str(buffer.dtype) if buffer is not None else None,
        })
    return rows


def weights_and_state(model, optimizer) -> list[torch.Tensor]:
    """Every weight and every state tensor, gathered, in parameter order."""
    tensors = []
    for param in model.parameters():
        tensors.append(full(param).detach())
        tensors += [full(value) for _, value in sorted(optimizer.state[param].items())]
    return tensors


def identical(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(first, second))


def train(name: str, directory: str, report_path: str) -> None:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    saved = Path(directory) / f"{name}_step{STEPS}"
    model = shard(make_model(), mesh)
    optimizer = make_optimizer(name, model)
    train_steps(model, optimizer, 0, STEPS)
    report = {
        "placement": placement_of_buffers(model, optimizer),
        "quantized": ["exp_avg_codes" in optimizer.state[p] for p in model.parameters()],
        "buffers_nonzero": sum(int(full(optimizer.state[p][COMPENSATION]).count_nonzero()) for p in model.parameters()),
    }
    dcp.save(checkpoint(model, optimizer), checkpoint_id=str(saved))
    train_steps(model, optimizer, STEPS, 2 * STEPS)
    uninterrupted = weights_and_state(model, optimizer)

    resumed = shard(make_model(), mesh)
    resumed_optimizer = make_optimizer(name, resumed)
    load(resumed, resumed_optimizer, saved)
    report["loaded_placement"] = placement_of_buffers(resumed, resumed_optimizer)
    train_steps(resumed, resumed_optimizer, STEPS, 2 * STEPS)
    report["resume_identical"] = identical(weights_and_state(resumed, resumed_optimizer), uninterrupted)

    control = shard(make_model(), mesh)
    control_optimizer = make_optimizer(name, control)
    load(control, control_optimizer, saved, without_buffers=True)
    report["buffers_after_load_without"] = [
        int(full(buffer).count_nonzero()) if (buffer := control_optimizer.state[p].get(COMPENSATION)) is not None else None
        for p in control.parameters()
    ]
    train_steps(control, control_optimizer, STEPS, STEPS + 1)
    report["placement_without_buffers"] = placement_of_buffers(control, control_optimizer)
    train_steps(control, control_optimizer, STEPS + 1, 2 * STEPS)
    report["resume_without_buffers_identical"] = identical(weights_and_state(control, control_optimizer), uninterrupted)
    write_report_on_rank0(report_path, report)


def reshard(phase: str, directory: str, report_path: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    root = Path(directory)
    model = shard(make_model(), mesh)
    optimizer = make_optimizer("Lion8bit", model)
    full_options = StateDictOptions(full_state_dict=True)
    report = {"world": world}
    if phase == "save":
        train_steps(model, optimizer, 0, STEPS)
        dcp.save(checkpoint(model, optimizer), checkpoint_id=str(root / "world2"))
        full_state = get_optimizer_state_dict(model, optimizer, options=full_options)
        train_steps(model, optimizer, STEPS, 2 * STEPS)
        weights = [full(p).detach() for p in model.parameters()]
        if rank == 0:
            torch.save(full_state, root / "full_optim.pt")
            torch.save(weights, root / "final_uninterrupted.pt")
    elif phase == "load1":
        load(model, optimizer, root / "world2")
        state = get_optimizer_state_dict(model, optimizer, options=full_options)["state"]
        saved = torch.load(root / "full_optim.pt", weights_only=True)["state"]
        report["buffers_saved"] = sum(COMPENSATION in entry for entry in saved.values())
        report["state_equals_saved"] = state.keys() == saved.keys() and all(
            entry.keys() == saved[name].keys() and identical(
                [entry[key] for key in sorted(entry)], [saved[name][key] for key in sorted(entry)]
            )
            for name, entry in state.items()
        )
        dcp.save(checkpoint(model, optimizer), checkpoint_id=str(root / "world1"))
    elif phase == "resume2":
        load(model, optimizer, root / "world1")
        report["placement"] = placement_of_buffers(model, optimizer)
        train_steps(model, optimizer, STEPS, 2 * STEPS)
        expected = torch.load(root / "final_uninterrupted.pt", weights_only=True)
        report["equals_uninterrupted"] = identical([full(p).detach() for p in model.parameters()], expected)
    write_report_on_rank0(report_path, report)


def main() -> None:
    dist.init_process_group("gloo")
    try:
        if sys.argv[1] == "train":
            train(*sys.argv[2:5])
        else:
            reshard(*sys.argv[2:5])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
