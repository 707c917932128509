"""DeepSpeed ZeRO with `Lion`, `Lion8bit` or `Lion4bit` as its client optimizer: checks of a DeepSpeed
config (a dict, as given to ``deepspeed.initialize``, Hugging Face's ``deepspeed=`` or Lightning's
``DeepSpeedStrategy``) that refuse the settings under which the optimizer would silently do less, and
of Hugging Face Trainer arguments that shard (DeepSpeed, FSDP) but would not.

ZeRO stages 1-3 put, in place of each param group's parameters, one flat fp32 tensor: this rank's
partition of the group's parameters, flattened and concatenated. `Lion8bit`/`Lion4bit` quantize that
buffer in blocks along it (`QuantizedLion.is_flat_buffer`), so the state per rank is about 1.02 / 0.52
bytes per element of its partition; DeepSpeed's own checkpoints (``engine.save_checkpoint`` /
``load_checkpoint``) keep it quantized. This module imports neither deepspeed nor transformers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .quantization.optim import QuantizedLion

__all__ = ["check_deepspeed_config", "check_trainer_args"]

FORCE_CPU_OPTIMIZER = "zero_force_ds_cpu_optimizer"


def _offload_device(zero: Mapping[str, Any]) -> str | None:
    offload = zero.get("offload_optimizer")
    if isinstance(offload, Mapping):
        device = offload.get("device")
        return None if device in (None, "none") else str(device)
    return None


def check_deepspeed_config(config: Mapping[str, Any], optimizer_class: type) -> None:
    """Raise ValueError, naming the setting, when DeepSpeed `config` would not run `optimizer_class`
    (Lion or a variant, as the client optimizer) as configured.

    * ``zero_optimization.offload_optimizer`` (ZeRO-Offload) steps the optimizer on CPU copies of the
      partitions, and DeepSpeed accepts a client optimizer there only with
      ``"zero_force_ds_cpu_optimizer": false``; with it, our optimizers step the CPU partitions
      (Lion8bit/Lion4bit kept quantized). Device ``"nvme"`` swaps the state as tensors shaped like the
      partition, which quantized codes are not: refused for Lion8bit/Lion4bit.
    * ``zero_optimization.elastic_checkpoint`` re-partitions only state tensors shaped like the
      partition and copies every other tensor from rank 0: quantized codes would be rank 0's on every
      rank. Refused for Lion8bit/Lion4bit.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"Invalid config: {config!r} (expected a DeepSpeed config dict)")
    zero = config.get("zero_optimization") or {}
    if not isinstance(zero, Mapping):
        return
    name = optimizer_class.__name__
    quantized = isinstance(optimizer_class, type) and issubclass(optimizer_class, QuantizedLion)
    device = _offload_device(zero)
    if device == "nvme" and quantized:
        raise ValueError(
            f"Invalid DeepSpeed config: zero_optimization.offload_optimizer.device='nvme' with {name}: DeepSpeed "
            "swaps optimizer state to NVMe as tensors shaped like the flat partition, which quantized momentum is "
            "not; use device 'cpu' (with \"zero_force_ds_cpu_optimizer\": false) or Lion"
        )
    if device is not None and config.get(FORCE_CPU_OPTIMIZER, True) is not False:
        raise ValueError(
            f"Invalid DeepSpeed config: zero_optimization.offload_optimizer (device={device!r}) with {name} "
            f"needs \"{FORCE_CPU_OPTIMIZER}\": false: ZeRO-Offload steps the optimizer on CPU partitions and "
            f"DeepSpeed accepts a client optimizer there only with that setting; set it and {name} steps them "
            f"(its CPU path{', momentum kept quantized' if quantized else ''}), or set DeepSpeed's own "
            "\"optimizer\": {\"type\": \"Lion\"} (DeepSpeedCPULion, full-precision momentum) instead"
        )
    if zero.get("elastic_checkpoint") and quantized:
        raise ValueError(
            f"Invalid DeepSpeed config: zero_optimization.elastic_checkpoint=true with {name}: elastic checkpoints "
            "re-partition only state tensors shaped like the flat partition and load every other one from rank 0, "
            "so each rank would get rank 0's quantized momentum; leave elastic_checkpoint false"
        )


def check_trainer_args(args: Any, optimizer_class: type) -> None:
    """Checks for a Hugging Face `TrainingArguments` that shards with DeepSpeed or FSDP.

    * ``fsdp=...`` with ``use_cpu=True``: a RuntimeWarning. Accelerate (1.15) shards with FSDP only on
      GPU process groups; on CPU processes Trainer trains with DDP, parameters and optimizer state whole
      on every rank.
    * ``deepspeed=...``: the DeepSpeed config (`check_deepspeed_config`), and that Trainer sees every
      process. Without ``use_cpu=True``, on a machine with no GPU, Accelerate gives Trainer a world of
      one process on every rank while DeepSpeed partitions over all of them: each rank would train on
      the whole data set as its own process zero, writing the same checkpoints.
    """
    if getattr(args, "fsdp", None) and getattr(args, "use_cpu", False):
        warnings.warn(
            "TrainingArguments(fsdp=...) has no effect with use_cpu=True: Accelerate shards with FSDP "
            f"only on GPU process groups, so Trainer trains with DDP and {optimizer_class.__name__}'s state is "
            "whole on every rank (on CPU, shard with Lightning's ModelParallelStrategy or fully_shard)",
            RuntimeWarning,
            stacklevel=2,
        )
    deepspeed_config = getattr(args, "hf_deepspeed_config", None)
    if deepspeed_config is None:
        return
    check_deepspeed_config(deepspeed_config.config, optimizer_class)
    processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if processes > args.world_size:
        raise ValueError(
            f"Invalid TrainingArguments: Trainer sees world_size={args.world_size} but torch.distributed runs "
            f"{processes} processes, so every rank would train the whole data set as process zero. On a machine "
            "without GPUs pass use_cpu=True (--use_cpu): Accelerate then sets up the processes (gloo) and the "
            "DeepSpeed engine runs data-parallel over them"
        )
