"""A tiny GPT-2 on character blocks of a stdlib source file, TrainingArguments for it, and readers of
the Trainer's optimizer and losses. Import after ``pytest.importorskip("transformers")``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


TINY_GPT2 = dict(n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)


BLOCK = 32


def char_blocks(n_blocks: int = 64) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Character-level blocks of `textwrap`'s own source: (examples, vocab size)."""
    text = Path(textwrap.__file__).read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    blocks = [ids[i * BLOCK:(i + 1) * BLOCK] for i in range(n_blocks)]
    return [{"input_ids": b, "labels": b} for b in blocks], len(vocab)


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **TINY_GPT2))


def training_args(output_dir: Path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(output_dir), optim="lion", learning_rate=1e-3, weight_decay=0.1,
        per_device_train_batch_size=8, max_steps=30, logging_steps=5, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, use_cpu=True, dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    return TrainingArguments(**{**options, **overrides})


def unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The user's optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
