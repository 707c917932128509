"""What Lion buys you, side by side with AdamW on one task: quality, memory and step time (`make demo`).

    python recipes/demo.py                        # about 20 s on one CPU core
    python recipes/demo.py --steps 300 --batch_size 32

Task: the tiny GPT-2 of recipes/hf_finetune.py (about 110k parameters) learning character-level text
of standard-library source, in a plain PyTorch loop on one thread (hf_finetune.py trains the same
task through Trainer). Every run starts from the same initialization and sees the same batches;
linear warmup over a tenth of the steps, then cosine decay.

Tuning, the same budget for each optimizer: the lrs `--lr_factors` (default 1/3, 1, 3) times its
starting lr: AdamW's is `--adamw_lr`, Lion's and Lion8bit's its `hparams.from_adamw` translation
(lr / 3, the low end of the paper's ratio of 3-10). Every point decays weights by the same lr x
weight decay per step (`--decay_per_step`), as `from_adamw` keeps it. The lr with the best
validation loss is reported with its test loss (validation and test: the two halves of held-out
text), so choosing it does not peek at the figure shown; "edge" marks a best lr at the end of its grid.

Columns:
  test loss        cross-entropy per character on held-out text at the chosen lr (lower is better)
  state B/param    bytes of optimizer state per parameter: every tensor in `optimizer.state`
  peak MiB         peak tensor memory of training: the model, gradients, optimizer state, activations
                   and temporaries, over building the model and optimizer and two training steps
                   (recipes/peak_memory.py: CUDA's allocator statistics; on CPU the profiler's events
                   of every allocation and free)
  step / AdamW     a whole training step (forward, backward, optimizer step) against AdamW's
  opt step / AdamW the optimizer step alone against AdamW's
Times are CPU times on the one thread (other jobs on the machine do not count), the fastest of
interleaved rounds (recipes.common.interleaved_seconds). AdamW is torch's
fused AdamW, its fastest; Lion takes the path `lion_integrations.hf.run_length` picks for this run's
length (as under Trainer), Lion8bit its fused path.
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
import sys
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `recipes.*`, this checkout's package

from lion_integrations import Lion, Lion8bit  # noqa: E402
from lion_integrations.hf.run_length import short_run  # noqa: E402
from lion_integrations.hparams import from_adamw, param_groups  # noqa: E402
from lion_integrations.schedules import warmup_cosine  # noqa: E402
from recipes.common import Column, format_table, interleaved_seconds, state_bytes_per_param  # noqa: E402
from recipes.hf_finetune import RecipeArguments, build_data, build_model  # noqa: E402
from recipes.peak_memory import MIB, PeakMemory  # noqa: E402

OPTIMIZERS = ("AdamW", "Lion", "Lion8bit")
TIMING_ROUNDS = 30

COLUMNS = (
    Column("optimizer", 10, itemgetter("name"), align="<"),
    Column("best lr", 14, lambda row: f"{row['lr']:.1e}{' edge' if row['edge'] else ''}"),
    Column("test loss", 11, itemgetter("test_loss"), ".3f"),
    Column("state B/param", 15, itemgetter("state_bytes"), ".2f"),
    Column("peak MiB", 10, lambda row: row["peak_bytes"] / MIB, ".1f"),
    Column("step / AdamW", 14, itemgetter("step_ratio"), ".2f"),
    Column("opt step / AdamW", 18, itemgetter("optimizer_step_ratio"), ".2f"),
)


@dataclass(frozen=True)
class Task:
    """The data, the model's recipe and the run's length, shared by every run."""

    recipe: RecipeArguments
    train: torch.Tensor  # (blocks, block_size) character ids
    validation: torch.Tensor
    test: torch.Tensor
    vocab_size: int
    batch_size: int
    steps: int
    seed: int

    def model(self) -> nn.Module:
        return build_model(self.recipe, self.vocab_size, self.seed)

    def batches(self):
        """`steps` batches of `batch_size` blocks, in one shuffled order (the same for every run)."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.cat([torch.randperm(len(self.train), generator=generator)
                           for _ in range(math.ceil(self.steps * self.batch_size / len(self.train)))])
        for step in range(self.steps):
            yield self.train[order[step * self.batch_size:(step + 1) * self.batch_size]]


def loss_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, batch_size: int = 50) -> float:
    """Mean cross-entropy per character of `ids`, in batches."""
    model.eval()
    losses = [loss_of(model, ids[start:start + batch_size]).item() * len(ids[start:start + batch_size])
              for start in range(0, len(ids), batch_size)]
    model.train()
    return sum(losses) / len(ids)


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, steps: int) -> torch.optim.Optimizer:
    """`name`'s optimizer over `model`, with no decay on norms and biases (`hparams.param_groups`)."""
    groups = param_groups(model, weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if name == "Lion":
        trainable = [p for p in model.parameters() if p.requires_grad]
        return Lion(groups, lr=lr, fused=False if short_run("lion", steps, trainable, {}) else None)
    return Lion8bit(groups, lr=lr)


def lr_grid(name: str, adamw_lr: float, factors: list[float]) -> list[float]:
    """`factors` times `name`'s starting lr: `adamw_lr` for AdamW, `from_adamw(adamw_lr)`'s for Lion's variants."""
    start = adamw_lr if name == "AdamW" else from_adamw(adamw_lr)["lr"]
    return [start * factor for factor in sorted(factors)]


def train(task: Task, name: str, lr: float, decay_per_step: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model trained with `name` at `lr` and weight decay `decay_per_step / lr`."""
    model = task.model()
    optimizer = build_optimizer(name, model, lr, decay_per_step / lr, task.steps)
    schedule = warmup_cosine(optimizer, warmup_steps=max(1, task.steps // 10), total_steps=task.steps)
    for ids in task.batches():
        loss_of(model, ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model, optimizer


def tune(task: Task, name: str, lrs: list[float], decay_per_step: float) -> dict:
    """Train at each lr; the row of the lr with the lowest validation loss, with its trained model."""
    runs = []
    for lr in lrs:
        model, optimizer = train(task, name, lr, decay_per_step)
        runs.append(dict(name=name, lr=lr, validation_loss=evaluate(model, task.validation), model=model, optimizer=optimizer))
    print(f"  {name:9s}" + " | ".join(f"lr {run['lr']:.1e}: val {run['validation_loss']:.3f}" for run in runs), flush=True)
    best = min(runs, key=itemgetter("validation_loss"))
    return {**best, "edge": len(runs) > 1 and best["lr"] in (lrs[0], lrs[-1]), "test_loss": evaluate(best["model"], task.test),
            "state_bytes": state_bytes_per_param(best["optimizer"], list(best["model"].parameters()))}


def peak_training_bytes(task: Task, name: str, lr: float, decay_per_step: float) -> int:
    """Peak tensor bytes of building the model and `name`'s optimizer and taking two training steps
    (the first creates the optimizer state; the second runs with every buffer in place)."""
    batch = next(task.batches())
    with PeakMemory("cpu") as peak:
        model = task.model()
        optimizer = build_optimizer(name, model, lr, decay_per_step / lr, task.steps)
        for _ in range(2):
            loss_of(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return peak.bytes


def step_seconds(task: Task, rows: list[dict]) -> dict[str, dict[str, float]]:
    """Fastest whole training step and optimizer step of each row's trained model and optimizer."""
    batch = next(task.batches())

    def training_step(model, optimizer):
        def run():
            loss_of(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    whole = interleaved_seconds({row["name"]: training_step(row["model"], row["optimizer"]) for row in rows},
                                TIMING_ROUNDS, clock=time.process_time)
    for row in rows:  # gradients left in place, so that step() alone can be timed
        loss_of(row["model"], batch).backward()
    alone = interleaved_seconds({row["name"]: row["optimizer"].step for row in rows}, TIMING_ROUNDS * 4,
                                clock=time.process_time)
    return {"step": whole, "optimizer_step": alone}


def factors(text: str) -> list[float]:
    """'1/3,1,3' -> [0.333..., 1.0, 3.0]."""
    return [float(Fraction(entry)) for entry in text.split(",")]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of every run (default 100)")
    parser.add_argument("--batch_size", type=int, default=16, help="blocks of --block_size characters a step (default 16)")
    parser.add_argument("--block_size", type=int, default=32, help="characters a block (default 32)")
    parser.add_argument("--adamw_lr", type=float, default=3e-3, help="AdamW's starting lr (default 3e-3)")
    parser.add_argument("--decay_per_step", type=float, default=3e-4,
                        help="lr x weight decay of every run (default 3e-4: AdamW's 3e-3 x 0.1)")
    parser.add_argument("--lr_factors", type=factors, default=factors("1/3,1,3"),
                        help="multiples of each optimizer's starting lr that it tries (default 1/3,1,3)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_task(args: argparse.Namespace) -> Task:
    """hf_finetune's offline data as tensors: held-out blocks split in half, validation then test."""
    recipe = RecipeArguments(block_size=args.block_size)
    train_blocks, held_out, vocab_size = build_data(recipe)
    stack = lambda blocks: torch.stack([block["input_ids"] for block in blocks])  # noqa: E731
    held_out_ids = stack(held_out)
    half = len(held_out_ids) // 2
    return Task(recipe, stack(train_blocks), held_out_ids[:half], held_out_ids[half:], vocab_size,
                args.batch_size, args.steps, args.seed)


def report(rows: list[dict], parameters: int) -> None:
    print()
    print(format_table(rows, COLUMNS))
    adamw = next(row for row in rows if row["name"] == "AdamW")
    for row in rows:
        if row["name"] != "AdamW":
            peak_change = (row["peak_bytes"] - adamw["peak_bytes"]) / MIB
            print(f"{row['name']}: test loss {row['test_loss'] - adamw['test_loss']:+.3f} against AdamW's; optimizer "
                  f"state {row['state_bytes'] / adamw['state_bytes']:.0%} of AdamW's "
                  f"({(adamw['state_bytes'] - row['state_bytes']) * parameters / MIB:.2f} MiB less); peak "
                  f"{abs(peak_change):.2f} MiB {'below' if peak_change <= 0 else 'above'} AdamW's")
    print(f"Optimizer state is {adamw['state_bytes'] * parameters / adamw['peak_bytes']:.0%} of AdamW's peak here: "
          "at this size activations dominate. Where state dominates (large models, small batches) and the "
          "largest model that fits: benchmarks/memory.py. Across batch sizes: benchmarks/batch_size.py.")


def main(argv: list[str] | None = None) -> list[dict]:
    """Tune and train each optimizer, measure memory and step time, print the table; returns its rows."""
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)  # a model this small: more threads cost more than they give
    args = parse_arguments(argv)
    task = build_task(args)
    parameters = sum(p.numel() for p in task.model().parameters())
    print(f"Lion vs AdamW on one task: a tiny GPT-2 ({parameters:,} parameters) learning standard-library source, "
          f"{task.steps} steps of {task.batch_size} x {args.block_size} characters, one seed.\n"
          f"Each optimizer tries {len(args.lr_factors)} lrs (lr x weight decay = {args.decay_per_step:g}); "
          "the best by validation loss is shown with its test loss:", flush=True)
    rows = [tune(task, name, lr_grid(name, args.adamw_lr, args.lr_factors), args.decay_per_step)
            for name in OPTIMIZERS]
    for row in rows:
        row["peak_bytes"] = peak_training_bytes(task, row["name"], row["lr"], args.decay_per_step)
    times = step_seconds(task, rows)
    for row in rows:
        row["step_ratio"] = times["step"][row["name"]] / times["step"]["AdamW"]
        row["optimizer_step_ratio"] = times["optimizer_step"][row["name"]] / times["optimizer_step"]["AdamW"]
    report(rows, parameters)
    print(f"({time.perf_counter() - start:.0f} s, {time.process_time() - cpu_start:.0f} s of CPU)")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
