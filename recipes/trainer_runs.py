"""Hugging Face Trainer recipes: one run per optim name from the same TrainingArguments, one row each.

`--learning_rate` and `--weight_decay` are the AdamW setting; a Lion run (any optim name containing
"lion") uses `lion_integrations.hparams.from_adamw(learning_rate, weight_decay, lion_ratio)`
instead: lr / ratio and weight decay x ratio, so lr x weight decay stays the same.
"""

from __future__ import annotations

import dataclasses
from operator import itemgetter

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from lion_integrations.hf import parse_optim_args  # importing registers optim="lion" for the parser
from lion_integrations.hf.options import parse_value
from lion_integrations.hf.run_length import will_compile
from lion_integrations.hparams import from_adamw
from recipes.common import Column, warm_up_lion, weight_stores

# TrainingArguments every offline comparison shares: optim="lion" first, no checkpoints, no evaluation
# or reporting during training (evaluation runs once, after it), seeded, data loaded in-process.
RUN_DEFAULTS = dict(
    optim="lion",
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    disable_tqdm=True,
    seed=0,
    dataloader_num_workers=0,
    dataloader_pin_memory=torch.cuda.is_available(),
)

# The columns every comparison table starts and ends with (the rows of `train_one`).
RUN_COLUMNS = (
    Column("optim", 14, itemgetter("optim"), align="<"),
    Column("optimizer", 12, itemgetter("class"), align="<"),
    Column("lr", 10, itemgetter("lr"), ".2e"),
)
TIME_COLUMN = Column("time s", 8, itemgetter("seconds"), ".1f")
WEIGHTS_COLUMN = Column("  weights", 20, lambda row: "  " + ", ".join(row["weights"]), align="<")


def parse_arguments(recipe_class: type, defaults: dict, argv: list[str] | None):
    """(recipe arguments, TrainingArguments) from `argv`, over the recipe's `defaults`."""
    parser = HfArgumentParser((recipe_class, TrainingArguments))
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)


def optim_name(args: TrainingArguments) -> str:
    """`args.optim` as a string (TrainingArguments holds transformers' own names as enum members)."""
    return getattr(args.optim, "value", args.optim)


def run_args(args: TrainingArguments, optim: str, lion_ratio: float) -> TrainingArguments:
    """TrainingArguments of the run of `optim`: Lion variants get from_adamw(learning_rate,
    weight_decay, lion_ratio); `optim_args` go to the chosen `--optim` only; outputs to <output_dir>/<optim>."""
    if "lion" in optim:
        hparams = from_adamw(args.learning_rate, args.weight_decay, lion_ratio)
    else:
        hparams = {"lr": args.learning_rate, "weight_decay": args.weight_decay}
    return dataclasses.replace(
        args, optim=optim, optim_args=args.optim_args if optim == optim_name(args) else None,
        learning_rate=hparams["lr"], weight_decay=hparams["weight_decay"], output_dir=f"{args.output_dir}/{optim}",
    )


def warm_up_fused_lion(args: TrainingArguments, model) -> None:
    """`warm_up_lion` when the optimizer `args` build for `model` compiles the fused kernel on its
    first step (`lion_integrations.hf.run_length.will_compile`), so that compiling is not timed."""
    options = {key: parse_value(value) for key, value in parse_optim_args(args.optim_args).items()}
    if will_compile(optim_name(args), args.max_steps, model, options):
        warm_up_lion(args.device)


def train_one(args: TrainingArguments, model, metric_names: tuple[str, ...] = ("eval_loss",), **trainer_options) -> dict:
    """Train `model` with a `Trainer(model, args, **trainer_options)`, then evaluate it once.

    The row: optim; class and optimizer_cls of the optimizer the Trainer built; lr and weight_decay;
    weights (how it stores them, `common.weight_stores`) and state_keys (the keys of its per-parameter
    state); train_loss (the last logged, else the run's mean); the evaluation's `metric_names`; steps;
    and seconds (train_runtime, so not the evaluation, nor the fused kernel's compile: `warm_up_fused_lion`).
    """
    warm_up_fused_lion(args, model)
    trainer = Trainer(model=model, args=args, **trainer_options)
    output = trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = trainer.evaluate()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "optim": optim_name(args),
        "class": type(optimizer).__name__,
        "optimizer_cls": type(optimizer),
        "lr": args.learning_rate,
        "weight_decay": args.weight_decay,
        "weights": weight_stores(optimizer),
        "state_keys": sorted({key for state in optimizer.state.values() for key in state}),
        "train_loss": logged[-1] if logged else output.training_loss,
        **{name: metrics[name] for name in metric_names},
        "steps": trainer.state.global_step,
        "seconds": output.metrics["train_runtime"],
    }
