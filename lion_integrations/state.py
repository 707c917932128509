"""Checks of a saved optimizer state dict, shared by `Lion` and its quantized variants.

A state dict fits an optimizer when it has as many param groups, each with as many params, and
each saved entry holds momentum of its parameter's shape. Momentum stored in other forms (the
quantized codes of `lion_integrations.quantization`, bitsandbytes' states) reaches full precision
through the decoders registered here, so every optimizer of the family loads every checkpoint of it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = [
    "MomentumDecoder",
    "check_saved_groups",
    "checked_exp_avg",
    "decoded_entry",
    "param_label",
    "register_momentum_decoder",
]

# decoder(param, entry, saved_group, label) -> entry: `entry` with momentum in a form the decoder
# knows replaced by a full-precision "exp_avg"; any other entry returned unchanged. Raises
# ValueError naming the parameter (`label`) when an entry of its form does not fit `param`.
MomentumDecoder = Callable[[torch.Tensor, Any, dict[str, Any], str], Any]
_decoders: list[MomentumDecoder] = []


def register_momentum_decoder(decoder: MomentumDecoder) -> None:
    """Make `decoded_entry` (hence every optimizer's `load_state_dict`) apply `decoder`; once per decoder."""
    if decoder not in _decoders:
        _decoders.append(decoder)


def decoded_entry(param: torch.Tensor, entry: Any, saved_group: dict[str, Any], label: str) -> Any:
    """`entry` after every registered decoder: momentum in full precision (``exp_avg``) where one knew its form."""
    for decoder in _decoders:
        entry = decoder(param, entry, saved_group, label)
    return entry


def param_label(param_id: Any, group: dict[str, Any] | None = None, index: int | None = None) -> str:
    """'param 3' or "param 3 ('fc.weight')" when the group carries torch's param_names."""
    names = (group or {}).get("param_names")
    if names is not None and index is not None and index < len(names):
        return f"param {param_id!r} ({names[index]!r})"
    return f"param {param_id!r}"


def check_saved_groups(state_dict: Any, param_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The param groups of `state_dict`, which must match `param_groups` in number and in params per
    group; ValueError saying what differs."""
    saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if saved_groups is None or "state" not in state_dict:
        raise ValueError("Invalid state_dict: expected a dict with 'state' and 'param_groups'")
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"Invalid state_dict: it has {len(saved_groups)} param groups, the optimizer {len(param_groups)}"
        )
    for group_index, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
            raise ValueError(f"Invalid state_dict: param group {group_index} has no 'params' list")
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"Invalid state_dict: param group {group_index} has {len(saved['params'])} params, "
                f"the optimizer's has {len(group['params'])}"
            )
    return saved_groups


def checked_exp_avg(
    entry: Any, param: torch.Tensor, label: str, momentum_keys: tuple[str, ...] = ("exp_avg",)
) -> torch.Tensor:
    """The full-precision momentum ``exp_avg`` of the saved `entry` of `param`, which must have
    `param`'s shape; ValueError naming the parameter (`label`) and the keys that could have held it."""
    exp_avg = entry.get("exp_avg") if isinstance(entry, dict) else None
    if not isinstance(exp_avg, torch.Tensor):
        keys = " or ".join(map(repr, momentum_keys))
        raise ValueError(f"Invalid state_dict: state of {label} has no momentum ({keys})")
    if exp_avg.shape != param.shape:
        raise ValueError(
            f"Invalid state_dict: 'exp_avg' of {label} has shape {tuple(exp_avg.shape)}, "
            f"the parameter has shape {tuple(param.shape)}"
        )
    return exp_avg
