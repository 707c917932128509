"""Convergence of Lion, Lion8bit, Lion4bit and AdamW on the recipes' tasks, over seeds and a small grid.

    python benchmarks/convergence.py [--quick]

Tasks (the recipes' models and data, trained here with a plain PyTorch loop):
  digits-vit  the ViT of recipes/lightning_finetune.py on scikit-learn's digits; metric: validation accuracy
  char-gpt2   the tiny GPT-2 of recipes/hf_finetune.py on standard-library source; metric: validation loss
Grid: AdamW over lr x weight decay; each Lion variant over the same points translated by the paper's
ratios (lr / r, wd * r for r in 3 and 10; r = 3 only in quick mode). A best point on the grid's edge is
marked: the optimum may lie beyond it. Every grid point runs several seeds; the table gives each
optimizer's best point as mean ± sd over seeds. Writes outputs/convergence.md and outputs/convergence.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, mean_and_spread  # noqa: E402

import lion_integrations  # noqa: E402
from lion_integrations.hparams import from_adamw, param_groups  # noqa: E402

OPTIMIZERS = ("AdamW", "Lion", "Lion8bit", "Lion4bit")
PAPER_RATIOS = (3.0, 10.0)


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the recipe is being defined
    spec.loader.exec_module(module)
    return module


class DigitsViT:
    name, metric, higher_is_better = "digits-vit", "val accuracy", True

    def __init__(self, quick: bool):
        from sklearn.datasets import load_digits

        self.recipe = load_recipe("lightning_finetune")
        images, labels = load_digits(return_X_y=True)
        images = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        images, labels = images[order], torch.tensor(labels)[order]
        split = int(0.8 * len(images))
        self.train_data, self.val_data = (images[:split], labels[:split]), (images[split:], labels[split:])
        self.epochs, self.batch_size = (8 if quick else 25), 64
        self.adamw_grid = [(1e-3, 0.05), (3e-3, 0.05), (1e-2, 0.05)] if quick else [
            (1e-3, 0.05), (3e-3, 0.05), (1e-2, 0.05), (3e-3, 0.2)]

    def model(self) -> nn.Module:
        return self.recipe.ViT()

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
        self.recipe = load_recipe("hf_finetune")
        arguments = self.recipe.RecipeArguments()
        train, val, tokenizer = self.recipe.build_data(arguments, None)
        self.arguments, self.vocab = arguments, len(tokenizer.vocab)
        self.train_ids = torch.stack([example["input_ids"] for example in train])[: (512 if quick else 2048)]
        self.val_ids = torch.stack([example["input_ids"] for example in val])[:128]
        self.epochs, self.batch_size = (2 if quick else 4), 16
        self.adamw_grid = [(1e-3, 0.1), (3e-3, 0.1), (1e-2, 0.1)] if quick else [
            (1e-3, 0.1), (3e-3, 0.1), (1e-2, 0.1), (3e-3, 0.3)]

    def model(self) -> nn.Module:
        return self.recipe.build_model(self.arguments, self.vocab, seed=torch.initial_seed())

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


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "AdamW":
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    return getattr(lion_integrations, name)(param_groups(model, weight_decay), lr=lr)


def grid(task, name: str, ratios: tuple[float, ...]) -> list[tuple[float, float]]:
    if name == "AdamW":
        return task.adamw_grid
    points = [from_adamw(lr, wd, ratio) for lr, wd in task.adamw_grid for ratio in ratios]
    return [(point["lr"], point["weight_decay"]) for point in points]


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


def run_task(task, seeds: list[int], ratios: tuple[float, ...]):
    """{optimizer: (mean, sd, lr, wd, mean curve, quantized share, on grid edge)} at each best grid point."""
    best = {}
    for name in OPTIMIZERS:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4))
    for axis, (task_name, by_optimizer) in zip(axes, results.items()):
        for name, (mean, spread, lr, weight_decay, curve, *_) in by_optimizer.items():
            axis.plot(range(1, len(curve) + 1), curve, marker="o", label=f"{name} (lr {lr:.1e}, wd {weight_decay:g})")
        axis.set_title(f"{task_name}: training loss at the best grid point")
        axis.set_xlabel("epoch")
        axis.set_ylabel("mean training loss over seeds")
        axis.set_yscale("log")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 3 grid points, ratio 3 only, fewer epochs")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is faster than two here
    seeds = [0, 1] if args.quick else [0, 1, 2, 3]
    ratios = PAPER_RATIOS[:1] if args.quick else PAPER_RATIOS
    tasks = [DigitsViT(args.quick), CharGPT2(args.quick)]

    results, sections = {}, []
    for task in tasks:
        results[task.name] = run_task(task, seeds, ratios)
        adamw_mean = results[task.name]["AdamW"][0]
        rows = [
            [name, f"{mean:.4f} ± {spread:.4f}", f"{mean - adamw_mean:+.4f}",
             f"{lr:.1e}" + (" (grid edge)" if edge else ""), f"{weight_decay:g}", f"{quantized:.0%}"]
            for name, (mean, spread, lr, weight_decay, _, quantized, edge) in results[task.name].items()
        ]
        header = ["optimizer", f"{task.metric} (mean ± sd)", "vs AdamW", "best lr", "best wd", "momentum quantized"]
        sections += [f"## {task.name} ({task.epochs} epochs, batch {task.batch_size}, {len(seeds)} seeds, "
                     f"{'higher' if task.higher_is_better else 'lower'} is better)", "",
                     markdown_table(header, rows), ""]
    report = "\n".join([
        f"# Convergence: Lion, Lion8bit, Lion4bit, AdamW ({'quick' if args.quick else 'full'} mode)", "",
        f"{machine_line()}. Cosine schedule; AdamW grid (lr, wd) per task, Lion variants at the paper's "
        f"ratios {', '.join(f'{r:g}' for r in ratios)} (lr / r, wd * r) of each AdamW point; best point per optimizer. 'momentum quantized': "
        "share of parameter elements whose state is 8/4-bit (smaller tensors keep full precision).", "",
        *sections,
    ])
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "convergence.md").write_text(report + "\n")
    plot(results, args.output_dir / "convergence.png")


if __name__ == "__main__":
    main()
