"""`Lion8bit` and `Lion4bit`: `Lion` with its momentum stored by the block-wise codec.

Same rule, same hyperparameters, same execution paths: only the stored state differs. Each step
decodes a parameter's momentum, runs `lion_step_tensor_` (the rule in `rule.py`) and encodes the
result (`kernel.quantized_lion_step_`), fused by `torch.compile` into one pass.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from ..cautious import cautious_step_sizes
from ..checks import check_int
from ..optimizer import Lion, fallback_path, param_description
from ..rule import LionCoefficients, kept_count
from ..sharding import DTensor, Replicate, Shard, local_shard
from ..state import check_momentum, check_saved_compensation, check_state_keys, decoded_entry
from .codec import (
    ABSMAX_DTYPE,
    CODES_DTYPE,
    check_bits,
    check_block_size,
    check_min_quantized_size,
    dequantize_blockwise,
    quantized_shapes,
    rounding_key,
    rows_and_cols,
)
from .convert import (
    ABSMAX,
    CODES,
    check_quantized_shapes,
    encode_momentum,
    is_quantized_entry,
    local_like,
    first_element_index,
    local_shape,
    saved_codec,
    wrap_like,
)
from .kernel import quantized_fused_unavailable_reason, step_quantized_params_

# Rows (elements per index of dim 0) shorter than this keep full precision: their block scales
# would cost more than a quarter of the codes.
MIN_ROW_LENGTH = 16
CODEC_KEYS = ("bits", "block_size", "min_quantized_size")
# A 4-bit param group's count of steps, the step in the draws of its stochastically rounded codes.
ROUNDED_STEPS = "code_rounding_steps"
_warned_placements: set[str] = set()
_warned_flat_buffers: set[tuple[str, int]] = set()


def rows_align(param: torch.Tensor) -> bool:
    """Whether `param`'s shards hold whole rows: plain tensors, or DTensors sharded only on dim 0."""
    if not isinstance(param, DTensor):
        return True
    return all(isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0) for p in param.placements)


def _with_lion_options(init):
    """`init` (which forwards Lion's options through *args, **kwargs) with a signature listing them,
    so that introspection (Hugging Face's optim_args, LightningCLI) sees every option."""
    lion, own = inspect.signature(Lion.__init__), inspect.signature(init)
    codec_options = [option for option in own.parameters.values() if option.kind == option.KEYWORD_ONLY]
    init.__signature__ = lion.replace(parameters=[*lion.parameters.values(), *codec_options])
    return init


class QuantizedLion(Lion):
    """Base of `Lion8bit` and `Lion4bit`; `bits` is set by the subclass."""

    bits: int = 8

    @_with_lion_options
    def __init__(
        self, params, *args: Any, block_size: int = 256, min_quantized_size: int = 4096, **kwargs: Any
    ) -> None:
        self._given_params: dict[int, weakref.ref] = {}
        self._codec_defaults = dict(
            bits=check_bits(self.bits),
            block_size=check_block_size(block_size, self.bits),
            min_quantized_size=check_min_quantized_size(min_quantized_size),
        )
        super().__init__(params, *args, **kwargs)
        self.defaults.update(self._codec_defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        codec_defaults = getattr(self, "_codec_defaults", None) or {k: self.defaults[k] for k in CODEC_KEYS}
        for key, value in codec_defaults.items():
            param_group.setdefault(key, value)
        if param_group["bits"] != self.bits:
            raise ValueError(
                f"Invalid bits: {param_group['bits']!r} in a param group of {type(self).__name__} "
                f"(it stores {self.bits}-bit momentum; use Lion8bit or Lion4bit)"
            )
        check_block_size(param_group["block_size"], self.bits)
        check_min_quantized_size(param_group["min_quantized_size"])
        super().add_param_group(param_group)
        self._remember_given_params(self.param_groups[-1]["params"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key in CODEC_KEYS:
                group.setdefault(key, self.defaults[key])
        if not hasattr(self, "_given_params"):  # unpickled or copied; load_state_dict keeps the record
            for group in self.param_groups:
                self._remember_given_params(group["params"])

    def _remember_given_params(self, params: Iterable[torch.Tensor]) -> None:
        """Record `params` as parameters this optimizer was given (not flat buffers, see `is_flat_buffer`)."""
        given = getattr(self, "_given_params", None)
        if given is None:
            given = self._given_params = {}
        for param in params:
            given[id(param)] = weakref.ref(param)

    def is_flat_buffer(self, param: torch.Tensor) -> bool:
        """Whether `param` is a flat buffer that a wrapper put into `param_groups` in place of the
        parameters this optimizer was given: a plain 1-D tensor that no `add_param_group` passed in.

        DeepSpeed ZeRO (stages 1-3) does this: each param group then holds one fp32 tensor, this
        rank's partition of all the group's parameters flattened and concatenated. Such a buffer is
        a whole tensor on this rank, so its momentum is quantized in blocks along it (one row),
        blocks spanning the boundaries between the parameters inside it.
        """
        if param.dim() != 1 or isinstance(param, DTensor):
            return False
        reference = getattr(self, "_given_params", {}).get(id(param))
        return reference is None or reference() is not param

    # --- Which parameters are quantized, and their state. --------------------------------------

    def is_quantized(self, param: torch.Tensor, group: dict[str, Any]) -> bool:
        """Whether `param`'s momentum is quantized in `group`: 2+ dims, at least `min_quantized_size`
        elements in the WHOLE parameter (a DTensor's shape is global, so every shard decides alike),
        rows of at least MIN_ROW_LENGTH elements, and shards of whole rows.

        1-D parameters keep full precision: a shard boundary of a 1-D tensor can fall inside a block.
        So do complex parameters (their momentum is complex, which the codec does not encode).
        Flat buffers (`is_flat_buffer`: DeepSpeed ZeRO's partitions) are quantized along their length
        when they hold at least `min_quantized_size` elements; a shorter one keeps full precision
        with a warning.
        """
        if self.is_flat_buffer(param):
            return self._quantizes_flat_buffer(param, group)
        if param.dim() == 1 and getattr(param, "_fsdp_flattened", False):  # set by torch's FSDP1 on what it flattens
            self._warn_fsdp1_flattened()
        if param.dim() < 2 or param.numel() < group["min_quantized_size"] or param.is_complex():
            return False
        if rows_and_cols(param.shape)[1] < MIN_ROW_LENGTH:
            return False
        if not rows_align(param):
            kind = str(tuple(param.placements))
            if kind not in _warned_placements:
                _warned_placements.add(kind)
                warnings.warn(
                    f"{type(self).__name__}: parameters placed as {kind} keep full-precision momentum "
                    "(the codec's blocks follow rows, which only Shard(0) keeps whole)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return False
        return True

    def _quantizes_flat_buffer(self, param: torch.Tensor, group: dict[str, Any]) -> bool:
        minimum = max(group["min_quantized_size"], MIN_ROW_LENGTH)
        if param.numel() >= minimum:
            return True
        name = f"flat buffer {param.ds_id}" if hasattr(param, "ds_id") else "a flat buffer"
        key = (type(self).__name__, param.numel())
        if key not in _warned_flat_buffers:
            _warned_flat_buffers.add(key)
            warnings.warn(
                f"{type(self).__name__}: {name} of {param.numel()} elements in place of a param group's "
                f"parameters (this rank's DeepSpeed ZeRO partition) keeps full-precision momentum: it is "
                f"shorter than min_quantized_size={group['min_quantized_size']} (lower it to quantize the buffer)",
                RuntimeWarning,
                stacklevel=4,
            )
        return False

    def _warn_fsdp1_flattened(self) -> None:
        key = (type(self).__name__, -1)
        if key not in _warned_flat_buffers:
            _warned_flat_buffers.add(key)
            warnings.warn(
                f"{type(self).__name__}: parameters flattened by FSDP1 (FullyShardedDataParallel, Lightning's "
                "FSDPStrategy) reach the optimizer as 1-D shards and keep full-precision momentum; shard with "
                "fully_shard (FSDP2: Lightning's ModelParallelStrategy, Trainer's fsdp_version=2) to quantize it",
                RuntimeWarning,
                stacklevel=4,
            )

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            if not self.is_quantized(param, group):
                return super()._init_state(param, group)
            bits, block_size = group["bits"], group["block_size"]
            codes_shape, absmax_shape = quantized_shapes(param.shape, bits, block_size)
            local_codes, local_absmax = quantized_shapes(local_shape(param), bits, block_size)
            device = local_shard(param).device
            # Zero bytes decode to zero momentum (see codec.py).
            state[CODES] = wrap_like(param, torch.zeros(local_codes, dtype=CODES_DTYPE, device=device), codes_shape)
            state[ABSMAX] = wrap_like(param, torch.zeros(local_absmax, dtype=ABSMAX_DTYPE, device=device), absmax_shape)
        return state

    # --- The step. ---------------------------------------------------------------------------------

    def _quantized_path(self, group: dict[str, Any], device: torch.device) -> str:
        if torch.compiler.is_compiling() or group["fused"] is False:
            return "for-loop"  # there is no multi-tensor variant of the codec: per tensor, eagerly
        reason = quantized_fused_unavailable_reason(device.type, group["bits"])
        if reason is None:
            return "fused"
        return fallback_path(
            group, device.type, owner=type(self).__name__, kernel="fused quantized step", reason=reason,
            unfused="for-loop",
        )

    def _step_codec_states(self, group: dict[str, Any], group_index: int, items) -> list:
        """Step the quantized ones of `items` (`_params_to_step` of `group`) per device on
        `_quantized_path` (`Lion.step` steps the others); returns, for each, (parameter, skipped
        non-finite gradient elements, elements)."""
        quantized, sources, names = {}, {}, {}
        key = rounding_key(group.setdefault(ROUNDED_STEPS, 0)) if group["bits"] == 4 else None
        for index, param, grad, state in items:
            if CODES in state:
                local_param = local_shard(param)
                compensation, draw = self.weight_store_of(param, group, state)
                rounding = (key, first_element_index(param)) if key is not None else None
                quantized.setdefault(local_param.device, []).append(
                    (local_param, grad, local_shard(state[CODES]), local_shard(state[ABSMAX]), compensation, draw,
                     rounding)
                )
                sources.setdefault(local_param.device, []).append(param)
                names.setdefault(local_param.device, []).append(param_description(group, group_index, index))
        if not quantized:
            return []
        if key is not None:
            group[ROUNDED_STEPS] += 1
        coefficients = LionCoefficients.from_group(group["lr"], group["betas"], group["weight_decay"])
        codec = dict(bits=group["bits"], block_size=group["block_size"])
        if group["cautious"]:
            counts = self._step_cautious(group, quantized, sources, coefficients, codec)
        else:
            counts = []
            for device, device_items in quantized.items():
                fused = self._quantized_path(group, device) == "fused"
                counts += step_quantized_params_(device_items, coefficients, **codec, fused=fused)
        shards = [item[0] for device_items in quantized.values() for item in device_items]
        labels = [name for device in quantized for name in names[device]]
        return [(name, count, shard.numel()) for name, count, shard in zip(labels, counts, shards)]

    def _step_cautious(self, group, quantized, sources, coefficients, codec) -> list:
        """The cautious step of quantized momenta: count what each keeps (decoding its momentum in
        full precision once), then step each with its own step size. Returns the skipped counts."""
        counts = [
            kept_count(grad, dequantize_blockwise(codes, absmax, param.shape, **codec), coefficients.update_weight)
            for items in quantized.values() for param, grad, codes, absmax, *_ in items
        ]
        params = [param for device in quantized for param in sources[device]]
        step_sizes = iter(cautious_step_sizes(params, counts, coefficients.step_size))
        skipped = []
        for device, items in quantized.items():
            fused = self._quantized_path(group, device) == "fused"
            for item in items:
                own = dataclasses.replace(coefficients, step_size=next(step_sizes))
                skipped += step_quantized_params_([item], own, **codec, fused=fused, cautious=True)
        return skipped

    # --- State dicts. --------------------------------------------------------------------------

    def _checked_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """As `Lion`'s, converting the momentum to this optimizer's storage (our checkpoints, `Lion`'s
        and bitsandbytes' 8-bit ones); the loaded groups keep this optimizer's codec settings."""
        checked = super()._checked_state_dict(state_dict)
        for group, saved in zip(self.param_groups, checked["param_groups"]):
            saved.update({key: group[key] for key in CODEC_KEYS})
            if self.bits == 4:  # a checkpoint of Lion, Lion8bit or an older Lion4bit starts counting
                saved[ROUNDED_STEPS] = check_int(saved.get(ROUNDED_STEPS, 0), ROUNDED_STEPS, minimum=0)
        return checked

    def _load_state_entry(self, param, entry, group, saved_group, label):
        if not self.is_quantized(param, group):
            return super()._load_state_entry(param, entry, group, saved_group, label)
        bits, block_size = group["bits"], group["block_size"]
        if is_quantized_entry(entry) and "exp_avg" not in entry:
            saved_bits, saved_block_size = saved_codec(label, saved_group)
            if (saved_bits, saved_block_size) != (bits, block_size):
                raise ValueError(
                    f"Invalid state_dict: {label} was saved with bits={saved_bits}, block_size="
                    f"{saved_block_size}; this {type(self).__name__} uses bits={bits}, block_size={block_size} "
                    "(load it with the same settings, or convert through Lion)"
                )
            check_state_keys(type(self).__name__, label, entry, ((CODES, ABSMAX),))
            codes, absmax = entry[CODES], entry[ABSMAX]
            check_quantized_shapes(label, param, codes, absmax, bits, block_size)
            check_saved_compensation(entry, param, label)
            codes, absmax = _placed_like(param, codes), _placed_like(param, absmax)
            return entry, {CODES: codes, ABSMAX: absmax.to(ABSMAX_DTYPE)}
        entry = decoded_entry(param, entry, saved_group, label)  # e.g. bitsandbytes' -> exp_avg
        check_state_keys(type(self).__name__, label, entry, (("exp_avg",), (CODES, ABSMAX)))
        exp_avg = check_momentum(entry["exp_avg"], param, label)
        check_saved_compensation(entry, param, label)
        codes, absmax = encode_momentum(param, exp_avg.float(), bits, block_size)
        rest = {k: v for k, v in entry.items() if k != "exp_avg"}
        return rest, {CODES: codes, ABSMAX: absmax}


def _placed_like(param: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """A state tensor placed like `param`: shard a full tensor for a DTensor param, gather for a plain one."""
    if isinstance(param, DTensor) and not isinstance(tensor, DTensor):
        return wrap_like(param, local_like(param, tensor), tuple(tensor.shape))
    if not isinstance(param, DTensor) and isinstance(tensor, DTensor):
        return tensor.full_tensor()
    return tensor


class Lion8bit(QuantizedLion):
    r"""`Lion` with 8-bit block-wise quantized momentum: about 1 byte of state per parameter.

    The rule, hyperparameters and execution paths are `Lion`'s; each step decodes the momentum,
    runs the same update in fp32 and encodes it again (one fused pass on the fused path). Momentum
    of parameters with 2+ dimensions and at least `min_quantized_size` elements is stored as one
    uint8 code per element (a signed dynamic map, nearest rounding) and one fp32 absmax per block of
    `block_size` elements along each row (dim 0 indexes rows); other parameters keep ``exp_avg``.
    DeepSpeed ZeRO's flat partitions (`QuantizedLion.is_flat_buffer`) are quantized as one row.

    Args:
        params, lr, betas, weight_decay, maximize, foreach, fused, momentum_dtype, kahan_sum,
            stochastic_rounding, generator: as for `Lion` (`momentum_dtype` applies to the
            full-precision ``exp_avg`` of small parameters; the AVX-512 kernel steps bf16/fp16
            parameters through an fp32 copy of their weight, see `kernel`).
        block_size: elements per absmax block (default 256).
        min_quantized_size: parameters with fewer elements (counted over the whole parameter, not a
            shard) keep full-precision momentum (default 4096).

    State per quantized parameter: ``exp_avg_codes`` (uint8, the parameter's shape) and
    ``exp_avg_absmax`` (float32, ``(shape[0], ceil(numel / shape[0] / block_size))``). Checkpoints keep
    them quantized; `load_state_dict` also accepts `Lion` and bitsandbytes ``Lion8bit`` state dicts.
    """

    bits = 8


class Lion4bit(QuantizedLion):
    r"""`Lion` with 4-bit block-wise quantized momentum: about half a byte of state per parameter.

    As `Lion8bit`, with 16 codes (a signed dynamic map) packed two per byte along each row:
    ``exp_avg_codes`` is uint8 of shape ``(shape[0], ceil(numel / shape[0] / 2))``. `block_size` must
    be even.

    The codes are rounded stochastically (`codec.stochastic_code4`): a momentum value between two map
    entries becomes the upper one with probability proportional to its distance from the lower, so
    the stored momentum is unbiased, E[decode(encode(m))] = m. Rounded to nearest, Lion's momentum
    (which moves by 1 - beta2 = 1% of g - m a step) would mostly not move at all: 4 bits put
    neighbouring entries 1.78x apart. The draws are a hash of (step, element index in the whole
    tensor), the same on every path (eager, compiled, AVX-512), thread count, data-parallel rank
    and shard; each param group counts its steps in ``group["code_rounding_steps"]``, which the
    state dict keeps, so a resumed run continues bit for bit.
    """

    bits = 4
