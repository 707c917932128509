"""Worker for tests/deepspeed/test_trainer.py: Hugging Face Trainer with ``fsdp="full_shard"``,
``fsdp_config={"fsdp_version": 2}``, optim="lion_q8" and use_cpu=True on 2 CPU processes.

    torchrun --nproc-per-node=2 trainer_fsdp2.py DIR REPORT.json

What it measures is what blocks FSDP2 under Trainer on CPU: the model Trainer trains (its wrapper,
whether its parameters are DTensors), the warning lion_integrations gives, the optimizer state, and
that a resume from the step-4 checkpoint still ends where the uninterrupted run does. Rank 0 writes
REPORT.json.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from transformers import Trainer, TrainingArguments

from deepspeed_hf import char_blocks, tiny_gpt2  # noqa: E402  (next to this script)
from worker_exit import exit_now, write_report_on_rank0  # noqa: E402  (next to this script)

torch.set_num_threads(1)


def weights(model) -> torch.Tensor:
    return torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().reshape(-1) for p in model.parameters()])


def main() -> None:
    directory, report_path = Path(sys.argv[1]), sys.argv[2]
    examples, vocab = char_blocks()
    options = dict(
        optim="lion_q8", optim_args="min_quantized_size=256", learning_rate=1e-3, weight_decay=0.1,
        per_device_train_batch_size=4, max_steps=8, save_strategy="steps", save_steps=4, report_to="none",
        disable_tqdm=True, seed=0, use_cpu=True, lr_scheduler_type="constant", fsdp="full_shard",
        fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"]},
    )
    trainer = Trainer(model=tiny_gpt2(vocab, 0), args=TrainingArguments(output_dir=str(directory / "a"), **options),
                      train_dataset=examples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    report = {
        "world": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "model_wrapper": type(trainer.model_wrapped).__name__,
        "params_are_dtensors": any(isinstance(p, DTensor) for p in params),
        "optimizer_class": type(optimizer).__name__,
        "quantized_params": sum("exp_avg_codes" in optimizer.state[p] for p in params),
        "warnings": [str(w.message) for w in caught if "fsdp" in str(w.message)],
    }
    resumed = Trainer(model=tiny_gpt2(vocab, 1), args=TrainingArguments(output_dir=str(directory / "b"), **options),
                      train_dataset=examples)
    resumed.train(resume_from_checkpoint=str(directory / "a" / "checkpoint-4"))
    report["resumed_equals_uninterrupted"] = bool(torch.equal(weights(resumed.model), weights(trainer.model)))
    write_report_on_rank0(report_path, report)


if __name__ == "__main__":
    main()
    exit_now()
