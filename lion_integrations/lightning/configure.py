"""`configure_lion`: what a LightningModule's ``configure_optimizers`` returns for Lion, with an
optional warmup schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from ..adapters import betas_kwargs, resolve_optimizer_class
from ..checks import check_choice, check_int
from ..hparams import param_groups
from ..optimizer import DEFAULT_BETAS, DEFAULT_LR, Lion, validate_hyperparameters
from ..schedules import SHAPES, warmup_schedule
from .strategies import check_strategy

INTERVALS = ("step", "epoch")


def configure_lion(
    module: torch.nn.Module,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = DEFAULT_BETAS,
    *,
    scheduler: str | Callable[[Optimizer], Any] | None = None,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
    interval: str = "step",
    frequency: int = 1,
    optimizer_class: type[Optimizer] | str = Lion,
    **optimizer_kwargs: Any,
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns for Lion over `module`: ``{"optimizer": ...}`` plus
    ``"lr_scheduler": {"scheduler", "interval", "frequency"}`` when `scheduler` is set.

    Parameters go in two groups (`hparams.param_groups`): weights decayed by `weight_decay`, biases and
    norm weights not decayed. `lr` is Lion's (3-10x below AdamW's; see `hparams.from_adamw`).

    Args:
        scheduler: None; 'cosine', 'linear' or 'constant' (`schedules.WarmupSchedule`: linear warmup
            over `warmup_steps`, then decay to `min_lr_ratio` x lr at `total_steps`); or a callable
            ``optimizer -> LRScheduler | Lightning scheduler dict``.
        total_steps: scheduler steps in the run; None: ``trainer.estimated_stepping_batches`` for
            interval='step', ``trainer.max_epochs`` for interval='epoch', divided by `frequency`.
        interval, frequency: when Lightning steps the scheduler ('step' or 'epoch', every `frequency`).
        optimizer_class: Lion or a variant (class or name, e.g. 'Lion'); `optimizer_kwargs` go to it.
    """
    optimizer_class = resolve_optimizer_class(optimizer_class)
    validate_hyperparameters(lr, betas, weight_decay)
    check_strategy(module, optimizer_class)
    check_choice(interval, "interval", INTERVALS)
    check_int(frequency, "frequency", minimum=1)
    _check_scheduler(scheduler, warmup_steps, total_steps, min_lr_ratio, interval, frequency)

    optimizer = optimizer_class(
        param_groups(module, weight_decay), lr=lr, weight_decay=weight_decay,
        **betas_kwargs(optimizer_class, betas), **optimizer_kwargs,
    )
    if scheduler is None:
        return {"optimizer": optimizer}
    if isinstance(scheduler, str):
        steps = total_steps if total_steps is not None else _trainer_total_steps(module, interval, frequency)
        built: Any = warmup_schedule(optimizer, warmup_steps, steps, scheduler, min_lr_ratio)
    else:
        built = scheduler(optimizer)
    config = {"interval": interval, "frequency": frequency}
    config.update(built if isinstance(built, dict) else {"scheduler": built})
    return {"optimizer": optimizer, "lr_scheduler": config}


def _check_scheduler(
    scheduler: Any, warmup_steps: int, total_steps: int | None, min_lr_ratio: float, interval: str, frequency: int
) -> None:
    """Raise ValueError for a `scheduler` configure_lion cannot build, or for options that `scheduler`
    would silently ignore (the shape options without a named shape; interval/frequency without any)."""
    if isinstance(scheduler, str):
        check_choice(scheduler, "scheduler", SHAPES)
        return
    if scheduler is not None and not callable(scheduler):
        raise ValueError(f"Invalid scheduler: {scheduler!r} (expected None, one of {SHAPES}, or a callable)")
    shaping = "shapes scheduler='cosine', 'linear' or 'constant' ('constant' for warmup only)"
    unused = [("warmup_steps", warmup_steps, 0, shaping), ("total_steps", total_steps, None, shaping),
              ("min_lr_ratio", min_lr_ratio, 0.0, shaping)]
    if scheduler is None:
        unused += [("interval", interval, "step", "configures a scheduler"),
                   ("frequency", frequency, 1, "configures a scheduler")]
    for name, value, default, purpose in unused:
        if value != default:
            raise ValueError(f"Invalid {name}: {value!r} with scheduler={scheduler!r} (it {purpose})")


def _trainer_total_steps(module: torch.nn.Module, interval: str, frequency: int = 1) -> int:
    """Scheduler steps in the run of the Trainer `module` is attached to: its optimizer steps
    (interval='step') or max_epochs (interval='epoch'), divided by `frequency` (rounded up)."""
    try:
        trainer = module.trainer
    except (AttributeError, RuntimeError):
        trainer = None
    if trainer is None:
        raise ValueError("Invalid total_steps: None needs the module attached to a Trainer; pass total_steps")
    total = trainer.estimated_stepping_batches if interval == "step" else trainer.max_epochs
    if total is None or not math.isfinite(total) or total < 1:
        raise ValueError(
            f"Invalid total_steps: None, and the Trainer gives no finite length ({total!r} for interval="
            f"{interval!r}); set max_steps/max_epochs or pass total_steps"
        )
    return math.ceil(total / frequency)
