"""The sign-vote mode (SignVoteLion) against DDP's gradient all-reduce, on 2 and 4 CPU processes (gloo).

    python benchmarks/distributed.py [--quick] [--output-dir outputs]

For each world size W, in processes started here (torch.multiprocessing, gloo on 127.0.0.1):

* bytes sent per rank per optimizer step, from the collectives actually issued: the vote's (every
  `torch.distributed` call recorded by `lion_integrations.vote.count_collectives`) against DDP's fp32
  gradient all-reduce of the same model (torch's default all-reduce hook, recorded per bucket);
  bytes under ring algorithms (see `lion_integrations.vote.traffic`);
* step wall time (forward, backward, optimizer step) of DDP + SignVoteLion against DDP + Lion,
  timed in interleaved rounds in the same run (fastest round of each, slowest rank), for the task
  model and a wider MLP where the gradients' bytes matter more;
* validation quality at equal steps on the digits-vit convergence task (benchmarks/convergence.py;
  each rank trains on its 1/W of every global batch of 64): global Lion and AdamW (DDP, gradients
  averaged) against the vote ('majority' and 'average'), with cautious masking on and off; mean ±
  sd over seeds. Quick mode runs a subset at each world size (`QUICK_CONFIGS`); at 2 ranks without
  abstentions 'average' equals 'majority' (a sum of two +-1 is -2, 0 or 2).

Writes outputs/distributed.md, outputs/distributed.png and the measurements as outputs/distributed.json.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine_line, markdown_table, mean_and_spread, pyplot, save_figure  # noqa: E402
from convergence import DigitsViT  # noqa: E402

from lion_integrations import Lion  # noqa: E402
from lion_integrations.hparams import param_groups  # noqa: E402
from lion_integrations.vote import (  # noqa: E402
    CollectiveLog,
    SignVoteLion,
    count_collectives,
    counting_allreduce_hook,
    skip_gradient_allreduce,
)

WORLD_SIZES = (2, 4)
# digits-vit's best points in benchmarks/results/convergence.md (quick mode).
LION_POINT, ADAMW_POINT = (1e-3, 0.15), (3e-3, 0.05)
# name: (optimizer, options, the all-reduce skipped)
CONFIGS = {
    "AdamW (DDP all-reduce)": ("AdamW", {}, False),
    "Lion (DDP all-reduce)": ("Lion", {}, False),
    "Lion cautious (DDP all-reduce)": ("Lion", {"cautious": True}, False),
    "vote majority": ("SignVoteLion", {"vote": "majority"}, True),
    "vote average": ("SignVoteLion", {"vote": "average"}, True),
    "vote majority cautious": ("SignVoteLion", {"vote": "majority", "cautious": True}, True),
    "vote average cautious": ("SignVoteLion", {"vote": "average", "cautious": True}, True),
}


QUICK_CONFIGS = {
    2: ("AdamW (DDP all-reduce)", "Lion (DDP all-reduce)", "Lion cautious (DDP all-reduce)", "vote majority",
        "vote majority cautious"),
    4: ("Lion (DDP all-reduce)", "vote majority", "vote average"),
}


def wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.Tanh(), nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 10))


def build(config: str, model: nn.Module, lr: float | None = None, weight_decay: float | None = None):
    """(DDP model, optimizer) for `config`; the vote's DDP model keeps its gradients local."""
    kind, options, local = CONFIGS[config]
    default_lr, default_wd = ADAMW_POINT if kind == "AdamW" else LION_POINT
    lr, weight_decay = lr or default_lr, default_wd if weight_decay is None else weight_decay
    ddp = DDP(model)
    if local:
        skip_gradient_allreduce(ddp)
    groups = param_groups(model, weight_decay)
    if kind == "AdamW":
        return ddp, torch.optim.AdamW(groups, lr=lr)
    if kind == "Lion":
        return ddp, Lion(groups, lr=lr, fused=False, **options)
    return ddp, SignVoteLion(groups, lr=lr, skip_ddp_allreduce=False, **options)


def slowest_rank(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def measure_traffic(model_fn, inputs, loss_fn) -> dict:
    """Bytes one rank sends per optimizer step: the vote's collectives and DDP's all-reduce."""
    ddp, optimizer = build("vote majority", model_fn())
    loss_fn(ddp, inputs).backward()
    optimizer.step()  # the first step also checks that the ranks start equal: not counted
    optimizer.zero_grad()
    with count_collectives() as log:
        loss_fn(ddp, inputs).backward()
        optimizer.step()
    baseline, baseline_log = DDP(model_fn()), CollectiveLog()
    baseline.register_comm_hook(state=None, hook=counting_allreduce_hook(baseline_log))
    loss_fn(baseline, inputs).backward()
    return {
        "params": sum(p.numel() for p in ddp.parameters()),
        "vote_bytes": log.bytes_sent,
        "vote_collectives": log.names(),
        "ddp_bytes": baseline_log.bytes_sent,
    }


def measure_step_time(model_fn, inputs, loss_fn, rounds: int) -> dict:
    """Fastest step of each contender over interleaved rounds (the slowest rank's), in seconds."""
    contenders = {name: build(name, model_fn()) for name in ("Lion (DDP all-reduce)", "vote majority")}

    def step(ddp, optimizer):
        loss_fn(ddp, inputs).backward()
        optimizer.step()
        optimizer.zero_grad()

    for ddp, optimizer in contenders.values():
        for _ in range(2):
            step(ddp, optimizer)
    best = {name: math.inf for name in contenders}
    for _ in range(rounds):
        for name, (ddp, optimizer) in contenders.items():
            dist.barrier()
            start = time.perf_counter()
            step(ddp, optimizer)
            best[name] = min(best[name], slowest_rank(time.perf_counter() - start))
    return best


def train_quality(task, config: str, seed: int, rank: int, world: int) -> dict:
    """Validation loss and accuracy after the task's epochs, each rank on its share of each batch."""
    torch.manual_seed(seed)
    model = task.model()
    ddp, optimizer = build(config, model)
    total = task.epochs * sum(1 for _ in task.batches(torch.Generator().manual_seed(0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(task.epochs):
        for images, labels in task.batches(generator):
            loss = nn.functional.cross_entropy(ddp(images[rank::world]), labels[rank::world])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        model.eval()
        logits = model(task.val_data[0])
        val_loss = float(nn.functional.cross_entropy(logits, task.val_data[1]))
        accuracy = float((logits.argmax(-1) == task.val_data[1]).float().mean())
    return {"val_loss": val_loss, "val_accuracy": accuracy}


def worker(rank: int, world: int, port: int, quick: bool, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    task = DigitsViT(quick=True)
    task.epochs = 6 if quick else 15
    images = task.train_data[0][: 64 // world]

    def vit_loss(model, inputs):
        return model(inputs).square().mean()

    wide_inputs = torch.randn(64 // world, 256, generator=torch.Generator().manual_seed(rank))
    results = {"world": world, "epochs": task.epochs}
    results["traffic"] = {
        "digits-vit": measure_traffic(task.model, images, vit_loss),
        "wide MLP": measure_traffic(wide_mlp, wide_inputs, vit_loss),
    }
    rounds = 10 if quick else 30
    results["step_seconds"] = {
        "digits-vit": measure_step_time(task.model, images, vit_loss, rounds),
        "wide MLP": measure_step_time(wide_mlp, wide_inputs, vit_loss, rounds),
    }
    seeds = [0, 1] if quick else [0, 1, 2, 3]
    quality = {}
    for config in QUICK_CONFIGS.get(world, CONFIGS) if quick else CONFIGS:
        quality[config] = [train_quality(task, config, seed, rank, world) for seed in seeds]
        if rank == 0:
            print(f"W={world} {config}: {quality[config]}", flush=True)
    results["quality"] = quality
    if rank == 0:
        Path(result_path).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def report_sections(all_results: list[dict]) -> list[str]:
    traffic_rows, time_rows, quality_sections = [], [], []
    for results in all_results:
        world = results["world"]
        for model, numbers in results["traffic"].items():
            traffic_rows.append([
                world, model, f"{numbers['params']:,}", f"{numbers['ddp_bytes'] / numbers['params']:.3f}",
                f"{numbers['vote_bytes'] / numbers['params']:.4f}", f"{numbers['ddp_bytes'] / numbers['vote_bytes']:.1f}x",
                ", ".join(sorted(set(numbers["vote_collectives"]))),
            ])
        for model, seconds in results["step_seconds"].items():
            lion, vote = seconds["Lion (DDP all-reduce)"], seconds["vote majority"]
            time_rows.append([world, model, f"{lion * 1e3:.2f}", f"{vote * 1e3:.2f}", f"{vote / lion:.2f}"])
        baseline = mean_and_spread([run["val_loss"] for run in results["quality"]["Lion (DDP all-reduce)"]])[0]
        rows = []
        for config, runs in results["quality"].items():
            loss, loss_sd = mean_and_spread([run["val_loss"] for run in runs])
            accuracy, accuracy_sd = mean_and_spread([run["val_accuracy"] for run in runs])
            rows.append([config, f"{loss:.4f} ± {loss_sd:.4f}", f"{(loss / baseline - 1) * 100:+.1f}%",
                         f"{accuracy:.4f} ± {accuracy_sd:.4f}"])
        quality_sections += [
            f"### {world} processes ({results['epochs']} epochs, global batch 64, {len(runs)} seeds)", "",
            markdown_table(["optimizer", "val loss (mean ± sd)", "vs global Lion", "val accuracy (mean ± sd)"], rows), "",
        ]
    return [
        "## Bytes sent per rank per optimizer step", "",
        "Counted from the collectives issued (ring algorithms: all-reduce 2(W-1)/W x n, all-gather (W-1) x n); "
        "per parameter element. The vote sends one header byte per parameter tensor besides the packed signs.", "",
        markdown_table(["ranks", "model", "params", "DDP fp32 all-reduce, B/param", "vote, B/param", "fewer bytes",
                        "vote's collectives"], traffic_rows), "",
        "## Step time (forward, backward, optimizer step)", "",
        "Fastest of interleaved rounds, slowest rank; both on DDP, the vote's without the gradient all-reduce.", "",
        markdown_table(["ranks", "model", "DDP + Lion, ms", "DDP + vote, ms", "vote / Lion"], time_rows), "",
        "## Validation quality at equal steps: digits-vit", "",
        f"Lion lr {LION_POINT[0]:g}, wd {LION_POINT[1]:g}; AdamW lr {ADAMW_POINT[0]:g}, wd {ADAMW_POINT[1]:g} "
        "(convergence.md's best points); cosine schedule. 'vs global Lion': relative val loss.", "",
        *quality_sections,
    ]


def plot(all_results: list[dict], path: Path) -> None:
    plt = pyplot()

    figure, (bytes_axis, quality_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, ratios = [], []
    for results in all_results:
        for model, numbers in results["traffic"].items():
            labels.append(f"{model}, {results['world']} ranks")
            ratios.append(numbers["ddp_bytes"] / numbers["vote_bytes"])
    bytes_axis.barh(labels, ratios, color="tab:blue")
    bytes_axis.axvline(16, color="gray", linestyle="--", linewidth=1, label="16x")
    bytes_axis.set_xlabel("DDP all-reduce bytes / vote bytes, per rank per step")
    bytes_axis.legend()
    names = [name for name in CONFIGS if any(name in results["quality"] for results in all_results)]
    width = 0.8 / len(all_results)
    for index, results in enumerate(all_results):
        present = [name for name in names if name in results["quality"]]
        stats = [mean_and_spread([run["val_loss"] for run in results["quality"][name]]) for name in present]
        positions = [names.index(name) + index * width for name in present]
        quality_axis.barh(positions, [m for m, _ in stats], height=width, xerr=[s for _, s in stats],
                          label=f"{results['world']} ranks")
    quality_axis.set_yticks([i + width * (len(all_results) - 1) / 2 for i in range(len(names))], names)
    quality_axis.set_xlabel("digits-vit val loss (mean ± sd over seeds; lower is better)")
    quality_axis.invert_yaxis()
    quality_axis.legend(loc="lower right")
    save_figure(figure, path)


def main() -> None:
    parser = arguments(__doc__, "2 seeds, 6 epochs, fewer optimizers, 10 timing rounds")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=list(WORLD_SIZES))
    args = parser.parse_args()
    all_results = []
    with tempfile.TemporaryDirectory() as scratch:
        for world in args.world_sizes:
            result_path = Path(scratch) / f"world{world}.json"
            mp.spawn(worker, args=(world, free_port(), args.quick, str(result_path)), nprocs=world)
            all_results.append(json.loads(result_path.read_text()))
    report = "\n".join([
        f"# Distributed Lion: the sign vote against DDP's all-reduce ({'quick' if args.quick else 'full'} mode)", "",
        f"{machine_line()} (each process 1 thread; gloo on one machine, so the network is memory).", "",
        *report_sections(all_results),
    ])
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "distributed.md").write_text(report + "\n")
    (args.output_dir / "distributed.json").write_text(json.dumps(all_results, indent=1) + "\n")
    plot(all_results, args.output_dir / "distributed.png")


if __name__ == "__main__":
    main()
