"""Reading and writing saved momentum: quantized entries (ours, bitsandbytes') <-> full precision.

Per-parameter state entries of a state dict can hold momentum three ways:

* ``{"exp_avg": tensor}``: full precision (`Lion`, and small parameters of `Lion8bit`/`Lion4bit`);
* ``{"exp_avg_codes": uint8, "exp_avg_absmax": float32}``: our codec (`codec.py`), with ``bits``
  and ``block_size`` in the entry's param group;
* bitsandbytes' 8-bit optimizers: ``state1`` (uint8 codes over the flattened tensor), ``qmap1``
  (its 256-entry map), ``absmax1`` (one scale per block of the flattened tensor), possibly nested
  under ``__bnb_optimizer_quant_state__``; small parameters have a float ``state1``.

Parameters may be DTensors (FSDP2): codecs then run on the local shard, whose rows are a complete
encoding of themselves (see `codec.py`), and results are DTensors placed like the parameter.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..sharding import DTensor, distribute_tensor, local_shard
from ..state import register_momentum_decoder
from .codec import (
    ABSMAX_DTYPE,
    CODES_DTYPE,
    check_bits,
    check_block_size,
    contiguous_strides,
    dequantize_blockwise,
    quantize_blockwise,
    quantized_shapes,
    rows_and_cols,
)

try:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # torch built without distributed: there are no DTensors
    compute_local_shape_and_global_offset = None

CODES, ABSMAX = "exp_avg_codes", "exp_avg_absmax"
BNB_NESTED = "__bnb_optimizer_quant_state__"
BNB_KEYS = ("state1", "qmap1", "absmax1")
BNB_BLOCK_SIZE = 256  # bitsandbytes' block size for its 8-bit optimizers


def first_element_index(param: torch.Tensor) -> int:
    """The index, in the whole tensor's row layout, of the first element of the shard of `param`
    this rank holds: 0 for a plain tensor; for a DTensor sharded on dim 0 (`QuantizedLion.is_quantized`
    requires that), its first row times the row length. Draws of stochastically rounded codes
    (`codec.code_draws`) follow these indices, so a sharded step rounds as the unsharded one."""
    if not isinstance(param, DTensor):
        return 0
    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return offset[0] * rows_and_cols(param.shape)[1] if offset else 0


def is_quantized_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and CODES in entry


def is_bnb_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and (BNB_NESTED in entry or "state1" in entry)


# --- DTensor plumbing: run codecs on the parameter's local shard. ---------------------------------


def local_like(param: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (a state tensor, global shape in the row layout) as the rows of `param`'s local shard."""
    if isinstance(param, DTensor):
        if isinstance(tensor, DTensor):
            if tuple(tensor.placements) != tuple(param.placements):
                tensor = tensor.redistribute(param.device_mesh, param.placements)
            return tensor.to_local()
        # A full tensor every rank holds (a full state dict): keep this rank's rows, no communication.
        return distribute_tensor(tensor, param.device_mesh, param.placements, src_data_rank=None).to_local()
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def wrap_like(param: torch.Tensor, local: torch.Tensor, global_shape) -> torch.Tensor:
    """A state tensor computed on `param`'s local rows, as a DTensor placed like `param` if it is one."""
    if isinstance(param, DTensor):
        return DTensor.from_local(
            local, param.device_mesh, param.placements, run_check=False,
            shape=torch.Size(global_shape), stride=contiguous_strides(global_shape),
        )
    return local


def local_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(local_shard(param).shape)


# --- Conversions. ---------------------------------------------------------------------------------


def saved_codec(label: str, saved_group: dict[str, Any]) -> tuple[int, int]:
    """(bits, block_size) that a group's quantized entries were saved with."""
    bits, block_size = saved_group.get("bits"), saved_group.get("block_size")
    try:
        return check_bits(bits), check_block_size(block_size, bits)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Invalid state_dict: {label} has quantized momentum whose param group gives bits={bits!r}, "
            f"block_size={block_size!r} ({error})"
        ) from None


def check_quantized_shapes(label: str, param, codes, absmax, bits: int, block_size: int) -> None:
    if not isinstance(codes, torch.Tensor) or not isinstance(absmax, torch.Tensor):
        raise ValueError(f"Invalid state_dict: {label} needs tensors {CODES!r} and {ABSMAX!r}")
    codes_shape, absmax_shape = quantized_shapes(param.shape, bits, block_size)
    if tuple(codes.shape) != codes_shape or tuple(absmax.shape) != absmax_shape:
        raise ValueError(
            f"Invalid state_dict: {label} (shape {tuple(param.shape)}) has {CODES!r} of shape "
            f"{tuple(codes.shape)} and {ABSMAX!r} of shape {tuple(absmax.shape)}; bits={bits}, "
            f"block_size={block_size} need {codes_shape} and {absmax_shape}"
        )
    if codes.dtype != CODES_DTYPE or not absmax.is_floating_point():
        raise ValueError(
            f"Invalid state_dict: {label} has {CODES!r} of dtype {codes.dtype} and {ABSMAX!r} of dtype "
            f"{absmax.dtype} (expected {CODES_DTYPE} and a floating dtype)"
        )
    local_absmax = local_shard(absmax)
    if not bool((torch.isfinite(local_absmax) & (local_absmax >= 0)).all()):
        raise ValueError(f"Invalid state_dict: {label} has {ABSMAX!r} values that are negative, inf or NaN")


def decode_momentum(param, codes, absmax, bits: int, block_size: int) -> torch.Tensor:
    """The float32 momentum (placed like `param`) that our codes and absmax encode."""
    local_codes, local_absmax = local_like(param, codes), local_like(param, absmax)
    values = dequantize_blockwise(local_codes, local_absmax.to(ABSMAX_DTYPE), local_shape(param), bits, block_size)
    return wrap_like(param, values, param.shape)


def encode_momentum(param, exp_avg, bits: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, absmax) of `exp_avg` (a tensor of `param`'s shape), placed like `param`."""
    local = local_like(param, exp_avg).to(device=local_shard(param).device)
    codes, absmax = quantize_blockwise(local, bits, block_size)
    codes_shape, absmax_shape = quantized_shapes(param.shape, bits, block_size)
    return wrap_like(param, codes, codes_shape), wrap_like(param, absmax, absmax_shape)


def _bnb_block_size(numel: int, blocks: int) -> int:
    if -(-numel // BNB_BLOCK_SIZE) == blocks:
        return BNB_BLOCK_SIZE
    size = 2 ** max(0, math.ceil(math.log2(max(1, -(-numel // max(blocks, 1))))))
    return size if -(-numel // size) == blocks else 0


def decode_bnb(param, label: str, entry: dict[str, Any]) -> torch.Tensor:
    """Full-precision momentum from a bitsandbytes 8-bit Lion entry (block-wise, one state)."""
    quant = {**entry, **entry.get(BNB_NESTED, {})}
    state1 = quant.get("state1")
    if not isinstance(state1, torch.Tensor):
        raise ValueError(f"Invalid state_dict: bitsandbytes state of {label} has no 'state1' tensor")
    if state1.numel() != param.numel():
        raise ValueError(
            f"Invalid state_dict: bitsandbytes 'state1' of {label} has {state1.numel()} elements, the "
            f"parameter (shape {tuple(param.shape)}) has {param.numel()}"
        )
    if state1.is_floating_point():  # a small parameter: bitsandbytes kept it in 32 bits
        return state1.reshape(param.shape).float()
    qmap, absmax = quant.get("qmap1"), quant.get("absmax1")
    if not isinstance(qmap, torch.Tensor) or not isinstance(absmax, torch.Tensor) or qmap.numel() != 256:
        raise ValueError(
            f"Invalid state_dict: bitsandbytes 8-bit state of {label} needs 'qmap1' (256 values) and "
            "'absmax1' (block-wise quantization; block_wise=False states are not supported)"
        )
    block_size = _bnb_block_size(state1.numel(), absmax.numel())
    if not block_size:
        raise ValueError(
            f"Invalid state_dict: bitsandbytes 'absmax1' of {label} has {absmax.numel()} blocks, which "
            f"does not match {state1.numel()} elements in blocks of a power-of-two size"
        )
    flat = qmap.float()[state1.reshape(-1).long()]
    scales = absmax.float().repeat_interleave(block_size)[: flat.numel()]
    return (flat * scales).reshape(param.shape)


def dequantized_entry(param, entry, saved_group: dict[str, Any], label: str):
    """`entry` with quantized momentum (ours or bitsandbytes') replaced by full-precision ``exp_avg``.

    Other entries are returned unchanged. Raises ValueError naming the parameter (`label`) when a
    quantized entry does not fit `param`. Registered with `state.register_momentum_decoder`, so that
    `Lion` loads these checkpoints too.
    """
    if is_quantized_entry(entry) and "exp_avg" not in entry:
        bits, block_size = saved_codec(label, saved_group)
        codes, absmax = entry.get(CODES), entry.get(ABSMAX)
        check_quantized_shapes(label, param, codes, absmax, bits, block_size)
        rest = {k: v for k, v in entry.items() if k not in (CODES, ABSMAX)}
        return {**rest, "exp_avg": decode_momentum(param, codes, absmax, bits, block_size)}
    if is_bnb_entry(entry) and "exp_avg" not in entry:
        exp_avg = decode_bnb(param, label, entry)
        if isinstance(param, DTensor):
            exp_avg = wrap_like(param, local_like(param, exp_avg), param.shape)
        rest = {k: v for k, v in entry.items() if k not in (*BNB_KEYS, BNB_NESTED, "step")}
        return {**rest, "exp_avg": exp_avg}
    if isinstance(entry, dict) and "exp_avg" in entry and (CODES in entry or ABSMAX in entry):
        # DCP's full-state loading merges a saved `exp_avg` into our current (quantized) entry.
        return {k: v for k, v in entry.items() if k not in (CODES, ABSMAX)}
    return entry


register_momentum_decoder(dequantized_entry)
