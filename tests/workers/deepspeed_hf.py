"""Worker for tests/deepspeed/test_trainer.py: Hugging Face Trainer with ``deepspeed=<ZeRO config dict>`` and
optim="lion" / "lion_q8" / "lion_q4" under torchrun, on DeepSpeed's CPU accelerator.

    torchrun --nproc-per-node=2 deepspeed_hf.py OPTIM:STAGE[,OPTIM:STAGE...] USE_CPU DIR REPORT.json

For each OPTIM (lion, lion_q8, lion_q4) and ZeRO STAGE, in one launch: trains a tiny GPT-2 for 8
steps, saving a checkpoint at step 4, then resumes a fresh Trainer (other initial weights) from it
with ``resume_from_checkpoint`` and trains to step 8. USE_CPU is 1 or 0
(`TrainingArguments(use_cpu=...)`). Each rank writes REPORT.json.RANK, {"OPTIM:STAGE": ...}: whether it is the world's
process zero, the world size Trainer sees, the examples it trained on, the optimizer's state on the
flat partitions, and whether the resumed run ends with the uninterrupted run's weights; or, when
`lion_integrations.hf` refuses the arguments, the error.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import lion_integrations.hf  # noqa: F401  (registers optim="lion", "lion_q8", "lion_q4")
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)
BLOCK = 32


def char_blocks(n_blocks: int = 64):
    text = Path(textwrap.__file__).read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    return [{"input_ids": ids[i * BLOCK:(i + 1) * BLOCK], "labels": ids[i * BLOCK:(i + 1) * BLOCK]}
            for i in range(n_blocks)], len(vocab)


def tiny_gpt2(vocab_size: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=64, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def zero_config(stage: int) -> dict:
    return {
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": 10**9,
    }


def full_weights(model) -> torch.Tensor:
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return torch.cat([p.detach().reshape(-1).clone().float() for p in params])


def run(optim: str, stage: int, use_cpu: bool, directory: Path) -> dict:
    examples, vocab = char_blocks()
    options = dict(
        optim=optim, optim_args="fused=false" if optim == "lion" else "min_quantized_size=256",
        learning_rate=1e-3, weight_decay=0.1, per_device_train_batch_size=4, max_steps=8,
        save_strategy="steps", save_steps=4, logging_steps=4, report_to="none", disable_tqdm=True, seed=0,
        use_cpu=use_cpu, dataloader_num_workers=0, lr_scheduler_type="constant",
        deepspeed=zero_config(stage),
    )
    seen: list[str] = []  # the token ids of each example this rank trained on
    args = TrainingArguments(output_dir=str(Path(directory) / "a"), **options)
    trainer = Trainer(model=tiny_gpt2(vocab, 0), args=args, train_dataset=examples)
    original_training_step = trainer.training_step

    def training_step(model, inputs, *rest, **kwargs):
        seen.extend(" ".join(map(str, row.tolist())) for row in inputs["input_ids"])
        return original_training_step(model, inputs, *rest, **kwargs)

    trainer.training_step = training_step
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        trainer.train()
    except ValueError as error:  # our check of the arguments, when Trainer does not see every process
        return {"rank": rank, "error": str(error)}
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO optimizer -> ours
    partitions = list(inner.state.keys())
    state_bytes = sum(v.numel() * v.element_size() for s in inner.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor))
    report = {
        "rank": rank,
        "torch_world": dist.get_world_size() if dist.is_initialized() else 1,
        "trainer_world": args.world_size,
        "is_world_process_zero": trainer.is_world_process_zero(),
        "distributed_type": str(trainer.accelerator.distributed_type),
        "deepspeed_engine": type(trainer.model_wrapped).__name__,
        "optimizer_class": type(inner).__name__,
        "examples_seen": seen,
        "state_keys": sorted({k for s in inner.state.values() for k in s}),
        "partition_numel": sum(p.numel() for p in partitions),
        "model_numel": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainer.model.parameters()),
        "bytes_per_param": state_bytes / max(1, sum(p.numel() for p in partitions)),
    }
    weights = full_weights(trainer.model)

    resumed_args = TrainingArguments(output_dir=str(Path(directory) / "b"), **options)
    resumed = Trainer(model=tiny_gpt2(vocab, 1), args=resumed_args, train_dataset=examples)
    resumed.train(resume_from_checkpoint=str(Path(directory) / "a" / "checkpoint-4"))
    report["resumed_equals_uninterrupted"] = bool(torch.equal(full_weights(resumed.model), weights))
    return report


def main() -> None:
    runs, use_cpu, directory, report_path = sys.argv[1:5]
    report = {}
    for item in runs.split(","):
        optim, stage = item.split(":")
        report[item] = run(optim, int(stage), use_cpu == "1", Path(directory) / optim / stage)
    rank = dist.get_rank() if dist.is_initialized() else 0
    Path(f"{report_path}.{rank}").write_text(json.dumps(report))
    if dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    main()
    exit_now()
