"""PyTorch Lightning integration: `configure_lion` for ``configure_optimizers``, and `LionCallback`.

* ``return configure_lion(self, lr=3e-4, weight_decay=0.1, scheduler="cosine", warmup_steps=100)``
  inside ``configure_optimizers``: Lion over weight-decay groups, plus an optional warmup schedule.
* ``LionCallback`` (also from YAML: ``trainer.callbacks``) swaps the optimizers an unchanged module
  returns for Lion, translating AdamW's lr/weight decay by the paper's ratio, and re-binds its schedulers.
* LightningCLI needs nothing extra: ``--optimizer lion_integrations.Lion``, or ``--optimizer Lion``
  once this package is imported.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

try:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lion_integrations.lightning needs Lightning: pip install 'lion-integrations[lightning]'"
    ) from error

from .deepspeed import check_deepspeed_config
from .hparams import DEFAULT_RATIO, from_adamw, param_groups
from .names import OPTIMIZER_NAMES
from .optimizer import Lion, validate_hyperparameters
from .schedules import SHAPES, warmup_schedule

__all__ = ["LionCallback", "configure_lion", "resolve_optimizer_class"]

INTERVALS = ("step", "epoch")
# Optimizers whose lr/weight decay are in AdamW units (translated by `ratio`), by class name in the MRO.
ADAMW_FAMILY = frozenset({
    "Adam", "AdamW", "NAdam", "RAdam", "FusedAdam", "Adam8bit", "AdamW8bit", "Adam32bit", "AdamW32bit",
    "PagedAdam", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit",
})
# Param-group keys and scheduler attributes that hold absolute learning rates (rescaled with lr).
_GROUP_LR_KEYS = ("initial_lr", "max_lr", "min_lr")
_SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs", "base_values")  # base_values: timm
_SCHEDULER_LR_SCALARS = ("eta_min", "default_min_lr")


def resolve_optimizer_class(optimizer_class: type[Optimizer] | str) -> type[Optimizer]:
    """An optimizer class, given as a class, a dotted path ('torch.optim.AdamW'), a name exported by
    `lion_integrations` ('Lion', 'Lion8bit') or one of its short names ('lion', 'lion_q8', as for HF's `optim`)."""
    if isinstance(optimizer_class, str) and optimizer_class in OPTIMIZER_NAMES:
        optimizer_class = f"lion_integrations.{OPTIMIZER_NAMES[optimizer_class]}"
    if isinstance(optimizer_class, str):
        module_name, _, name = optimizer_class.rpartition(".")
        try:
            module = importlib.import_module(module_name or "lion_integrations")
        except ImportError as error:
            raise ValueError(f"Invalid optimizer_class: {optimizer_class!r} (cannot import {module_name!r}: {error})") from None
        resolved = getattr(module, name, None)
        if resolved is None:
            raise ValueError(f"Invalid optimizer_class: {optimizer_class!r} ({module.__name__} has no {name!r})")
        optimizer_class = resolved
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
        raise ValueError(f"Invalid optimizer_class: {optimizer_class!r} (expected a torch.optim.Optimizer subclass)")
    return optimizer_class


def _with_betas(optimizer_class: type[Optimizer], betas: tuple[float, float]) -> dict[str, Any]:
    """``{"betas": betas}`` for classes that take betas (Lion and its variants); ``{}`` for those that
    do not (a discovered program defines its own interpolation constants)."""
    return {"betas": betas} if "betas" in inspect.signature(optimizer_class.__init__).parameters else {}


def check_strategy(module: torch.nn.Module, optimizer_class: type[Optimizer]) -> None:
    """Under Lightning's DeepSpeedStrategy, refuse a DeepSpeed config that would not run `optimizer_class`
    as configured (`lion_integrations.deepspeed.check_deepspeed_config`); nothing for other strategies."""
    strategy = getattr(getattr(module, "_trainer", None), "strategy", None)
    if isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict):
        check_deepspeed_config(strategy.config, optimizer_class)


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")


def _default_total_steps(module: torch.nn.Module, interval: str, frequency: int = 1) -> int:
    """Scheduler steps in the run: optimizer steps (interval='step') or max_epochs (interval='epoch'),
    divided by `frequency` (rounded up)."""
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


def configure_lion(
    module: torch.nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.99),
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
    _check_choice(interval, "interval", INTERVALS)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"Invalid frequency: {frequency!r} (expected an int >= 1)")
    if not isinstance(scheduler, str):  # options that would be silently ignored
        unused = [("warmup_steps", warmup_steps, 0), ("total_steps", total_steps, None), ("min_lr_ratio", min_lr_ratio, 0.0)]
        if scheduler is None:
            unused += [("interval", interval, "step"), ("frequency", frequency, 1)]
        for name, value, default in unused:
            if value != default:
                purpose = ("configures a scheduler" if name in ("interval", "frequency")
                           else "shapes scheduler='cosine', 'linear' or 'constant' ('constant' for warmup only)")
                raise ValueError(f"Invalid {name}: {value!r} with scheduler={scheduler!r} (it {purpose})")
    if isinstance(scheduler, str):
        _check_choice(scheduler, "scheduler", SHAPES)
    elif scheduler is not None and not callable(scheduler):
        raise ValueError(f"Invalid scheduler: {scheduler!r} (expected None, one of {SHAPES}, or a callable)")

    optimizer = optimizer_class(
        param_groups(module, weight_decay), lr=lr, weight_decay=weight_decay,
        **_with_betas(optimizer_class, betas), **optimizer_kwargs,
    )
    if scheduler is None:
        return {"optimizer": optimizer}
    if isinstance(scheduler, str):
        steps = total_steps if total_steps is not None else _default_total_steps(module, interval, frequency)
        built: Any = warmup_schedule(optimizer, warmup_steps, steps, scheduler, min_lr_ratio)
    else:
        built = scheduler(optimizer)
    config = {"interval": interval, "frequency": frequency}
    config.update(built if isinstance(built, dict) else {"scheduler": built})
    return {"optimizer": optimizer, "lr_scheduler": config}


def _family(optimizer: Optimizer) -> str | None:
    names = {cls.__name__ for cls in type(optimizer).__mro__}
    if names & ADAMW_FAMILY:
        return "adamw"
    if any(name.startswith("Lion") for name in names):
        return "lion"
    return None


def _patch_step_tracking(optimizer: Optimizer) -> None:
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


def _rebind_scheduler(scheduler: Any, optimizer: Optimizer, factor: float) -> None:
    """Point `scheduler` (and schedulers it chains) at `optimizer`, scaling its absolute lrs by `factor`."""
    scheduler.optimizer = optimizer
    for inner in getattr(scheduler, "_schedulers", ()):
        _rebind_scheduler(inner, optimizer, factor)
    if factor == 1.0:
        return
    scaled = []
    for name in _SCHEDULER_LR_LISTS:
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            setattr(scheduler, name, [value * factor for value in values])
            scaled.append(name)
    for name in _SCHEDULER_LR_SCALARS:
        if isinstance(getattr(scheduler, name, None), (int, float)):
            setattr(scheduler, name, getattr(scheduler, name) * factor)
            scaled.append(name)
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.eps *= factor  # smallest lr change it applies, in lr units
    if type(scheduler).__module__ != "torch.optim.lr_scheduler":
        if not scaled:
            raise ValueError(
                f"LionCallback cannot translate {type(scheduler).__name__}: it keeps none of the learning-rate "
                f"attributes it knows ({', '.join(_SCHEDULER_LR_LISTS + _SCHEDULER_LR_SCALARS)}), so it would "
                f"drive Lion at the original optimizer's learning rates; use a torch.optim.lr_scheduler, or build "
                f"Lion and its scheduler in configure_optimizers (configure_lion)"
            )
        rank_zero_warn(
            f"LionCallback: scaled {', '.join(scaled)} of {type(scheduler).__name__} by {factor:g} for Lion; "
            "other absolute learning rates it keeps (if any) are not translated"
        )


def _rebind_references(module: torch.nn.Module, replacements: dict[int, Optimizer]) -> list[str]:
    """Point the module's attributes that hold a replaced optimizer (directly, or in a list, tuple or
    dict) at its replacement, so code stepping ``self.<attribute>`` steps the new one; their names."""

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


class LionCallback(Callback):
    """Train an unchanged LightningModule with Lion: the optimizers its ``configure_optimizers`` returns
    (any of Lightning's return forms) are rebuilt as Lion over the same param groups.

    In the ``setup`` hook (before Lightning calls ``configure_optimizers``) the module instance's
    ``configure_optimizers`` is wrapped; the original is restored in ``teardown``. Strategies,
    precision plugins and checkpoint restore then work on the Lion optimizers as usual.

    Per param group: ``lr_lion = lr / ratio`` and ``weight_decay_lion = weight_decay * ratio`` for Adam/AdamW
    (the paper's translation, `hparams.from_adamw`); Lion-family sources keep their values. Schedulers
    returned with the optimizers are re-bound to the new optimizer, their absolute lrs (base_lrs,
    eta_min, min_lrs, ...) scaled by the same factor, so the schedule shape is unchanged. Momentum
    cycling (OneCycleLR, CyclicLR) keeps acting on beta1. Module attributes that hold an original
    optimizer (e.g. ``self.opt`` in manual optimization) are pointed at its replacement.

    Args:
        lr: Lion's peak lr: the param group with the largest (initial) lr gets `lr`, the others keep
            their ratio to it. Required for sources other than Adam/AdamW/Lion (e.g. SGD).
        weight_decay: Lion's decoupled weight decay for groups that decay (groups with 0 stay at 0;
            if none decays, all get it). Required for sources other than Adam/AdamW/Lion.
        betas: Lion's (beta1, beta2) for every group (AdamW's betas do not carry over).
        ratio: the AdamW-to-Lion factor, 3-10 in the paper.
        optimizer_class: Lion or a variant (class, dotted path or name exported by lion_integrations).
            None (default): Lion, and optimizers that already are Lion or a variant (e.g. Lion8bit) are
            kept; given, every other optimizer becomes this class.
        optimizer_kwargs: extra keyword arguments for `optimizer_class` (e.g. ``{"fused": False}``).
    """

    def __init__(
        self,
        lr: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        ratio: float = DEFAULT_RATIO,
        optimizer_class: str | type[Optimizer] | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        validate_hyperparameters(0.0 if lr is None else lr, betas, 0.0 if weight_decay is None else weight_decay)
        from_adamw(1.0, 0.0, ratio)  # validates ratio
        if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, dict):
            raise ValueError(f"Invalid optimizer_kwargs: {optimizer_kwargs!r} (expected a dict or None)")
        for key in ("params", "lr", "betas", "weight_decay"):
            if key in (optimizer_kwargs or {}):
                raise ValueError(f"Invalid optimizer_kwargs: {key!r} is set by the callback (use LionCallback({key}=...))")
        self.lr = None if lr is None else float(lr)
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.betas = tuple(float(beta) for beta in betas)
        self.ratio = float(ratio)
        # Without an explicit class, optimizers that are Lion already (Lion8bit, ...) are kept as they are.
        self.keep_lion = optimizer_class is None
        self.optimizer_class = resolve_optimizer_class(Lion if optimizer_class is None else optimizer_class)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.replaced: list[tuple[Optimizer, Optimizer]] = []  # (original, Lion) of the last conversion
        self._wrapped: tuple[torch.nn.Module, bool, Any] | None = None
        self._checkpoint_states: list[dict[str, Any]] | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._unwrap()  # left over from a run that raised
        self.replaced = []
        had_attribute = "configure_optimizers" in vars(pl_module)
        previous = vars(pl_module).get("configure_optimizers")
        original = pl_module.configure_optimizers

        def configure_optimizers():
            return self.convert(original(), pl_module)

        configure_optimizers.__wrapped__ = original
        pl_module.configure_optimizers = configure_optimizers
        self._wrapped = (pl_module, had_attribute, previous)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._unwrap()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        """Give the module back its own ``configure_optimizers``."""
        if self._wrapped is not None:
            module, had_attribute, previous = self._wrapped
            if had_attribute:
                module.configure_optimizers = previous
            else:
                vars(module).pop("configure_optimizers", None)
        self._wrapped = None
        self._checkpoint_states = None

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._wrapped is None:  # not fitting: no optimizer state is loaded
            return
        self._checkpoint_states = checkpoint.get("optimizer_states")
        if self.replaced:  # strategies that restore after setup: the optimizers exist already
            self._check_checkpoint([new for _, new in self.replaced])

    # -- conversion ----------------------------------------------------------------------------
    def convert(self, optim_conf: Any, pl_module=None) -> Any:
        """`optim_conf` (any ``configure_optimizers`` return form) with each optimizer rebuilt as
        `optimizer_class` and each scheduler re-bound to its replacement."""
        if pl_module is not None:
            check_strategy(pl_module, self.optimizer_class)
        replacements: dict[int, tuple[Optimizer, Optimizer, float]] = {}  # id(old): (old, new, lr factor)
        schedulers: list[Any] = []

        def walk(item: Any) -> Any:
            if isinstance(item, LightningOptimizer):
                item = item.optimizer
            if isinstance(item, Optimizer):
                if id(item) not in replacements:
                    replacements[id(item)] = (item, *self._replace(item))
                return replacements[id(item)][1]
            if isinstance(item, dict):
                return {key: walk(value) for key, value in item.items()}
            if isinstance(item, (list, tuple)):
                return type(item)(walk(value) for value in item)
            if isinstance(getattr(item, "optimizer", None), (Optimizer, LightningOptimizer)):
                schedulers.append(item)  # an LRScheduler, or a custom one bound to an optimizer
            elif callable(getattr(item, "step", None)) and callable(getattr(item, "zero_grad", None)):
                raise TypeError(
                    f"LionCallback cannot convert {type(item).__name__}: it is not a torch.optim.Optimizer, so "
                    "its param groups are unknown; return a torch optimizer from configure_optimizers or drop the callback"
                )
            return item

        converted = walk(optim_conf)
        tracked: set[int] = set()
        for scheduler in schedulers:
            bound = scheduler.optimizer.optimizer if isinstance(scheduler.optimizer, LightningOptimizer) else scheduler.optimizer
            if id(bound) not in replacements:
                continue  # not returned with it; Lightning reports that itself
            _, new, factor = replacements[id(bound)]
            if new is bound:
                continue
            if id(new) not in tracked:
                _patch_step_tracking(new)
                tracked.add(id(new))
            _rebind_scheduler(scheduler, new, factor)

        self.replaced = [(old, new) for old, new, _ in replacements.values()]
        if pl_module is not None:
            swapped = {id(old): new for old, new in self.replaced if new is not old}
            names = _rebind_references(pl_module, swapped)
            if names:
                rank_zero_info(
                    f"LionCallback: {type(pl_module).__name__} attribute(s) {', '.join(map(repr, names))} "
                    f"now hold the {self.optimizer_class.__name__} replacement(s) of the original optimizer(s)"
                )
        if self._checkpoint_states is not None:
            self._check_checkpoint([new for _, new in self.replaced])
        return converted

    def _replace(self, old: Optimizer) -> tuple[Optimizer, float]:
        """(`optimizer_class` over `old`'s param groups, the factor applied to its learning rates)."""
        if type(old) is self.optimizer_class or (self.keep_lion and isinstance(old, Lion)):
            return old, 1.0
        name = type(old).__name__
        family = _family(old)
        groups = old.param_groups
        group_lrs = [float(group.get("initial_lr", group["lr"])) for group in groups]
        if self.lr is not None:
            peak = max(group_lrs)
            if not peak > 0:
                raise ValueError(f"LionCallback cannot set lr={self.lr!r}: every param group of {name} has lr 0")
            factor = self.lr / peak
        elif family == "adamw":
            factor = 1.0 / self.ratio
        elif family == "lion":
            factor = 1.0
        else:
            raise ValueError(
                f"LionCallback cannot translate the learning rate of {name} (only Adam/AdamW/Lion settings "
                f"translate): pass lr= and weight_decay= explicitly"
            )
        if self.weight_decay is None and family is None:
            raise ValueError(
                f"LionCallback cannot translate the weight decay of {name} (only Adam/AdamW/Lion settings "
                f"translate): pass weight_decay= explicitly"
            )
        if family == "adamw" and self.weight_decay is None and not old.defaults.get("decoupled_weight_decay", True):
            if any(float(group.get("weight_decay", 0.0)) > 0 for group in groups):
                rank_zero_warn(
                    f"LionCallback: {name}'s weight_decay is an L2 penalty (coupled), translated to Lion's "
                    f"decoupled decay as weight_decay x {self.ratio:g}"
                )
        any_decay = any(float(group.get("weight_decay", 0.0)) > 0 for group in groups)

        def decay(value: float) -> float:
            if self.weight_decay is not None:
                return self.weight_decay if value > 0 or not any_decay else 0.0
            return value * self.ratio if family == "adamw" else value

        source_keys = set(old.defaults) | {"params"}
        new_groups = []
        for group in groups:
            # keys the source optimizer does not define (scheduler bookkeeping, user tags) carry over
            new_group = {key: value for key, value in group.items() if key not in source_keys}
            for key in _GROUP_LR_KEYS:
                if key in new_group:
                    new_group[key] = float(new_group[key]) * factor
            new_group.update(
                params=group["params"],
                lr=float(group["lr"]) * factor,
                weight_decay=decay(float(group.get("weight_decay", 0.0))),
                **_with_betas(self.optimizer_class, self.betas),
            )
            if "maximize" in group:
                new_group["maximize"] = group["maximize"]
            new_groups.append(new_group)
        new = self.optimizer_class(
            new_groups,
            lr=float(old.defaults.get("lr", new_groups[0]["lr"] / factor)) * factor,
            weight_decay=decay(float(old.defaults.get("weight_decay", 0.0))),
            **_with_betas(self.optimizer_class, self.betas),
            **self.optimizer_kwargs,
        )
        return new, factor

    def _check_checkpoint(self, optimizers: list[Optimizer]) -> None:
        """Refuse to load an optimizer state that a non-Lion optimizer saved (e.g. a run without the callback)."""
        states = self._checkpoint_states or []
        for index, (optimizer, state) in enumerate(zip(optimizers, states)):
            for group in state.get("param_groups", ()):
                missing = sorted(set(optimizer.defaults) - set(group))
                if missing:
                    raise RuntimeError(
                        f"LionCallback: optimizer state {index} in the checkpoint was not saved by "
                        f"{type(optimizer).__name__} (its param groups lack {missing}); it looks like a run "
                        "without LionCallback. Resume it without the callback, or load only the weights "
                        "(model.load_state_dict(torch.load(path)['state_dict'])) and start Lion fresh"
                    )

