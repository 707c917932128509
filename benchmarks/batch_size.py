"""The paper's batch-size claim on a CPU-sized task: Lion against AdamW across batch sizes.

    python benchmarks/batch_size.py [--quick] [--jobs 2]

Budget: the same number of training examples at every batch size (a fixed number of epochs, so a
larger batch takes fewer steps), as in the paper's batch-size ablation (Chen et al. 2023: ViT-B/16
on ImageNet at growing batch sizes, always for 300 epochs). It asks what a practitioner asks: with
the same data and about the same compute, how well does each optimizer do at each batch size.

Task: a 3-layer MLP (64-256-256-10) classifying scikit-learn's synthetic `make_classification` data
(64 features, 10 classes; chance is 0.1), split into train, validation and test sets. Linear warmup
over the first 5% of steps, then cosine decay. AdamW's weight decay is 0.05, Lion's 0.15
(`hparams.from_adamw`'s ratio 3).

Tuning, per optimizer and batch size: a grid of lrs spaced by a constant factor around a centre that
grows with sqrt(batch / 64) (AdamW's centre 1e-3 at batch 64; Lion's a third of it, the paper's ratio
of 3). Each point trains every seed; the point with the best mean validation accuracy wins. When it
lies at an end of the grid, the grid grows by a point beyond that end and the new point is trained,
until the best is inside (or after `MAX_EXTENSIONS`, when the table marks it "edge"). The table gives
the winner's test accuracy, mean ± standard deviation over seeds; the difference Lion - AdamW with
its standard error; and the crossover batch size: the smallest batch from which Lion's mean is above
AdamW's at that and every larger batch size, where below it AdamW's is not lower everywhere.

Writes outputs/batch_size.md and outputs/batch_size.png (test accuracy with error bars of one
standard deviation, and the chosen lrs, against batch size).
"""

from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, build_optimizer, machine_line, markdown_table, mean_and_spread, pyplot, save_figure, write_report  # noqa: E402

from lion_integrations.schedules import warmup_cosine  # noqa: E402

OPTIMIZERS = ("AdamW", "Lion")
WEIGHT_DECAY = {"AdamW": 0.05, "Lion": 0.15}
LR_CENTRE_AT_64 = {"AdamW": 1e-3, "Lion": 1e-3 / 3}
MAX_EXTENSIONS = 4


@dataclass(frozen=True)
class Settings:
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    samples: int  # train + validation + test
    grid_points: int
    grid_factor: float


QUICK = Settings(batch_sizes=(32, 128, 512, 2048), seeds=(0, 1, 2), epochs=8, samples=20_000, grid_points=3, grid_factor=3.0)
FULL = Settings(batch_sizes=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096), seeds=(0, 1, 2, 3, 4), epochs=10,
                samples=50_000, grid_points=5, grid_factor=2.0)


def make_data(samples: int, seed: int = 0):
    """(train, validation, test) of `make_classification`: 80%, 10%, 10%."""
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=samples, n_features=64, n_informative=40, n_redundant=8, n_classes=10,
        n_clusters_per_class=3, flip_y=0.02, class_sep=1.0, random_state=seed,
    )
    features, labels = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    train_end, validation_end = int(0.8 * samples), int(0.9 * samples)
    return ((features[:train_end], labels[:train_end]), (features[train_end:validation_end], labels[train_end:validation_end]),
            (features[validation_end:], labels[validation_end:]))


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))


def accuracy(model: nn.Module, split) -> float:
    """Accuracy on `split`; 0 when training diverged (non-finite outputs)."""
    features, labels = split
    with torch.no_grad():
        logits = model(features)
    if not torch.isfinite(logits).all():
        return 0.0
    return (logits.argmax(-1) == labels).float().mean().item()


def train(name: str, lr: float, batch_size: int, epochs: int, seed: int, data) -> tuple[float, float]:
    """(validation accuracy, test accuracy) after `epochs` epochs at `batch_size` with `name` at `lr`."""
    (train_x, train_y), validation, test = data
    torch.manual_seed(seed)
    model = make_model()
    optimizer = build_optimizer(name, model, lr, WEIGHT_DECAY[name], fused=False)
    steps_per_epoch = len(train_x) // batch_size
    total = epochs * steps_per_epoch
    schedule = warmup_cosine(optimizer, warmup_steps=max(1, total // 20), total_steps=total)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return accuracy(model, validation), accuracy(model, test)


# --- worker processes: each builds the data once and trains runs on one thread ---------------------

_data = None


def start_worker(samples: int) -> None:
    global _data
    torch.set_num_threads(1)  # a tiny model: threads cost more than they give; the pool runs runs in parallel
    _data = make_data(samples)


def run(task: tuple[str, float, int, int, int]) -> tuple[float, float]:
    name, lr, batch_size, epochs, seed = task
    return train(name, lr, batch_size, epochs, seed, _data)


# --- tuning --------------------------------------------------------------------------------------


def initial_grid(name: str, batch_size: int, settings: Settings) -> list[float]:
    """`grid_points` lrs spaced by `grid_factor` around `name`'s centre at `batch_size`."""
    centre = LR_CENTRE_AT_64[name] * math.sqrt(batch_size / 64)
    half = (settings.grid_points - 1) / 2
    return [centre * settings.grid_factor ** (index - half) for index in range(settings.grid_points)]


@dataclass
class Search:
    """The grid of one optimizer at one batch size: {lr: [(validation, test) per seed]}."""

    name: str
    batch_size: int
    results: dict[float, list[tuple[float, float]]]
    extensions: int = 0

    def best_lr(self) -> float:
        return max(self.results, key=lambda lr: mean_and_spread([v for v, _ in self.results[lr]])[0])

    def next_lr(self, factor: float) -> float | None:
        """The lr beyond the end of the grid where the best one lies; None when it is inside (or no more extensions)."""
        lrs, best = sorted(self.results), self.best_lr()
        if len(lrs) < 2 or best not in (lrs[0], lrs[-1]) or self.extensions >= MAX_EXTENSIONS:
            return None
        return best / factor if best == lrs[0] else best * factor

    def on_edge(self) -> bool:
        lrs = sorted(self.results)
        return self.best_lr() in (lrs[0], lrs[-1])


def tune(settings: Settings, pool) -> dict[tuple[str, int], Search]:
    """Every optimizer's Search at every batch size, grids grown until their best point is inside."""
    searches = {(name, size): Search(name, size, {lr: [] for lr in initial_grid(name, size, settings)})
                for name in OPTIMIZERS for size in settings.batch_sizes}
    pending = [(key, lr) for key, search in searches.items() for lr in search.results]
    while pending:
        tasks = [(key[0], lr, key[1], settings.epochs, seed) for key, lr in pending for seed in settings.seeds]
        outcomes = iter(pool.map(run, tasks))
        for key, lr in pending:
            searches[key].results[lr] = [next(outcomes) for _ in settings.seeds]
        pending = []
        for key, search in searches.items():
            lr = search.next_lr(settings.grid_factor)
            if lr is not None:
                search.extensions += 1
                search.results[lr] = []
                pending.append((key, lr))
        for key, lr in pending:
            print(f"{key[0]:5s} batch {key[1]:5d}: best lr on the grid's edge, adding lr {lr:.3g}", flush=True)
    return searches


# --- report --------------------------------------------------------------------------------------


def summary(search: Search) -> dict:
    """The winning lr's test accuracy over seeds (mean, sd, n), the lr, and whether it is on the grid's edge."""
    lr = search.best_lr()
    tests = [test for _, test in search.results[lr]]
    mean, spread = mean_and_spread(tests)
    return dict(mean=mean, sd=spread, n=len(tests), lr=lr, edge=search.on_edge(), grid=sorted(search.results))


def crossover(differences: list[tuple[int, float]]) -> int | None:
    """The smallest batch size from which Lion - AdamW stays > 0 through the largest, provided some
    smaller batch size has it <= 0; None when there is no such change of sign."""
    for index, (size, _) in enumerate(differences):
        if index > 0 and all(diff > 0 for _, diff in differences[index:]):
            return size if any(diff <= 0 for _, diff in differences[:index]) else None
    return None


def cell(result: dict) -> str:
    return f"{result['mean']:.4f} ± {result['sd']:.4f} (lr {result['lr']:.2g}{', edge' if result['edge'] else ''})"


def report(settings: Settings, searches: dict, quick: bool, seconds: float) -> tuple[str, dict]:
    summaries = {key: summary(search) for key, search in searches.items()}
    train_size = int(0.8 * settings.samples)
    rows, differences = [], []
    for size in settings.batch_sizes:
        adamw, lion = summaries[("AdamW", size)], summaries[("Lion", size)]
        diff = lion["mean"] - adamw["mean"]
        error = math.sqrt(adamw["sd"] ** 2 / adamw["n"] + lion["sd"] ** 2 / lion["n"])
        differences.append((size, diff))
        rows.append([size, settings.epochs * (train_size // size), cell(adamw), cell(lion), f"{diff:+.4f} ± {error:.4f}",
                     "yes" if abs(diff) > 2 * error else "no"])
    found = crossover(differences)
    verdict = (f"Crossover: Lion is ahead from batch {found} on (and behind or level below it)." if found else
               "No crossover on this task: " + ("Lion is ahead at every batch size." if all(d > 0 for _, d in differences)
                                                 else "Lion is not ahead from any batch size through the largest."))
    header = ["batch size", "steps", "AdamW test acc", "Lion test acc", "Lion - AdamW (± s.e.)", "beyond 2 s.e."]
    text = "\n".join([
        f"# Lion vs AdamW across batch sizes ({'quick' if quick else 'full'} mode)",
        "",
        f"{machine_line()}; {seconds:.0f} s. MLP 64-256-256-10 on make_classification ({settings.samples} samples: "
        f"{train_size} train, 10% validation, 10% test), {settings.epochs} epochs at every batch size (the same "
        f"examples, as in the paper), warmup 5% then cosine, {len(settings.seeds)} seeds. Weight decay AdamW "
        f"{WEIGHT_DECAY['AdamW']}, Lion {WEIGHT_DECAY['Lion']}. lr grid: {settings.grid_points} points x"
        f"{settings.grid_factor:g} apart around 1e-3 (AdamW) or 3.3e-4 (Lion) x sqrt(batch/64), grown past an "
        "end while the best point lies there; best by mean validation accuracy, shown as test accuracy mean ± sd "
        "over seeds; 'edge': still at an end of its grid.",
        "",
        markdown_table(header, rows),
        "",
        verdict,
    ])
    return text, summaries


def plot(settings: Settings, summaries: dict, path: Path) -> None:
    """Test accuracy (error bars: one sd over seeds) and the chosen lr against batch size."""
    figure, (accuracy_axis, lr_axis) = pyplot().subplots(1, 2, figsize=(11, 4))
    for name in OPTIMIZERS:
        rows = [summaries[(name, size)] for size in settings.batch_sizes]
        accuracy_axis.errorbar(settings.batch_sizes, [r["mean"] for r in rows], yerr=[r["sd"] for r in rows],
                               marker="o", capsize=3, label=name)
        lr_axis.plot(settings.batch_sizes, [r["lr"] for r in rows], marker="o", label=name)
    for axis in (accuracy_axis, lr_axis):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size (same examples at each)")
        axis.legend()
        axis.grid(alpha=0.3)
    accuracy_axis.set_ylabel("test accuracy at the best lr (mean ± sd)")
    lr_axis.set_yscale("log")
    lr_axis.set_ylabel("best lr")
    figure.suptitle("Lion vs AdamW across batch sizes, fixed epochs")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__, "4 batch sizes (32-2048), 3 seeds, 3-point grids x3 apart, 8 epochs of 16k examples")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=start_worker, initargs=(settings.samples,)) as pool:
        searches = tune(settings, pool)
    text, summaries = report(settings, searches, args.quick, time.perf_counter() - start)
    write_report(args.output_dir, "batch_size", text)
    plot(settings, summaries, args.output_dir / "batch_size.png")
    return summaries


if __name__ == "__main__":
    main()
