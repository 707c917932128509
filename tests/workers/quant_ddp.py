"""Worker for tests/quantization/test_distributed.py: Lion8bit/Lion4bit under data parallelism (gloo, CPU).

    torchrun --nproc-per-node=2 quant_ddp.py accelerate BITS REPORT.json
    torchrun --nproc-per-node=2 quant_ddp.py zero BITS DIR REPORT.json

`accelerate`: Accelerate's DDP (Accelerator(cpu=True) under torchrun) prepares a model, Lion8bit or
Lion4bit and a sharded data loader; after training, weights and quantized states must be identical
on every rank, and equal a single-process run on the same global batches within fp32 rounding.

`zero`: torch's ZeroRedundancyOptimizer with our class as `optimizer_class`, against plain DDP with
the same optimizer: identical weights; then consolidate_state_dict/state_dict/load_state_dict into a
fresh ZeroRedundancyOptimizer continues identically. Rank 0 writes REPORT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lion_integrations import Lion4bit, Lion8bit
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)
CLASSES = {8: Lion8bit, 4: Lion4bit}
OPTIONS = dict(lr=1e-3, weight_decay=0.1, min_quantized_size=4096)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 160), nn.Tanh(), nn.Linear(160, 64), nn.Tanh(), nn.Linear(64, 1))


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(256, 32, generator=generator)
    return TensorDataset(inputs, inputs[:, :4].sum(1, keepdim=True).sin())


def gathered_max_difference(tensors) -> float:
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def state_tensors(optimizer, params):
    return [value for param in params for value in optimizer.state[param].values()]


def accelerate_run(bits: int, report_path: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = make_model()
    optimizer = CLASSES[bits](model.parameters(), **OPTIONS)
    loader = DataLoader(dataset(), batch_size=16, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for inputs, targets in loader:
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
    inner = accelerator.unwrap_model(model)
    params = list(inner.parameters())
    states = state_tensors(optimizer.optimizer, params)
    report = {
        "distributed_type": str(accelerator.distributed_type),
        "world": accelerator.num_processes,
        "weights_rank_difference": gathered_max_difference(params),
        "state_rank_difference": gathered_max_difference(states),
        "quantized": ["exp_avg_codes" in optimizer.optimizer.state[p] for p in params],
    }
    # The same global batches in one process: DDP averages the two half-batch gradients.
    single = make_model()
    single_optimizer = CLASSES[bits](single.parameters(), **OPTIONS)
    for inputs, targets in DataLoader(dataset(), batch_size=16 * accelerator.num_processes, shuffle=False):
        halves = zip(inputs.chunk(accelerator.num_processes), targets.chunk(accelerator.num_processes))
        losses = [nn.functional.mse_loss(single(x), y) for x, y in halves]
        single_optimizer.zero_grad()
        (sum(losses) / len(losses)).backward()
        single_optimizer.step()
    differences = [(p - q).abs() for p, q in zip(params, single.parameters())]
    report["max_difference_vs_single_process"] = max(float(d.max()) for d in differences)
    report["fraction_differing_vs_single_process"] = sum(int((d > 0).sum()) for d in differences) / sum(
        d.numel() for d in differences
    )
    if accelerator.is_main_process:
        Path(report_path).write_text(json.dumps(report))


def zero_run(bits: int, directory: str, report_path: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    cls = CLASSES[bits]
    zero_model, plain_model = DDP(make_model()), DDP(make_model())
    zero = ZeroRedundancyOptimizer(zero_model.parameters(), optimizer_class=cls, **OPTIONS)
    plain = cls(plain_model.parameters(), **OPTIONS)
    inputs, targets = dataset().tensors

    def train(model, optimizer, steps):
        for step in steps:
            index = torch.arange(8) + 16 * step + 8 * rank
            loss = nn.functional.mse_loss(model(inputs[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    train(zero_model, zero, range(6))
    train(plain_model, plain, range(6))
    report = {
        "zero_vs_plain": max(float((p - q).abs().max()) for p, q in zip(zero_model.parameters(), plain_model.parameters())),
        # each rank keeps state only for its partition of the parameters
        "local_state_params": len(zero.optim.state),
        "total_params": len(list(zero_model.parameters())),
    }
    zero.consolidate_state_dict(to=0)
    path = Path(directory) / "zero.pt"
    if rank == 0:
        state_dict = zero.state_dict()
        report["saved_code_dtypes"] = sorted({str(v.dtype) for e in state_dict["state"].values() for k, v in e.items()
                                              if k.startswith("exp_avg")})
        torch.save(state_dict, path)
    dist.barrier()
    restored_model = DDP(make_model())
    with torch.no_grad():
        for target, source in zip(restored_model.parameters(), zero_model.parameters()):
            target.copy_(source)
    restored = ZeroRedundancyOptimizer(restored_model.parameters(), optimizer_class=cls, **OPTIONS)
    restored.load_state_dict(torch.load(path, weights_only=True))
    train(zero_model, zero, range(6, 10))
    train(restored_model, restored, range(6, 10))
    report["restored_continues_identically"] = all(
        torch.equal(p, q) for p, q in zip(zero_model.parameters(), restored_model.parameters())
    )
    report["rank_difference"] = gathered_max_difference(list(zero_model.parameters()))
    if rank == 0:
        Path(report_path).write_text(json.dumps(report))


def main() -> None:
    mode, bits = sys.argv[1], int(sys.argv[2])
    if mode == "accelerate":
        accelerate_run(bits, sys.argv[3])
        return
    dist.init_process_group("gloo")
    try:
        zero_run(bits, sys.argv[3], sys.argv[4])
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
