"""Training with bf16 weights: nearest rounding, Kahan summation and stochastic rounding, for Lion,
Lion8bit and Lion4bit, against fp32 weights and AdamW in bf16.

    python benchmarks/low_precision.py [--quick] [--seeds N] [--variants LABEL ...]

Tasks: the convergence benchmark's ViT on digits and tiny GPT-2 on characters (`convergence.py`'s
task builders), at each task's Lion point of that benchmark (lr 1e-3; wd 0.15 digits, 0.3 chars),
AdamW at its own (lr 3e-3; wd 0.05 digits, 0.1 chars). Per variant:

* updates lost: per step, among the elements with a nonzero gradient, the share whose weight did not
  change (weight + Kahan buffer for Kahan), averaged over steps. Stochastic rounding leaves a weight
  unchanged on most steps when lr is below its spacing, yet moves it by lr on average: its share
  counts steps, not lost expectation;
* the final validation metric (mean over seeds), and its relative gap to fp32-weights Lion;
* training state in bytes per parameter: weights + gradients + optimizer state (+ compensation);
  AdamW with fp32 master weights (mixed precision) needs 16 (fp32 weights, grads, m, v);
* optimizer step time as a ratio to fp32-weights Lion's fused step, measured in the same run
  (median over the run's steps after 3 warm-up steps).

Writes outputs/low_precision.md and outputs/low_precision.png.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import arguments, machine_line, markdown_table, mean_and_spread, pyplot, save_figure  # noqa: E402
from convergence import CharGPT2, DigitsViT  # noqa: E402

import lion_integrations  # noqa: E402
from lion_integrations.hparams import param_groups  # noqa: E402
from lion_integrations.state import COMPENSATION  # noqa: E402

LION_POINTS = {"digits-vit": (1e-3, 0.15), "char-gpt2": (1e-3, 0.3)}
ADAMW_POINTS = {"digits-vit": (3e-3, 0.05), "char-gpt2": (3e-3, 0.1)}
STORES = {"plain": dict(kahan_sum=False), "Kahan": dict(kahan_sum=True), "stochastic": dict(stochastic_rounding=True)}
WARMUP_STEPS = 3
ADAMW_MIXED_PRECISION_BYTES = 16


def variants() -> list[tuple[str, str, torch.dtype, dict]]:
    """(label, optimizer class name, weight dtype, options): fp32 weights, then bf16 x stores, then AdamW bf16."""
    rows = [(f"{name} fp32 weights", name, torch.float32, {}) for name in ("Lion", "Lion8bit", "Lion4bit")]
    rows += [(f"{name} bf16 {store}", name, torch.bfloat16, options)
             for name in ("Lion", "Lion8bit", "Lion4bit") for store, options in STORES.items()]
    rows.append(("AdamW bf16", "AdamW", torch.bfloat16, {}))
    return rows


def build_optimizer(task, name: str, model, options: dict):
    if name == "AdamW":
        lr, weight_decay = ADAMW_POINTS[task.name]
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    lr, weight_decay = LION_POINTS[task.name]
    return getattr(lion_integrations, name)(param_groups(model, weight_decay), lr=lr, **options)


def effective_weights(optimizer, params) -> list[torch.Tensor]:
    """Each weight as the optimizer holds it, in fp32: the parameter, plus its Kahan buffer if any."""
    weights = []
    for param in params:
        weight = param.detach().float()
        buffer = optimizer.state.get(param, {}).get(COMPENSATION)
        weights.append(weight + buffer.float() if buffer is not None else weight.clone())
    return weights


def training_state_bytes(optimizer, params) -> float:
    total = 0
    for param in params:
        total += 2 * param.numel() * param.element_size()  # weights and gradients, in the weights' dtype
        total += sum(v.numel() * v.element_size() for v in optimizer.state[param].values() if isinstance(v, torch.Tensor) and v.dim())
    return total / sum(p.numel() for p in params)


def train(task, name: str, dtype: torch.dtype, options: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    model = task.model().to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(task, name, model, options)
    total = task.epochs * sum(1 for _ in task.batches(torch.Generator().manual_seed(0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + torch.cos(torch.tensor(step / total * torch.pi)).item()))
    generator, lost, step_seconds = torch.Generator().manual_seed(seed), [], []
    for _ in range(task.epochs):
        for batch in task.batches(generator):
            if isinstance(batch, tuple):  # images follow the weights' dtype; labels and token ids stay integers
                batch = tuple(b.to(dtype) if b.is_floating_point() else b for b in batch)
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            before = effective_weights(optimizer, params)
            start = time.perf_counter()
            optimizer.step()
            step_seconds.append(time.perf_counter() - start)
            scheduler.step()
            after = effective_weights(optimizer, params)
            updated = sum(int((p.grad != 0).sum()) for p in params)
            unchanged = sum(int(((p.grad != 0) & (a == b)).sum()) for p, a, b in zip(params, after, before))
            lost.append(unchanged / max(updated, 1))
    state_bytes = training_state_bytes(optimizer, params)
    return {
        "metric": task.evaluate(model.float()),  # the trained weights, exactly, evaluated in fp32 arithmetic
        "lost": statistics.fmean(lost),
        "bytes": state_bytes,
        "step": statistics.median(step_seconds[WARMUP_STEPS:]),
    }


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), sharey=True)
    for axis, (task_name, rows) in zip(axes, results.items()):
        labels = list(rows)
        gaps = [rows[label]["gap"] * 100 for label in labels]
        colors = ["tab:gray" if "fp32" in l else "tab:red" if "plain" in l else "tab:green" if "Kahan" in l
                  else "tab:blue" if "stochastic" in l else "tab:orange" for l in labels]
        axis.barh(labels, gaps, color=colors)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(f"{task_name}: final metric vs fp32-weights Lion (%, worse is right)")
        axis.set_xlabel("relative gap, %")
        axis.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    save_figure(figure, path)


def main() -> None:
    parser = arguments(__doc__, "1 seed, the convergence benchmark's quick tasks (1 epoch of chars)")
    labels = [label for label, *_ in variants()]
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per variant (default: 1 quick, 3 full)")
    parser.add_argument("--variants", nargs="+", choices=labels, default=labels, metavar="LABEL",
                        help="the rows to run (default: all); 'Lion fp32 weights', the reference, always runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    chosen = {"Lion fp32 weights", *args.variants}
    tasks = [DigitsViT(args.quick), CharGPT2(args.quick)]
    if args.quick:
        tasks[1].epochs = 1  # the char task's quick run, 512 sequences, once

    results, sections = {}, []
    for task in tasks:
        rows = {}
        for label, name, dtype, options in variants():
            if label not in chosen:
                continue
            runs = [train(task, name, dtype, options, seed) for seed in seeds]
            metric, spread = mean_and_spread([run["metric"] for run in runs])
            rows[label] = {
                "metric": metric, "spread": spread,
                **{key: statistics.fmean(run[key] for run in runs) for key in ("lost", "bytes", "step")},
            }
            print(f"{task.name} {label}: {task.metric} {metric:.4f}, lost {rows[label]['lost']:.1%}", flush=True)
        reference = rows["Lion fp32 weights"]
        for row in rows.values():
            gap = (row["metric"] - reference["metric"]) / abs(reference["metric"])
            row["gap"] = -gap if task.higher_is_better else gap  # > 0: worse than fp32-weights Lion
            row["time"] = row["step"] / reference["step"]
        results[task.name] = rows
        header = ["variant", f"{task.metric}", "vs fp32 Lion (worse > 0)", "updates lost / step",
                  "training state, bytes/param", "step time / fp32 Lion fused"]
        table = [[label, f"{row['metric']:.4f}" + (f" ± {row['spread']:.4f}" if len(seeds) > 1 else ""),
                  f"{row['gap']:+.2%}", f"{row['lost']:.1%}", f"{row['bytes']:.2f}", f"{row['time']:.2f}x"]
                 for label, row in rows.items()]
        sections += [f"## {task.name} ({task.epochs} epochs, {len(seeds)} seed(s), "
                     f"{'higher' if task.higher_is_better else 'lower'} is better)", "", markdown_table(header, table), ""]
    report = "\n".join([
        f"# Training with bf16 weights ({'quick' if args.quick else 'full'} mode)", "",
        f"{machine_line()}. Lion at lr 1e-3 (wd 0.15 digits, 0.3 chars), AdamW at lr 3e-3, cosine schedule. "
        f"Training state counts weights, gradients, optimizer state and the Kahan buffer; AdamW with fp32 "
        f"master weights (mixed precision) needs {ADAMW_MIXED_PRECISION_BYTES}. Step times are medians, as ratios to "
        "fp32-weights Lion's fused step in this run.", "",
        *sections,
    ])
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "low_precision.md").write_text(report + "\n")
    plot(results, args.output_dir / "low_precision.png")


if __name__ == "__main__":
    main()
