"""Worker for tests/vote/test_distributed.py: SignVoteLion under torchrun (gloo, CPU), 2 or 4 ranks.

    torchrun --nproc-per-node=W vote_ddp.py REPORT.json CHECKPOINT_DIR [OTHER_WORLD_DIR]

1. Hand-computed votes: a tiny parameter whose gradients every rank can compute for every rank;
   the expected step is written out with integer ballots and fp32 arithmetic, for majority and
   average, both wire formats, and cautious masking over two steps.
2. DDP with `skip_gradient_allreduce`: gradients stay each rank's own, the only collectives a step
   issues are the ballots' all-gathers (counted), parameters stay identical; gradient accumulation
   votes once per optimizer step; the bytes sent against DDP's fp32 all-reduce of the same model.
3. Checkpoints: save per-rank states to CHECKPOINT_DIR, continue, and check that a fresh model and
   optimizer resumed from the files continue bit for bit. OTHER_WORLD_DIR, holding the files of a
   run at another world size: every rank loads rank 0's momenta, with a warning.
Rank 0 writes REPORT.json.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lion_integrations.vote import (
    CollectiveLog,
    SignVoteLion,
    count_collectives,
    counting_allreduce_hook,
    load_rank_state,
    save_rank_state,
    skip_gradient_allreduce,
)
from lion_integrations.vote.ddp import LOCAL_GRADIENT_PARAMS
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)
LR, WEIGHT_DECAY, BETAS = 0.1, 0.5, (0.9, 0.99)


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def gradient(rank: int, index: int, step: int) -> float:
    """Rank `rank`'s gradient of element `index` at `step`: integers in -2..2 at step 0 (zeros
    included), then +-0.05 or 0, small enough that the momentum often outvotes its sign."""
    if step == 0:
        return float((index * (rank + 3) + rank) % 5 - 2)
    return 0.05 * ((index + 2 * rank) % 3 - 1)


def expected_run(world: int, size: int, vote: str, cautious: bool):
    """Parameters after each of two steps, from the ballots counted in Python."""
    param = torch.linspace(-0.5, 0.6, size)
    decay = 1.0 - LR * WEIGHT_DECAY
    momenta = [[0.0] * size for _ in range(world)]
    history = []
    for step in range(2):
        sums = [0] * size
        for rank in range(world):
            for i in range(size):
                g = gradient(rank, i, step)
                c = BETAS[0] * momenta[rank][i] + (1 - BETAS[0]) * g
                ballot = sign(c)
                if cautious and sign(c) * sign(g) <= 0:
                    ballot = 0
                sums[i] += ballot
                momenta[rank][i] = BETAS[1] * momenta[rank][i] + (1 - BETAS[1]) * g
        if vote == "majority":
            voted = torch.tensor([float(sign(s)) for s in sums])
        else:
            voted = torch.tensor(sums, dtype=torch.float32) / world
        step_size = LR
        if cautious:
            kept = sum(1 for s in sums if s != 0)
            step_size = LR * size / max(kept, size * 1e-3)
        param = param * decay - voted * step_size
        history.append(param.clone())
    return history


def hand_computed_votes(world: int, rank: int) -> dict:
    size = 15
    results = {}
    for vote in ("majority", "average"):
        for collective in ("all_gather", "all_reduce"):
            for cautious in (False, True):
                param = nn.Parameter(torch.linspace(-0.5, 0.6, size))
                only_rank0 = nn.Parameter(torch.ones(3))  # a gradient on rank 0 only: one voter
                untouched = nn.Parameter(torch.ones(2))  # no gradient anywhere: not even decayed
                optimizer = SignVoteLion([param, only_rank0, untouched], lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                                         vote=vote, collective=collective, cautious=cautious)
                expected = expected_run(world, size, vote, cautious)
                matches = []
                for step in range(2):
                    param.grad = torch.tensor([gradient(rank, i, step) for i in range(size)])
                    only_rank0.grad = torch.tensor([1.0, -1.0, 0.0]) if rank == 0 else None
                    optimizer.step()
                    matches.append(torch.equal(param.detach(), expected[step]))
                one_voter = torch.ones(3)
                for _ in range(2):  # rank 0's ballots [1, -1, 0] alone; cautious keeps 2 of 3 elements
                    one_voter = one_voter * (1 - LR * WEIGHT_DECAY) - torch.tensor([1.0, -1.0, 0.0]) * (
                        LR if not cautious else LR * 3 / 2)
                results[f"{vote}/{collective}/cautious={cautious}"] = {
                    "steps_match": matches,
                    "one_voter_matches": torch.allclose(only_rank0.detach(), one_voter, rtol=0, atol=1e-6),
                    "untouched": torch.equal(untouched.detach(), torch.ones(2)),
                }
    return results


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def batch(rank: int, step: int, micro: int):
    generator = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    inputs = torch.randn(8, 16, generator=generator)
    return inputs, inputs[:, :3].sum(1, keepdim=True).sin()


def train(model, optimizer, rank: int, steps, micro_steps: int = 2) -> None:
    for step in steps:
        for micro in range(micro_steps):
            sync = contextlib.nullcontext() if micro == micro_steps - 1 else model.no_sync()
            with sync:
                inputs, targets = batch(rank, step, micro)
                nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()


def gathered_max_difference(tensors) -> float:
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def momenta(optimizer, params):
    return [optimizer.state[p]["exp_avg"] for p in params]


def ddp_checks(world: int, rank: int, checkpoint_dir: Path, other_world_dir: Path | None) -> dict:
    report = {}
    model = skip_gradient_allreduce(DDP(make_model()))
    optimizer = SignVoteLion(model.parameters(), lr=1e-2, weight_decay=0.1, skip_ddp_allreduce=False)
    with count_collectives() as log:
        train(model, optimizer, rank, range(4))
    report["collectives"] = log.names()
    report["bytes_per_step"] = log.calls[-1].bytes_sent
    params = list(model.parameters())
    report["params_rank_difference"] = gathered_max_difference(params)
    report["momenta_rank_difference"] = gathered_max_difference(momenta(optimizer, params))
    # The gradients DDP leaves are this rank's own: equal to the unwrapped module's, unlike the other ranks'.
    inputs, targets = batch(rank, 99, 0)
    nn.functional.mse_loss(model(inputs), targets).backward()
    local = make_model()
    local.load_state_dict(model.module.state_dict())
    nn.functional.mse_loss(local(inputs), targets).backward()
    report["grads_are_local"] = all(torch.equal(p.grad, q.grad) for p, q in zip(params, local.parameters()))
    report["grads_rank_difference"] = gathered_max_difference([p.grad for p in params])
    report["hook_kept_every_gradient"] = all(p in LOCAL_GRADIENT_PARAMS for p in params)
    optimizer.zero_grad()
    # DDP's own gradient all-reduce of the same model, counted through a hook doing what DDP does.
    baseline = DDP(make_model())
    baseline_log = CollectiveLog()
    baseline.register_comm_hook(state=None, hook=counting_allreduce_hook(baseline_log))
    nn.functional.mse_loss(baseline(inputs), targets).backward()
    report["ddp_bytes_per_step"] = baseline_log.bytes_sent
    report["param_count"] = sum(p.numel() for p in params)

    if other_world_dir is not None:  # another world size's checkpoint: every rank starts from rank 0's momenta
        reseeded = SignVoteLion(model.parameters(), lr=1e-2, weight_decay=0.1, skip_ddp_allreduce=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = load_rank_state(reseeded, other_world_dir)
        saved = torch.load(path, weights_only=True)
        report["reseed_file"] = path.name
        report["reseed_warnings"] = [str(w.message) for w in caught]
        report["reseeded_equals_rank0_file"] = all(
            torch.equal(reseeded.state[p]["exp_avg"], saved["state"][index]["exp_avg"]) for index, p in enumerate(params))
        report["reseeded_momenta_rank_difference"] = gathered_max_difference(momenta(reseeded, params))
    # Save, continue, resume in a fresh model and optimizer: bit for bit.
    save_rank_state(optimizer, checkpoint_dir)
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}
    train(model, optimizer, rank, range(4, 7))
    resumed_model = make_model()
    resumed_model.load_state_dict(weights)
    resumed_model = skip_gradient_allreduce(DDP(resumed_model))
    resumed = SignVoteLion(resumed_model.parameters(), lr=1e-2, weight_decay=0.1, skip_ddp_allreduce=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_rank_state(resumed, checkpoint_dir)
    train(resumed_model, resumed, rank, range(4, 7))
    resumed_params = list(resumed_model.parameters())
    report["resume_warnings"] = [str(w.message) for w in caught]
    report["resumed_params_equal"] = all(torch.equal(p, q) for p, q in zip(params, resumed_params))
    report["resumed_momenta_equal"] = all(
        torch.equal(a, b) for a, b in zip(momenta(optimizer, params), momenta(resumed, resumed_params)))
    return report


def main() -> None:
    report_path, checkpoint_dir = sys.argv[1], Path(sys.argv[2])
    other_world_dir = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {"world": world, "hand_computed": hand_computed_votes(world, rank)}
    report.update(ddp_checks(world, rank, checkpoint_dir, other_world_dir))
    gathered = [None] * world
    dist.all_gather_object(gathered, report)
    if rank == 0:
        Path(report_path).write_text(json.dumps({"ranks": gathered}))
    dist.barrier()
    exit_now()


if __name__ == "__main__":
    main()
