"""A launch whose processes do not form one data-parallel Trainer run, said before the first step.

``torchrun --nproc-per-node 2 train.py`` on a machine without GPUs starts two processes (WORLD_SIZE=2),
but without ``--use_cpu`` Accelerate gives each Trainer a world of one process: each trains the whole
data set as process zero, writing to the same ``output_dir``, and nothing fails.
"""

from __future__ import annotations

import os
import warnings

from transformers.training_args import TrainingArguments


def launched_processes() -> int:
    """The number of processes the launcher started (its WORLD_SIZE; 1 without a launcher)."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else 1


def warn_if_ranks_train_alone(args: TrainingArguments) -> None:
    """RuntimeWarning when the launcher started more processes than Trainer's world holds."""
    launched = launched_processes()
    if launched > args.world_size:
        warnings.warn(
            f"The launcher started {launched} processes (WORLD_SIZE={launched}) but Trainer's world has "
            f"world_size={args.world_size}: each process trains the whole data set on its own as process zero, "
            "writing to the same output_dir. On a machine without GPUs pass --use_cpu (use_cpu=True) so that the "
            "processes train data-parallel (gloo)",
            RuntimeWarning,
            stacklevel=2,
        )
