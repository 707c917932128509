"""Train a causal language model with Hugging Face `Trainer`, Lion and AdamW side by side.

Offline by default: a tiny GPT-2 built from `GPT2Config` learns character-level text taken from
Python's own standard-library source (`--text_modules`), so nothing is downloaded.

    python recipes/hf_finetune.py                               # lion vs adamw_torch, about 20 s on 2 CPU cores
    python recipes/hf_finetune.py --max_steps 400 --learning_rate 1e-3 --optim_args beta1=0.95,beta2=0.98
    python recipes/hf_finetune.py --optim lion_q8 --optim_args block_size=128 --compare_adamw false
    python recipes/hf_finetune.py --dtype bfloat16              # pure bf16 weights; Lion keeps a Kahan buffer
    python recipes/hf_finetune.py --model_name_or_path gpt2 --learning_rate 1e-4 --block_size 128 \\
        --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1   # online: hub model and data

Learning rates: `--learning_rate` and `--weight_decay` are the AdamW setting. The Lion run uses
`lion_integrations.hparams.from_adamw(learning_rate, weight_decay, --lion_ratio)`, i.e. lr / 3 and
weight decay x 3 by default (Chen et al. 2023: ratio 3 to 10), so both runs decay equally (lr x wd).
Lion's betas come from `--optim_args beta1=...,beta2=...` (default 0.9, 0.99), not from adam_beta*.
Every `TrainingArguments` option works as on any HfArgumentParser script.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `recipes.*`, this checkout's package

from lion_integrations.hparams import DEFAULT_RATIO  # noqa: E402
from recipes.common import (  # noqa: E402
    WEIGHT_STORE_MEANINGS, Column, format_table, require_datasets, show_lion_logs,
)
from recipes.trainer_runs import (  # noqa: E402
    RUN_COLUMNS, RUN_DEFAULTS, TIME_COLUMN, WEIGHTS_COLUMN, optim_name, parse_arguments, run_args, train_one,
)
from transformers import (  # noqa: E402
    AutoModelForCausalLM, AutoTokenizer, GPT2Config, TrainingArguments, set_seed,
)

OFFLINE_DEFAULTS = dict(
    RUN_DEFAULTS,
    output_dir="outputs/hf_finetune",
    max_steps=120,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=3e-3,
    weight_decay=0.1,
    lr_scheduler_type="cosine",
    warmup_steps=10,
    logging_steps=20,
)

COLUMNS = (
    *RUN_COLUMNS,
    Column("wd", 7, itemgetter("weight_decay"), ".2f"),
    Column("train loss", 12, itemgetter("train_loss"), ".3f"),
    Column("eval loss", 11, itemgetter("eval_loss"), ".3f"),
    Column("eval ppl", 10, lambda row: math.exp(row["eval_loss"]), ".2f"),
    TIME_COLUMN,
    WEIGHTS_COLUMN,
)


@dataclass
class RecipeArguments:
    """Model, data and comparison options (TrainingArguments holds the rest)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub model to fine-tune (online). Default: a tiny GPT-2 from a config."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset with a 'text' column (needs `datasets`, online)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of --dataset_name."})
    text_modules: str = field(
        default="inspect,textwrap", metadata={"help": "Standard-library modules whose source is the offline text."}
    )
    block_size: int = field(default=64, metadata={"help": "Tokens per training example."})
    max_train_blocks: int = field(default=4000, metadata={"help": "Cap on training examples."})
    max_eval_blocks: int = field(default=200, metadata={"help": "Cap on evaluation examples."})
    n_embd: int = field(default=64, metadata={"help": "Tiny GPT-2 width (offline model only)."})
    n_layer: int = field(default=2, metadata={"help": "Tiny GPT-2 depth (offline model only)."})
    n_head: int = field(default=4, metadata={"help": "Tiny GPT-2 attention heads (offline model only)."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Load the model in this dtype, as from_pretrained(dtype=...) and from_config(dtype=...) do "
            "('auto': the checkpoint's; default: from_pretrained's own, float32 for the offline tiny GPT-2). "
            "bfloat16 trains in pure bf16 (leave --bf16 off, that is autocast over fp32 weights): Lion then "
            "keeps each weight's rounding error in a Kahan buffer (kahan_sum); --optim_args "
            "stochastic_rounding=true rounds at random instead.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    compare_adamw: bool = field(default=True, metadata={"help": "Also train with adamw_torch and compare."})
    lion_ratio: float = field(
        default=DEFAULT_RATIO,
        metadata={"help": "Lion lr = learning_rate / ratio, weight decay = weight_decay * ratio."},
    )


# --- data -------------------------------------------------------------------------------------


def stdlib_text(module_names: str) -> str:
    """The source code of the named standard-library modules, concatenated."""
    return "\n".join(inspect.getsource(importlib.import_module(name.strip())) for name in module_names.split(","))


def hub_texts(recipe: RecipeArguments) -> tuple[str, str]:
    """(train, eval) text of a hub dataset; eval is its validation split when it has one."""
    loaded = require_datasets().load_dataset(recipe.dataset_name, recipe.dataset_config_name)
    train = "\n".join(loaded["train"]["text"])
    eval_split = next((loaded[name] for name in ("validation", "test") if name in loaded), None)
    return (train, "\n".join(eval_split["text"])) if eval_split is not None else split_text(train)


def split_text(text: str, eval_fraction: float = 0.1) -> tuple[str, str]:
    cut = int(len(text) * (1 - eval_fraction))
    return text[:cut], text[cut:]


def blocks(ids: list[int], block_size: int, limit: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive non-overlapping blocks as causal-LM examples (labels = inputs; the model shifts)."""
    count = min(len(ids) // block_size, limit)
    tensor = torch.tensor(ids[: count * block_size]).view(count, block_size)
    return [{"input_ids": row, "labels": row} for row in tensor]


class CharTokenizer:
    """Character-level vocabulary of a text (the offline tiny model's tokenizer)."""

    def __init__(self, text: str) -> None:
        self.vocab = sorted(set(text))
        self.index = {char: i for i, char in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        return [self.index[char] for char in text if char in self.index]


def build_data(recipe: RecipeArguments) -> tuple[list, list, int]:
    """(train blocks, eval blocks, vocabulary size), tokenized by the hub model's tokenizer, else by
    a character tokenizer of the text."""
    tokenizer = AutoTokenizer.from_pretrained(recipe.model_name_or_path) if recipe.model_name_or_path else None
    train_text, eval_text = hub_texts(recipe) if recipe.dataset_name else split_text(stdlib_text(recipe.text_modules))
    if tokenizer is None:
        tokenizer = CharTokenizer(train_text + eval_text)
    vocab_size = len(tokenizer.vocab) if isinstance(tokenizer, CharTokenizer) else len(tokenizer)
    return (
        blocks(tokenizer.encode(train_text), recipe.block_size, recipe.max_train_blocks),
        blocks(tokenizer.encode(eval_text), recipe.block_size, recipe.max_eval_blocks),
        vocab_size,
    )


def build_model(recipe: RecipeArguments, vocab_size: int, seed: int):
    """The hub model, else a tiny GPT-2 from a config, in `--dtype`; initialized from `seed` (alike for
    every run)."""
    set_seed(seed)
    dtype = recipe.dtype if recipe.dtype in (None, "auto") else getattr(torch, recipe.dtype)
    if recipe.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(recipe.model_name_or_path, **({"dtype": dtype} if dtype is not None else {}))
    else:
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=recipe.block_size, n_embd=recipe.n_embd, n_layer=recipe.n_layer,
            n_head=recipe.n_head, bos_token_id=0, eos_token_id=0,
        )
        # from_config takes a torch dtype only; without one it builds in the config's own ('auto').
        model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype not in (None, "auto") else {}))
    if isinstance(dtype, torch.dtype) and model.dtype != dtype:  # transformers before 4.56 reads torch_dtype only
        raise SystemExit(f"--dtype {recipe.dtype}: the model was built in {model.dtype}; needs transformers >= 4.56")
    return model


# --- stages -----------------------------------------------------------------------------------


def optims_to_compare(args: TrainingArguments, recipe: RecipeArguments) -> list[str]:
    """--optim, then adamw_torch unless --compare_adamw false (or it is --optim already)."""
    optims = [optim_name(args)]
    if recipe.compare_adamw and "adamw_torch" not in optims:
        optims.append("adamw_torch")
    return optims


def train_all(args: TrainingArguments, recipe: RecipeArguments, train: list, evaluation: list, vocab_size: int) -> list[dict]:
    """One row per optimizer (`trainer_runs.train_one`), each from the same initialization and batch order."""
    optims = optims_to_compare(args, recipe)
    rows = []
    for optim in optims:
        run = run_args(args, optim, recipe.lion_ratio)
        model = build_model(recipe, vocab_size, run.seed)
        rows.append(train_one(run, model, train_dataset=train, eval_dataset=evaluation))
    return rows


def report(args: TrainingArguments, recipe: RecipeArguments, rows: list[dict]) -> None:
    """The setting of the runs and the comparison table."""
    print(f"\n{args.max_steps} steps, batch {args.per_device_train_batch_size}, AdamW setting lr="
          f"{args.learning_rate:g} wd={args.weight_decay:g}; Lion lr/wd by from_adamw(ratio={recipe.lion_ratio:g}); "
          "time = train_runtime")
    print(format_table(rows, COLUMNS))
    stores = dict.fromkeys(kind.split()[1] for row in rows for kind in row["weights"] if " " in kind)
    for store in stores:  # bf16/fp16 weights: what each optimizer does with updates smaller than their spacing
        print(f"{store}: {WEIGHT_STORE_MEANINGS[store]}")


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse the command line, train each optimizer, print and return the comparison rows."""
    show_lion_logs()
    recipe, args = parse_arguments(RecipeArguments, OFFLINE_DEFAULTS, argv)
    train, evaluation, vocab_size = build_data(recipe)
    print(f"data: {len(train)} train / {len(evaluation)} eval blocks of {recipe.block_size} tokens "
          f"({recipe.model_name_or_path or f'tiny GPT-2, {vocab_size} characters'})")
    rows = train_all(args, recipe, train, evaluation, vocab_size)
    report(args, recipe, rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
