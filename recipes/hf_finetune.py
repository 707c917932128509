"""Train a causal language model with Hugging Face `Trainer`, Lion and AdamW side by side.

Offline by default: a tiny GPT-2 built from `GPT2Config` learns character-level text taken from
Python's own standard-library source (`--text_modules`), so nothing is downloaded.

    python recipes/hf_finetune.py                               # lion vs adamw_torch, about 20 s on 2 CPU cores
    python recipes/hf_finetune.py --max_steps 400 --learning_rate 1e-3 --optim_args beta1=0.95,beta2=0.98
    python recipes/hf_finetune.py --optim lion_q8 --optim_args block_size=128 --compare_adamw false
    python recipes/hf_finetune.py --model_name_or_path gpt2 --learning_rate 1e-4 --block_size 128 \\
        --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1   # online: hub model and data

Learning rates: `--learning_rate` and `--weight_decay` are the AdamW setting. The Lion run uses
`lion_integrations.hparams.from_adamw(learning_rate, weight_decay, --lion_ratio)`, i.e. lr / 3 and
weight decay x 3 by default (Chen et al. 2023: ratio 3 to 10), so both runs decay equally (lr x wd).
Lion's betas come from `--optim_args beta1=...,beta2=...` (default 0.9, 0.99), not from adam_beta*.
Every `TrainingArguments` option works as on any HfArgumentParser script.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import math
import sys
from dataclasses import dataclass, field

import torch

from lion_integrations.hf import parse_optim_args  # importing registers optim="lion" for the parser
from lion_integrations import Lion
from lion_integrations.hparams import DEFAULT_RATIO, from_adamw
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

OFFLINE_DEFAULTS = dict(
    optim="lion",
    output_dir="outputs/hf_finetune",
    max_steps=120,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=3e-3,
    weight_decay=0.1,
    lr_scheduler_type="cosine",
    warmup_steps=10,
    logging_steps=20,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    disable_tqdm=True,
    seed=0,
    dataloader_num_workers=0,
    dataloader_pin_memory=torch.cuda.is_available(),
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
    try:
        import datasets
    except ImportError:
        raise SystemExit("--dataset_name needs the `datasets` package: pip install datasets") from None
    loaded = datasets.load_dataset(recipe.dataset_name, recipe.dataset_config_name)
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


def build_data(recipe: RecipeArguments, tokenizer) -> tuple[list, list, object]:
    """(train blocks, eval blocks, tokenizer); a character tokenizer when no model is named."""
    train_text, eval_text = hub_texts(recipe) if recipe.dataset_name else split_text(stdlib_text(recipe.text_modules))
    if tokenizer is None:
        tokenizer = CharTokenizer(train_text + eval_text)
    return (
        blocks(tokenizer.encode(train_text), recipe.block_size, recipe.max_train_blocks),
        blocks(tokenizer.encode(eval_text), recipe.block_size, recipe.max_eval_blocks),
        tokenizer,
    )


def build_model(recipe: RecipeArguments, vocab_size: int, seed: int):
    set_seed(seed)
    if recipe.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(recipe.model_name_or_path)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=recipe.block_size, n_embd=recipe.n_embd, n_layer=recipe.n_layer,
        n_head=recipe.n_head, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


# --- runs -------------------------------------------------------------------------------------


def run_args(args: TrainingArguments, optim: str, recipe: RecipeArguments) -> TrainingArguments:
    """TrainingArguments of one run; Lion variants get from_adamw(learning_rate, weight_decay, lion_ratio)."""
    if "lion" in optim:
        hparams = from_adamw(args.learning_rate, args.weight_decay, recipe.lion_ratio)
    else:
        hparams = {"lr": args.learning_rate, "weight_decay": args.weight_decay}
    chosen = getattr(args.optim, "value", args.optim)
    return dataclasses.replace(
        args, optim=optim, optim_args=args.optim_args if optim == chosen else None,
        learning_rate=hparams["lr"], weight_decay=hparams["weight_decay"], output_dir=f"{args.output_dir}/{optim}",
    )


def warm_up_lion(device: torch.device) -> None:
    """One Lion step on scratch tensors shaped like a model's (1-D and 2-D, requires_grad), so the
    fused path's one-time torch.compile is not timed as training."""
    scratch = [torch.zeros(8, device=device, requires_grad=True), torch.zeros(4, 8, device=device, requires_grad=True)]
    for tensor in scratch:
        tensor.grad = torch.ones_like(tensor)
    Lion(scratch).step()


def train_one(args: TrainingArguments, recipe: RecipeArguments, train, evaluation, vocab_size: int) -> dict:
    model = build_model(recipe, vocab_size, args.seed)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)
    output = trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "optim": getattr(args.optim, "value", args.optim),
        "class": type(optimizer).__name__,
        "lr": args.learning_rate,
        "weight_decay": args.weight_decay,
        "train_loss": logged[-1] if logged else output.training_loss,
        "eval_loss": trainer.evaluate()["eval_loss"],
        "seconds": output.metrics["train_runtime"],
    }


def format_table(rows: list[dict]) -> str:
    header = (f"{'optim':<14}{'optimizer':<12}{'lr':>10}{'wd':>7}{'train loss':>12}{'eval loss':>11}"
              f"{'eval ppl':>10}{'time s':>8}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['optim']:<14}{row['class']:<12}{row['lr']:>10.2e}{row['weight_decay']:>7.2f}"
            f"{row['train_loss']:>12.3f}{row['eval_loss']:>11.3f}{math.exp(row['eval_loss']):>10.2f}"
            f"{row['seconds']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse the command line, train each optimizer, print and return the comparison rows."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("lion_integrations").setLevel(logging.INFO)
    parser = HfArgumentParser((RecipeArguments, TrainingArguments))
    parser.set_defaults(**OFFLINE_DEFAULTS)
    recipe, args = parser.parse_args_into_dataclasses(args=argv)

    tokenizer = AutoTokenizer.from_pretrained(recipe.model_name_or_path) if recipe.model_name_or_path else None
    train, evaluation, tokenizer = build_data(recipe, tokenizer)
    vocab_size = len(tokenizer.vocab) if isinstance(tokenizer, CharTokenizer) else len(tokenizer)
    print(f"data: {len(train)} train / {len(evaluation)} eval blocks of {recipe.block_size} tokens "
          f"({recipe.model_name_or_path or f'tiny GPT-2, {vocab_size} characters'})")

    optims = [getattr(args.optim, "value", args.optim)]
    if recipe.compare_adamw and "adamw_torch" not in optims:
        optims.append("adamw_torch")
    if optims[0] == "lion" and parse_optim_args(args.optim_args).get("fused", "").lower() != "false":
        warm_up_lion(args.device)
    rows = [train_one(run_args(args, optim, recipe), recipe, train, evaluation, vocab_size) for optim in optims]
    print(f"\n{args.max_steps} steps, batch {args.per_device_train_batch_size}, AdamW setting lr="
          f"{args.learning_rate:g} wd={args.weight_decay:g}; Lion lr/wd by from_adamw(ratio={recipe.lion_ratio:g}); "
          "time = train_runtime")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
