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

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PAPER_RATIOS, arguments, build_optimizer, lion_grid, machine_line, markdown_table, mean_and_spread, pyplot,
    save_figure, write_report,
)

ADAMW_WEIGHT_DECAY = 0.05


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
    adamw = [(lr, ADAMW_WEIGHT_DECAY) for lr in adamw_lrs]
    return adamw if name == "AdamW" else sorted(lion_grid(adamw))


def train(name: str, lr: float, weight_decay: float, batch_size: int, epochs: int, seed: int, data) -> float:
    """Validation accuracy after `epochs` epochs with a cosine schedule; 0 if training diverged."""
    (train_x, train_y), (val_x, val_y) = data
    torch.manual_seed(seed)
    model = make_model()
    optimizer = build_optimizer(name, model, lr, weight_decay, fused=False)
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
    """Best validation accuracy against batch size, one line per optimizer, error bars one sd over seeds."""
    figure, axis = pyplot().subplots(figsize=(6, 4))
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
    save_figure(figure, path)


def settings(quick: bool) -> tuple[list[int], list[int], int, int, list[float]]:
    """(batch sizes, seeds, epochs, samples, AdamW lrs at batch 64) of a --quick or a full run."""
    if quick:
        return [16, 64, 256, 1024], [0, 1], 10, 4_000, [3e-4, 1e-3, 3e-3, 1e-2]
    return [16, 32, 64, 128, 256, 512, 1024], [0, 1, 2], 20, 20_000, [3e-4, 1e-3, 3e-3, 1e-2]


def best_points(batch_sizes: list[int], seeds: list[int], epochs: int, adamw_lrs: list[float], data) -> dict:
    """{optimizer: {batch size: (mean, sd, lr, weight decay, on the grid's edge)}} at each batch size's
    best grid point (lrs scaled by sqrt(batch / 64)), printed as they come."""
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
    return results


def cell(result) -> str:
    mean, spread, lr, weight_decay, edge = result
    return f"{mean:.4f} ± {spread:.4f} (lr {lr:.2g}{' edge' if edge else ''}, wd {weight_decay:g})"


def main() -> None:
    args = arguments(__doc__, "4 batch sizes, 2 seeds, 4 lrs, 10 epochs of 3200 samples").parse_args()
    torch.set_num_threads(1)  # a tiny model: threads cost more than they give
    batch_sizes, seeds, epochs, samples, adamw_lrs = settings(args.quick)
    results = best_points(batch_sizes, seeds, epochs, adamw_lrs, make_data(samples))

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
        f"r in {', '.join(f'{r:g}' for r in PAPER_RATIOS)}. Best grid point per batch size, mean ± sd over seeds; "
        "'edge': the best lr is the grid's smallest or largest.",
        "",
        markdown_table(header, rows),
    ])
    write_report(args.output_dir, "batch_size", report)
    plot(results, args.output_dir / "batch_size.png")


if __name__ == "__main__":
    main()
