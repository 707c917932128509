"""Checks of a saved optimizer state dict, shared by `Lion` and its quantized variants.

A state dict fits an optimizer when it has as many param groups, each with as many params, and
each saved entry holds exactly this optimizer's state keys (not AdamW's exp_avg_sq and step, SGD's
momentum_buffer...) with finite momentum of its parameter's shape. Momentum stored in other forms (the
quantized codes of `lion_integrations.quantization`, bitsandbytes' states) reaches full precision
through the decoders registered here, so every optimizer of the family loads every checkpoint of it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .sharding import local_shard

__all__ = [
    "COMPENSATION",
    "check_saved_compensation",
    "MomentumDecoder",
    "FOREIGN_STATE_KEYS",
    "check_momentum",
    "check_saved_groups",
    "check_state_keys",
    "decoded_entry",
    "param_label",
    "register_momentum_decoder",
]

# decoder(param, entry, saved_group, label) -> entry: `entry` with momentum in a form the decoder
# knows replaced by a full-precision "exp_avg"; any other entry returned unchanged. Raises
# ValueError naming the parameter (`label`) when an entry of its form does not fit `param`.
MomentumDecoder = Callable[[torch.Tensor, Any, dict[str, Any], str], Any]
_decoders: list[MomentumDecoder] = []
# State keys of other optimizers, and whose they are, for the message that refuses them.
FOREIGN_STATE_KEYS = {
    "exp_avg_sq": "Adam/AdamW", "max_exp_avg_sq": "Adam/AdamW (amsgrad)", "step": "Adam/AdamW",
    "momentum_buffer": "SGD", "square_avg": "RMSprop", "sum": "Adagrad", "acc_delta": "Adadelta",
    "mu_product": "NAdam",
}


# State key of the Kahan compensation buffer of a bf16/fp16 parameter (`rule.store_weight_`).
COMPENSATION = "kahan_comp"


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


def check_state_keys(owner: str, label: str, entry: Any, layouts: tuple[tuple[str, ...], ...]) -> None:
    """ValueError naming what differs unless the saved state `entry` of a parameter (`label`) holds
    exactly the keys of one of `layouts`: `owner`'s forms of state (a Kahan buffer, ``kahan_comp``,
    may come with any of them: see `check_saved_compensation`)."""
    if not isinstance(entry, dict):
        raise ValueError(f"Invalid state_dict: state of {label} is a {type(entry).__name__}, not a dict")
    entry = {key: value for key, value in entry.items() if key != COMPENSATION}
    if any(set(entry) == set(keys) for keys in layouts):
        return
    closest = max(layouts, key=lambda keys: len(set(keys) & set(entry)))
    foreign = sorted(set(entry) - {key for keys in layouts for key in keys}, key=str)
    missing = [key for key in closest if key not in entry]
    parts = []
    if missing:
        parts.append(f"has no momentum: it lacks {', '.join(map(repr, missing))}")
    if foreign:
        owners = sorted({FOREIGN_STATE_KEYS[key] for key in foreign if key in FOREIGN_STATE_KEYS})
        likely = f" (it looks like {' or '.join(owners)} state)" if owners else ""
        parts.append(f"holds {', '.join(map(repr, foreign))}, which {owner} does not keep{likely}")
    kept = " or ".join(" and ".join(map(repr, keys)) for keys in layouts)
    raise ValueError(
        f"Invalid state_dict: state of {label} {'; it '.join(parts)}. {owner} keeps {kept} per parameter; to "
        f"start {owner} from another optimizer's run, load the model weights only and leave the optimizer "
        "state fresh"
    )


def check_momentum(exp_avg: Any, param: torch.Tensor, label: str) -> torch.Tensor:
    """`exp_avg`, the saved full-precision momentum of `param`, which must be a finite floating (or
    complex) tensor of `param`'s shape; ValueError naming the parameter (`label`)."""
    if not isinstance(exp_avg, torch.Tensor):
        raise ValueError(f"Invalid state_dict: 'exp_avg' of {label} is a {type(exp_avg).__name__}, not a tensor")
    if exp_avg.shape != param.shape:
        raise ValueError(
            f"Invalid state_dict: 'exp_avg' of {label} has shape {tuple(exp_avg.shape)}, "
            f"the parameter has shape {tuple(param.shape)}"
        )
    local = local_shard(exp_avg)
    if not (local.is_floating_point() or local.is_complex()) or not bool(torch.isfinite(local).all()):
        raise ValueError(
            f"Invalid state_dict: 'exp_avg' of {label} holds NaN or inf values (or is not floating: "
            f"{local.dtype}); such momentum would freeze the parameter"
        )
    return exp_avg


def check_saved_compensation(entry: dict[str, Any], param: torch.Tensor, label: str) -> None:
    """ValueError naming the parameter (`label`) when a saved Kahan buffer does not fit `param`: a
    finite floating tensor of its shape (a missing one is created as zeros at the next step)."""
    compensation = entry.get(COMPENSATION)
    if compensation is None:
        return
    if not isinstance(compensation, torch.Tensor) or not compensation.is_floating_point():
        raise ValueError(f"Invalid state_dict: {COMPENSATION!r} of {label} is not a floating tensor")
    if compensation.shape != param.shape:
        raise ValueError(
            f"Invalid state_dict: {COMPENSATION!r} of {label} has shape {tuple(compensation.shape)}, "
            f"the parameter has shape {tuple(param.shape)}"
        )
    if not bool(torch.isfinite(local_shard(compensation)).all()):
        raise ValueError(f"Invalid state_dict: {COMPENSATION!r} of {label} holds NaN or inf values")
