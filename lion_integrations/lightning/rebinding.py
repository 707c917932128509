"""Moving what pointed at a replaced optimizer to its replacement: schedulers (their absolute learning
rates scaled by the replacement's lr factor) and a LightningModule's attributes."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

# Param-group keys and scheduler attributes that hold absolute learning rates (rescaled with lr).
GROUP_LR_KEYS = ("initial_lr", "max_lr", "min_lr")
SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs", "base_values")  # base_values: timm
SCHEDULER_LR_SCALARS = ("eta_min", "default_min_lr")


def scaled_group_lrs(group: dict[str, Any], factor: float) -> dict[str, float]:
    """The `GROUP_LR_KEYS` that param group `group` holds (scheduler bookkeeping), each times `factor`."""
    return {key: float(group[key]) * factor for key in GROUP_LR_KEYS if key in group}


def track_steps(optimizer: Optimizer) -> None:
    """Make `optimizer.step` visible to schedulers re-bound to it, as if they had been built on it.

    torch wraps ``optimizer.step`` when a scheduler is constructed (to warn about a scheduler step
    before the first optimizer step); building a throwaway `LambdaLR` does that through public API.
    The groups are restored afterwards, since constructing it sets 'initial_lr' and 'lr'.
    """
    saved = [dict(group) for group in optimizer.param_groups]
    LambdaLR(optimizer, lambda _: 1.0)
    for group, before in zip(optimizer.param_groups, saved):
        group.clear()
        group.update(before)


def rebind_scheduler(scheduler: Any, optimizer: Optimizer, factor: float) -> None:
    """Point `scheduler` (and schedulers it chains) at `optimizer`, scaling its absolute lrs by `factor`.

    Raises ValueError for a scheduler from outside torch that keeps none of the known lr attributes
    (it would drive `optimizer` at the old optimizer's learning rates); warns for one that keeps some.
    """
    scheduler.optimizer = optimizer
    for inner in getattr(scheduler, "_schedulers", ()):
        rebind_scheduler(inner, optimizer, factor)
    if factor == 1.0:
        return
    scaled = []
    for name in SCHEDULER_LR_LISTS:
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            setattr(scheduler, name, [value * factor for value in values])
            scaled.append(name)
    for name in SCHEDULER_LR_SCALARS:
        if isinstance(getattr(scheduler, name, None), (int, float)):
            setattr(scheduler, name, getattr(scheduler, name) * factor)
            scaled.append(name)
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.eps *= factor  # smallest lr change it applies, in lr units
    if type(scheduler).__module__ != "torch.optim.lr_scheduler":
        if not scaled:
            raise ValueError(
                f"LionCallback cannot translate {type(scheduler).__name__}: it keeps none of the learning-rate "
                f"attributes it knows ({', '.join(SCHEDULER_LR_LISTS + SCHEDULER_LR_SCALARS)}), so it would "
                f"drive Lion at the original optimizer's learning rates; use a torch.optim.lr_scheduler, or build "
                f"Lion and its scheduler in configure_optimizers (configure_lion)"
            )
        rank_zero_warn(
            f"LionCallback: scaled {', '.join(scaled)} of {type(scheduler).__name__} by {factor:g} for Lion; "
            "other absolute learning rates it keeps (if any) are not translated"
        )


def rebind_references(module: torch.nn.Module, replacements: dict[int, Optimizer]) -> list[str]:
    """Point the module's attributes that hold a replaced optimizer (directly, or in a list, tuple or
    dict) at its replacement, so code stepping ``self.<attribute>`` steps the new one; their names.

    `replacements` maps ``id(original optimizer)`` to its replacement.
    """

    def replacement(item: Any) -> Optimizer | None:
        return replacements.get(id(item.optimizer if isinstance(item, LightningOptimizer) else item))

    names = []
    for name, value in list(vars(module).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, (Optimizer, LightningOptimizer)):
            if replacement(value) is not None:
                setattr(module, name, replacement(value))
                names.append(name)
        elif isinstance(value, (list, dict)):
            keys = range(len(value)) if isinstance(value, list) else list(value)
            hits = [key for key in keys if replacement(value[key]) is not None]
            for key in hits:
                value[key] = replacement(value[key])
            names += [name] if hits else []
        elif isinstance(value, tuple) and any(replacement(item) is not None for item in value):
            setattr(module, name, type(value)(replacement(item) or item for item in value))
            names.append(name)
    return names
