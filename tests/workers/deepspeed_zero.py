"""Worker for tests/deepspeed/test_zero.py: Lion, Lion8bit, Lion4bit as DeepSpeed ZeRO's client optimizer
(DeepSpeed's CPU accelerator, gloo, under torchrun).

    torchrun --nproc-per-node=2 deepspeed_zero.py train STAGE VARIANT[,VARIANT...] DIR REPORT.json [CONFIG_JSON]
    torchrun --nproc-per-node=1 deepspeed_zero.py resize STAGE VARIANT DIR REPORT.json

`train`, for each VARIANT (lion, lion_q8, lion_q4) in turn, one launch for all (DeepSpeed's start-up
is most of the time): `deepspeed.initialize(model=..., optimizer=VARIANT(...), config=ZeRO STAGE)`, 8 steps with
each rank on its own batches; a checkpoint by `engine.save_checkpoint` after step 4. Measures the
optimizer state on each rank's flat partitions (bytes per element, quantized or not), the ranks'
weights (identical?), the share of weights that differ from one process stepping the same class on
the same global batches, and then resumes a fresh engine from the checkpoint by
`engine.load_checkpoint`: its state must equal the one saved and steps 5-8 must reproduce the
uninterrupted weights bit for bit. CONFIG_JSON is merged into the DeepSpeed config.

`resize`: loads the 2-process checkpoint that `train` left in DIR/VARIANT into 1 process and reports
the error (DeepSpeed's, or ours) as text.

Rank 0 writes REPORT.json: {VARIANT: what it measured} for `train`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from lion_integrations import Lion, Lion4bit, Lion8bit
from lion_integrations.hparams import param_groups
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)
CLASSES = {"lion": Lion, "lion_q8": Lion8bit, "lion_q4": Lion4bit}
STEPS, SAVE_AFTER, BATCH = 8, 4, 8


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # About 85k parameters, 42k per rank: biases and the norm weight sit in the no-decay group's
    # partition (516 elements per rank).
    return nn.Sequential(
        nn.Linear(64, 256), nn.LayerNorm(256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 8),
    )


def make_optimizer(variant: str, model: nn.Module):
    options = {"fused": False} if variant == "lion" else {"min_quantized_size": 256}
    return CLASSES[variant](param_groups(model, 0.1), lr=1e-3, **options)


def config(stage: int, extra: dict) -> dict:
    """ZeRO `stage`, with `extra`'s top-level keys added and its "zero_optimization" merged in."""
    extra = dict(extra)
    return {
        "train_micro_batch_size_per_gpu": BATCH,
        "zero_optimization": {"stage": stage, **extra.pop("zero_optimization", {})},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        **extra,
    }


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(BATCH, 64, generator=torch.Generator().manual_seed(100 * step + rank))


def loss_of(model, inputs):
    return model(inputs).sin().pow(2).mean()


def train_steps(engine, start: int, stop: int) -> None:
    for step in range(start, stop):
        loss = loss_of(engine, batch(step, dist.get_rank()))
        engine.backward(loss)
        engine.step()


def full_weights(engine) -> torch.Tensor:
    """All weights, flattened (gathered from the ZeRO-3 partitions when partitioned)."""
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return torch.cat([p.detach().reshape(-1).clone().float() for p in params])


def optimizer_state(optimizer) -> list[dict[str, torch.Tensor]]:
    """Copies of the state of each tensor the optimizer steps: here, ZeRO's flat fp32 partitions."""
    return [{key: value.clone() for key, value in state.items()} for state in optimizer.state.values()]


def measure_state(optimizer) -> dict:
    """Bytes of optimizer state per element of this rank's flat partitions, and what it holds."""
    partitions = list(optimizer.state.keys())
    state_bytes = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)
    )
    return {
        "partition_shapes": [list(p.shape) for p in partitions],
        "partition_is_plain": all(type(p) is torch.Tensor for p in partitions),
        "state_keys": sorted({key for state in optimizer.state.values() for key in state}),
        "state_dtypes": sorted({str(v.dtype) for state in optimizer.state.values() for v in state.values()}),
        "bytes_per_param": state_bytes / sum(p.numel() for p in partitions),
    }


def single_process_reference(variant: str) -> torch.Tensor:
    """The same class over the whole model in one process, on the global batches (both ranks')."""
    model = make_model()
    optimizer = make_optimizer(variant, model)
    world = dist.get_world_size()
    for step in range(STEPS):
        optimizer.zero_grad()
        inputs = torch.cat([batch(step, rank) for rank in range(world)])
        loss_of(model, inputs).backward()
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    tensors = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(tensors, tensor)
    return tensors


def train(stage: int, variant: str, directory: str, extra_config: dict) -> dict:
    model = make_model()
    optimizer = make_optimizer(variant, model)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config(stage, extra_config))
    train_steps(engine, 0, SAVE_AFTER)
    engine.save_checkpoint(directory, tag="step4")
    saved_state = optimizer_state(optimizer)
    train_steps(engine, SAVE_AFTER, STEPS)
    weights = full_weights(engine)
    report = {"world": dist.get_world_size(), "stage": stage, "variant": variant, **measure_state(optimizer)}
    report["weights_rank_difference"] = max(float((w - weights).abs().max()) for w in gathered(weights))
    reference = single_process_reference(variant)
    report["share_differing_from_single_process"] = float((weights != reference).float().mean())

    resumed_model = make_model()
    resumed_optimizer = make_optimizer(variant, resumed_model)
    resumed, *_ = deepspeed.initialize(
        model=resumed_model, optimizer=resumed_optimizer, config=config(stage, extra_config)
    )
    resumed.load_checkpoint(directory, tag="step4")
    loaded_state = optimizer_state(resumed_optimizer)
    report["loaded_state_equals_saved"] = len(loaded_state) == len(saved_state) and all(
        first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
        for first, second in zip(loaded_state, saved_state)
    )
    train_steps(resumed, SAVE_AFTER, STEPS)
    report["resumed_equals_uninterrupted"] = bool(torch.equal(full_weights(resumed), weights))
    return report


def resize(stage: int, variant: str, directory: str, report_path: str) -> None:
    model = make_model()
    engine, *_ = deepspeed.initialize(model=model, optimizer=make_optimizer(variant, model), config=config(stage, {}))
    report = {"world": dist.get_world_size()}
    try:
        engine.load_checkpoint(directory, tag="step4")
        report["error"] = None
    except Exception as error:  # noqa: BLE001 - the test checks which error, and its text
        report["error"] = f"{type(error).__name__}: {error}"
    if dist.get_rank() == 0:
        Path(report_path).write_text(json.dumps(report))


def main() -> None:
    deepspeed.init_distributed("gloo")
    mode, stage, variants, directory, report_path = sys.argv[1:6]
    if mode == "train":
        extra_config = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
        report = {
            variant: train(int(stage), variant, str(Path(directory) / variant), extra_config)
            for variant in variants.split(",")
        }
        if dist.get_rank() == 0:
            Path(report_path).write_text(json.dumps(report))
    else:
        resize(int(stage), variants, str(Path(directory) / variants), report_path)
    dist.barrier()


if __name__ == "__main__":
    main()
    exit_now()
