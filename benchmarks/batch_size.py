"""The paper's batch-size claim on a CPU-sized task: Lion vs AdamW across batch sizes.

    python benchmarks/batch_size.py [--quick]

Task: a 3-layer MLP classifying scikit-learn's synthetic `make_classification` data (64 features,
10 classes), a fixed number of epochs at every batch size, so larger batches take fewer steps. Each
optimizer gets a small lr grid scaled by sqrt(batch/64) (Lion's is AdamW's at both ends of the paper's
ratio: lr / r and weight decay x r for r = 3 and 10) and several seeds; for each batch size the best
grid point's validation accuracy is reported as mean ± standard deviation over seeds, marked when it
lies on the edge of its grid. Writes outputs/batch_size.md and outputs/batch_size.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, markdown_table, mean_and_spread  # noqa: E402

from lion_integrations import Lion  # noqa: E402
from lion_integrations.hparams import from_adamw, param_groups  # noqa: E402

ADAMW_WEIGHT_DECAY = 0.05
RATIOS = (3.0, 10.0)


def make_data(samples: int, seed: int = 0):
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=samples, n_features=64, n_informative=40, n_redundant=8, n_classes=10,
        n_clusters_per_class=3, flip_y=0.02, class_sep=1.0, random_state=seed,
    )
    features = torch.tensor(features, dtype=torch.float32)
    labels = torch.tensor(labels)
    split = int(0.8 * samples)
    return (features[:split], labels[:split]), (features[split:], labels[split:])


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))


def grid(name: str, adamw_lrs: list[float]) -> list[tuple[float, float]]:
    """(lr, weight decay) points of `name`, sorted by lr: AdamW's, or Lion's at the paper's ratios."""
    if name == "AdamW":
        return [(lr, ADAMW_WEIGHT_DECAY) for lr in adamw_lrs]
    points = [from_adamw(lr, ADAMW_WEIGHT_DECAY, ratio=ratio) for lr in adamw_lrs for ratio in RATIOS]
    return sorted((point["lr"], point["weight_decay"]) for point in points)


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "AdamW":
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    return Lion(param_groups(model, weight_decay), lr=lr, fused=False)


def train(name: str, lr: float, weight_decay: float, batch_size: int, epochs: int, seed: int, data) -> float:
    """Validation accuracy after `epochs` epochs with a cosine schedule; 0 if training diverged."""
    (train_x, train_y), (val_x, val_y) = data
    torch.manual_seed(seed)
    model = make_model()
    optimizer = build_optimizer(name, model, lr, weight_decay)
    steps_per_epoch = len(train_x) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        logits = model(val_x)
    if not torch.isfinite(logits).all():
        return 0.0
    return (logits.argmax(-1) == val_y).float().mean().item()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, by_batch in results.items():
        sizes = sorted(by_batch)
        means = [by_batch[s][0] for s in sizes]
        spreads = [by_batch[s][1] for s in sizes]
        axis.errorbar(sizes, means, yerr=spreads, marker="o", capsize=3, label=name)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size")
    axis.set_ylabel("validation accuracy (best lr, mean ± sd over seeds)")
    axis.set_title("Lion vs AdamW across batch sizes, fixed epochs")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 batch sizes, 2 seeds, 4 lrs, 10 epochs of 3200 samples")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: threads cost more than they give
    if args.quick:
        batch_sizes, seeds, epochs, samples = [16, 64, 256, 1024], [0, 1], 10, 4_000
        adamw_lrs = [3e-4, 1e-3, 3e-3, 1e-2]
    else:
        batch_sizes, seeds, epochs, samples = [16, 32, 64, 128, 256, 512, 1024], [0, 1, 2], 20, 20_000
        adamw_lrs = [3e-4, 1e-3, 3e-3, 1e-2]
    data = make_data(samples)

    # name -> batch size -> (mean, sd, lr, weight decay, on the grid's edge)
    results: dict[str, dict[int, tuple[float, float, float, float, bool]]] = {"AdamW": {}, "Lion": {}}
    for name in results:
        for batch_size in batch_sizes:
            points = grid(name, [base * (batch_size / 64) ** 0.5 for base in adamw_lrs])
            best = None
            for lr, weight_decay in points:
                accuracies = [train(name, lr, weight_decay, batch_size, epochs, seed, data) for seed in seeds]
                mean, spread = mean_and_spread(accuracies)
                if best is None or mean > best[0]:
                    best = (mean, spread, lr, weight_decay, lr in (points[0][0], points[-1][0]))
            results[name][batch_size] = best
            print(f"{name:5s} batch {batch_size:5d}: {best[0]:.4f} ± {best[1]:.4f} (lr {best[2]:g}, wd {best[3]:g})",
                  flush=True)

    def cell(result) -> str:
        mean, spread, lr, weight_decay, edge = result
        return f"{mean:.4f} ± {spread:.4f} (lr {lr:.2g}{' edge' if edge else ''}, wd {weight_decay:g})"

    rows = []
    for batch_size in batch_sizes:
        adamw, lion = results["AdamW"][batch_size], results["Lion"][batch_size]
        rows.append([batch_size, cell(adamw), cell(lion), f"{lion[0] - adamw[0]:+.4f}"])
    header = ["batch size", "AdamW val acc", "Lion val acc", "Lion - AdamW"]
    report = "\n".join([
        f"# Lion vs AdamW across batch sizes ({'quick' if args.quick else 'full'} mode)",
        "",
        f"{machine_line()}. MLP 64-256-256-10 on make_classification ({samples} samples, 80/20 split), "
        f"{epochs} epochs at every batch size, cosine schedule, {len(seeds)} seeds. AdamW wd {ADAMW_WEIGHT_DECAY}, "
        f"lr grid {adamw_lrs} x sqrt(batch/64); Lion at lr / r and wd x r of each AdamW point, "
        f"r in {', '.join(f'{r:g}' for r in RATIOS)}. Best grid point per batch size, mean ± sd over seeds; "
        "'edge': the best lr is the grid's smallest or largest.",
        "",
        markdown_table(header, rows),
    ])
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "batch_size.md").write_text(report + "\n")
    plot({name: results[name] for name in results}, args.output_dir / "batch_size.png")


if __name__ == "__main__":
    main()
