"""Convergence of Lion, Lion8bit, Lion4bit and AdamW on the recipes' tasks, over seeds and a small grid.

    python benchmarks/convergence.py [--quick] [--seeds N] [--optimizers Lion Lion4bit ...]

Tasks (the recipes' models and data, trained here with a plain PyTorch loop):
  digits-vit  the ViT of recipes/lightning_finetune.py on scikit-learn's digits; metric: validation accuracy
  char-gpt2   the tiny GPT-2 of recipes/hf_finetune.py on standard-library source; metric: validation loss
Grid: AdamW over lr x weight decay; each Lion variant over the same points translated by the paper's
ratios (lr / r, wd * r for r in 3 and 10; r = 3 only in quick mode). A best point on the grid's edge is
marked: the optimum may lie beyond it. Every grid point runs several seeds; the table gives each
optimizer's best point as mean ± sd over seeds. Writes outputs/convergence.md and outputs/convergence.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `recipes`
from common import (  # noqa: E402
    PAPER_RATIOS, arguments, build_optimizer, lion_grid, machine_line, markdown_table, mean_and_spread, pyplot,
    save_figure, write_report,
)

from lion_integrations.discovery.data import DIGITS_IMAGES, digits_split  # noqa: E402
from recipes import hf_finetune, lightning_finetune  # noqa: E402

OPTIMIZERS = ("AdamW", "Lion", "Lion8bit", "Lion4bit")


class DigitsViT:
    name, metric, higher_is_better = "digits-vit", "val accuracy", True

    def __init__(self, quick: bool):
        (train_x, train_y), (val_x, val_y) = digits_split(int(0.8 * DIGITS_IMAGES), seed=0)
        self.train_data, self.val_data = (train_x.view(-1, 1, 8, 8), train_y), (val_x.view(-1, 1, 8, 8), val_y)
        self.epochs, self.batch_size = (8 if quick else 25), 64
        self.adamw_grid = [(1e-3, 0.05), (3e-3, 0.05), (1e-2, 0.05)] if quick else [
            (1e-3, 0.05), (3e-3, 0.05), (1e-2, 0.05), (3e-3, 0.2)]

    def model(self) -> nn.Module:
        return lightning_finetune.ViT()

    def batches(self, generator):
        images, labels = self.train_data
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - self.batch_size + 1, self.batch_size):
            index = order[start:start + self.batch_size]
            yield images[index], labels[index]

    def loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model) -> float:
        model.eval()
        accuracy = (model(self.val_data[0]).argmax(-1) == self.val_data[1]).float().mean().item()
        model.train()
        return accuracy


class CharGPT2:
    name, metric, higher_is_better = "char-gpt2", "val loss", False

    def __init__(self, quick: bool):
        self.arguments = hf_finetune.RecipeArguments()
        train, val, self.vocab = hf_finetune.build_data(self.arguments)
        self.train_ids = torch.stack([example["input_ids"] for example in train])[: (512 if quick else 2048)]
        self.val_ids = torch.stack([example["input_ids"] for example in val])[:128]
        self.epochs, self.batch_size = (2 if quick else 4), 16
        self.adamw_grid = [(1e-3, 0.1), (3e-3, 0.1), (1e-2, 0.1)] if quick else [
            (1e-3, 0.1), (3e-3, 0.1), (1e-2, 0.1), (3e-3, 0.3)]

    def model(self) -> nn.Module:
        return hf_finetune.build_model(self.arguments, self.vocab, seed=torch.initial_seed())

    def batches(self, generator):
        order = torch.randperm(len(self.train_ids), generator=generator)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            yield self.train_ids[order[start:start + self.batch_size]]

    def loss(self, model, batch):
        return model(input_ids=batch, labels=batch).loss

    @torch.no_grad()
    def evaluate(self, model) -> float:
        model.eval()
        loss = model(input_ids=self.val_ids, labels=self.val_ids).loss.item()
        model.train()
        return loss


def grid(task, name: str, ratios: tuple[float, ...]) -> list[tuple[float, float]]:
    return task.adamw_grid if name == "AdamW" else lion_grid(task.adamw_grid, ratios)


def quantized_fraction(optimizer: torch.optim.Optimizer) -> float:
    """Share of parameter elements whose momentum the optimizer stores quantized (0 for AdamW and Lion)."""
    if not hasattr(optimizer, "is_quantized"):
        return 0.0
    pairs = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    return sum(p.numel() for p, group in pairs if optimizer.is_quantized(p, group)) / sum(p.numel() for p, _ in pairs)


def train(task, name: str, lr: float, weight_decay: float, seed: int) -> tuple[float, list[float], float]:
    """(final metric, training-loss curve per epoch, quantized share) for one run; NaN metric if it diverged."""
    torch.manual_seed(seed)
    model = task.model()
    optimizer = build_optimizer(name, model, lr, weight_decay)
    total = task.epochs * sum(1 for _ in task.batches(torch.Generator().manual_seed(0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + torch.cos(torch.tensor(step / total * torch.pi)).item()))
    generator, curve = torch.Generator().manual_seed(seed), []
    for _ in range(task.epochs):
        losses = []
        for batch in task.batches(generator):
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        curve.append(sum(losses) / len(losses))
    metric = task.evaluate(model)
    finite = all(map(torch.isfinite, map(torch.tensor, curve)))
    return (metric if finite else float("nan")), curve, quantized_fraction(optimizer)


def run_task(task, seeds: list[int], ratios: tuple[float, ...], optimizers: tuple[str, ...] = OPTIMIZERS):
    """{optimizer: (mean, sd, lr, wd, mean curve, quantized share, on grid edge)} at each best grid point."""
    best = {}
    for name in optimizers:
        points = grid(task, name, ratios)
        lrs = sorted({lr for lr, _ in points})
        for lr, weight_decay in points:
            runs = [train(task, name, lr, weight_decay, seed) for seed in seeds]
            mean, spread = mean_and_spread([metric for metric, _, _ in runs])
            curve = [sum(values) / len(values) for values in zip(*(c for _, c, _ in runs))]
            score = mean if task.higher_is_better else -mean
            if name not in best or score > best[name][0]:
                best[name] = (score, mean, spread, lr, weight_decay, curve, runs[0][2], lr in (lrs[0], lrs[-1]))
            print(f"{task.name} {name:8s} lr={lr:.2e} wd={weight_decay:.3g}: {task.metric} {mean:.4f} ± {spread:.4f}",
                  flush=True)
    return {name: values[1:] for name, values in best.items()}


def plot(results: dict, path: Path) -> None:
    """Per task, the mean training-loss curve of each optimizer at its best grid point."""
    figure, axes = pyplot().subplots(1, len(results), figsize=(5 * len(results), 4))
    for axis, (task_name, by_optimizer) in zip(axes, results.items()):
        for name, (mean, spread, lr, weight_decay, curve, *_) in by_optimizer.items():
            axis.plot(range(1, len(curve) + 1), curve, marker="o", label=f"{name} (lr {lr:.1e}, wd {weight_decay:g})")
        axis.set_title(f"{task_name}: training loss at the best grid point")
        axis.set_xlabel("epoch")
        axis.set_ylabel("mean training loss over seeds")
        axis.set_yscale("log")
        axis.legend(fontsize=8)
    save_figure(figure, path)


def main() -> None:
    parser = arguments(__doc__, "2 seeds, 3 grid points, ratio 3 only, fewer epochs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per grid point (default: 2 quick, 4 full)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS),
                        help="the optimizers to run (default: all); the first is the reference column unless AdamW runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is faster than two here
    seeds = list(range(args.seeds if args.seeds is not None else 2 if args.quick else 4))
    ratios = PAPER_RATIOS[:1] if args.quick else PAPER_RATIOS
    tasks = [DigitsViT(args.quick), CharGPT2(args.quick)]

    results, sections = {}, []
    for task in tasks:
        results[task.name] = run_task(task, seeds, ratios, tuple(args.optimizers))
        reference = "AdamW" if "AdamW" in args.optimizers else args.optimizers[0]
        reference_mean = results[task.name][reference][0]
        rows = [
            [name, f"{mean:.4f} ± {spread:.4f}", f"{mean - reference_mean:+.4f} ({(mean / reference_mean - 1):+.1%})",
             f"{lr:.1e}" + (" (grid edge)" if edge else ""), f"{weight_decay:g}", f"{quantized:.0%}"]
            for name, (mean, spread, lr, weight_decay, _, quantized, edge) in results[task.name].items()
        ]
        header = ["optimizer", f"{task.metric} (mean ± sd)", f"vs {reference}", "best lr", "best wd", "momentum quantized"]
        sections += [f"## {task.name} ({task.epochs} epochs, batch {task.batch_size}, {len(seeds)} seeds, "
                     f"{'higher' if task.higher_is_better else 'lower'} is better)", "",
                     markdown_table(header, rows), ""]
    report = "\n".join([
        f"# Convergence: {', '.join(args.optimizers)} ({'quick' if args.quick else 'full'} mode)", "",
        f"{machine_line()}. Cosine schedule; AdamW grid (lr, wd) per task, Lion variants at the paper's "
        f"ratios {', '.join(f'{r:g}' for r in ratios)} (lr / r, wd * r) of each AdamW point; best point per optimizer. 'momentum quantized': "
        "share of parameter elements whose state is 8/4-bit (smaller tensors keep full precision).", "",
        *sections,
    ])
    write_report(args.output_dir, "convergence", report)
    plot(results, args.output_dir / "convergence.png")


if __name__ == "__main__":
    main()
