"""`LionCallback`: train an unchanged LightningModule with Lion."""

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from ..adapters import betas_kwargs, resolve_optimizer_class
from ..hparams import DEFAULT_RATIO, from_adamw
from ..optimizer import DEFAULT_BETAS, LATE_GROUP_KEYS, Lion, validate_hyperparameters
from .strategies import check_strategy
from .rebinding import rebind_references, rebind_scheduler, scaled_group_lrs, track_steps

# Optimizers whose lr/weight decay are in AdamW units (translated by `ratio`), by class name in the MRO.
ADAMW_FAMILY = frozenset({
    "Adam", "AdamW", "NAdam", "RAdam", "FusedAdam", "Adam8bit", "AdamW8bit", "Adam32bit", "AdamW32bit",
    "PagedAdam", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit",
})
# Keyword arguments of the new optimizer that the callback sets itself.
CALLBACK_KEYS = ("params", "lr", "betas", "weight_decay")


def _family(optimizer: Optimizer) -> str | None:
    """'adamw' or 'lion' for an optimizer whose lr and weight decay are in that family's units; else None."""
    names = {cls.__name__ for cls in type(optimizer).__mro__}
    if names & ADAMW_FAMILY:
        return "adamw"
    if any(name.startswith("Lion") for name in names):
        return "lion"
    return None


class LionCallback(Callback):
    r"""Train an unchanged LightningModule with Lion: the optimizers its ``configure_optimizers`` returns
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

    Attributes:
        replaced: ``(original, replacement)`` for each optimizer of the last conversion.

    Raises:
        ValueError: for an lr, weight decay or scheduler the callback cannot translate (e.g. from SGD
            without ``lr=`` and ``weight_decay=``).
        TypeError: for a duck-typed optimizer that is not a ``torch.optim.Optimizer``.
        RuntimeError: when resuming from a checkpoint whose optimizer state another optimizer saved.

    Example::

        >>> import torch
        >>> from lightning.pytorch import Trainer
        >>> from lion_integrations.lightning import LionCallback
        >>> lion_callback = LionCallback(ratio=5.0, optimizer_kwargs={"fused": False})
        >>> trainer = Trainer(callbacks=[lion_callback])
        >>> # What fitting does to the optimizers that configure_optimizers returns:
        >>> adamw = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=0.1)
        >>> lion = lion_callback.convert(adamw)
        >>> type(lion).__name__, lion.param_groups[0]["lr"], lion.param_groups[0]["weight_decay"]
        ('Lion', 0.0002, 0.5)

    From a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lion_integrations.lightning.LionCallback
              init_args: {ratio: 5}
    """

    def __init__(
        self,
        lr: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] = DEFAULT_BETAS,
        ratio: float = DEFAULT_RATIO,
        optimizer_class: str | type[Optimizer] | None = None,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        validate_hyperparameters(0.0 if lr is None else lr, betas, 0.0 if weight_decay is None else weight_decay)
        from_adamw(1.0, 0.0, ratio)  # validates ratio
        if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, dict):
            raise ValueError(f"Invalid optimizer_kwargs: {optimizer_kwargs!r} (expected a dict or None)")
        for key in CALLBACK_KEYS:
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
        self.replaced: list[tuple[Optimizer, Optimizer]] = []
        self._wrapped: tuple[torch.nn.Module, bool, Any] | None = None
        self._checkpoint_states: list[dict[str, Any]] | None = None

    # -- hooks ---------------------------------------------------------------------------------
    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
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

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit":
            self._unwrap()

    @override
    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._unwrap()

    @override
    def on_load_checkpoint(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict[str, Any]
    ) -> None:
        if self._wrapped is None:  # not fitting: no optimizer state is loaded
            return
        self._checkpoint_states = checkpoint.get("optimizer_states")
        if self.replaced:  # strategies that restore after setup: the optimizers exist already
            self._check_checkpoint([new for _, new in self.replaced])

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

    # -- conversion ----------------------------------------------------------------------------
    def convert(self, optim_conf: Any, pl_module: "pl.LightningModule | None" = None) -> Any:
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
        self._rebind_schedulers(schedulers, replacements)
        self.replaced = [(old, new) for old, new, _ in replacements.values()]
        if pl_module is not None:
            swapped = {id(old): new for old, new in self.replaced if new is not old}
            names = rebind_references(pl_module, swapped)
            if names:
                rank_zero_info(
                    f"LionCallback: {type(pl_module).__name__} attribute(s) {', '.join(map(repr, names))} "
                    f"now hold the {self.optimizer_class.__name__} replacement(s) of the original optimizer(s)"
                )
        if self._checkpoint_states is not None:
            self._check_checkpoint([new for _, new in self.replaced])
        return converted

    @staticmethod
    def _rebind_schedulers(schedulers: list[Any], replacements: dict[int, tuple[Optimizer, Optimizer, float]]) -> None:
        """Point each scheduler bound to a replaced optimizer at the replacement, lrs scaled by its factor."""
        tracked: set[int] = set()
        for scheduler in schedulers:
            bound = scheduler.optimizer.optimizer if isinstance(scheduler.optimizer, LightningOptimizer) else scheduler.optimizer
            if id(bound) not in replacements:
                continue  # not returned with it; Lightning reports that itself
            _, new, factor = replacements[id(bound)]
            if new is bound:
                continue
            if id(new) not in tracked:
                track_steps(new)
                tracked.add(id(new))
            rebind_scheduler(scheduler, new, factor)

    def _replace(self, old: Optimizer) -> tuple[Optimizer, float]:
        """(`optimizer_class` over `old`'s param groups, the factor applied to its learning rates)."""
        if type(old) is self.optimizer_class or (self.keep_lion and isinstance(old, Lion)):
            return old, 1.0
        family = _family(old)
        factor = self._lr_factor(old, family)
        decay = self._weight_decay_rule(old, family)
        source_keys = set(old.defaults) | {"params"}
        new_groups = [self._lion_group(group, source_keys, factor, decay) for group in old.param_groups]
        new = self.optimizer_class(
            new_groups,
            lr=float(old.defaults.get("lr", new_groups[0]["lr"] / factor)) * factor,
            weight_decay=decay(float(old.defaults.get("weight_decay", 0.0))),
            **betas_kwargs(self.optimizer_class, self.betas),
            **self.optimizer_kwargs,
        )
        return new, factor

    def _lr_factor(self, old: Optimizer, family: str | None) -> float:
        """Lion's lr over `old`'s: `lr` over the peak group lr when given, else 1/`ratio` from AdamW, 1 from Lion."""
        if self.lr is not None:
            peak = max(float(group.get("initial_lr", group["lr"])) for group in old.param_groups)
            if not peak > 0:
                raise ValueError(f"LionCallback cannot set lr={self.lr!r}: every param group of {type(old).__name__} has lr 0")
            return self.lr / peak
        if family == "adamw":
            return 1.0 / self.ratio
        if family == "lion":
            return 1.0
        raise ValueError(
            f"LionCallback cannot translate the learning rate of {type(old).__name__} (only Adam/AdamW/Lion "
            f"settings translate): pass lr= and weight_decay= explicitly"
        )

    def _weight_decay_rule(self, old: Optimizer, family: str | None) -> Callable[[float], float]:
        """The map from a weight decay of `old` (a group's, or its default) to Lion's."""
        name = type(old).__name__
        any_decay = any(float(group.get("weight_decay", 0.0)) > 0 for group in old.param_groups)
        if self.weight_decay is not None:
            explicit = self.weight_decay
            return lambda value: explicit if value > 0 or not any_decay else 0.0
        if family is None:
            raise ValueError(
                f"LionCallback cannot translate the weight decay of {name} (only Adam/AdamW/Lion settings "
                f"translate): pass weight_decay= explicitly"
            )
        if family == "lion":
            return lambda value: value
        if any_decay and not old.defaults.get("decoupled_weight_decay", True):
            rank_zero_warn(
                f"LionCallback: {name}'s weight_decay is an L2 penalty (coupled), translated to Lion's "
                f"decoupled decay as weight_decay x {self.ratio:g}"
            )
        ratio = self.ratio
        return lambda value: value * ratio

    def _lion_group(
        self, group: dict[str, Any], source_keys: set[str], factor: float, decay: Callable[[float], float]
    ) -> dict[str, Any]:
        """Lion's param group for `group` of the source optimizer."""
        # keys the source optimizer does not define (scheduler bookkeeping, user tags) carry over
        new_group = {key: value for key, value in group.items() if key not in source_keys}
        new_group.update(scaled_group_lrs(new_group, factor))
        new_group.update(
            params=group["params"],
            lr=float(group["lr"]) * factor,
            weight_decay=decay(float(group.get("weight_decay", 0.0))),
            **betas_kwargs(self.optimizer_class, self.betas),
        )
        if "maximize" in group:
            new_group["maximize"] = group["maximize"]
        return new_group

    def _check_checkpoint(self, optimizers: list[Optimizer]) -> None:
        """Refuse to load an optimizer state that a non-Lion optimizer saved (e.g. a run without the callback)."""
        states = self._checkpoint_states or []
        for index, (optimizer, state) in enumerate(zip(optimizers, states)):
            for group in state.get("param_groups", ()):
                missing = sorted(set(optimizer.defaults) - set(group) - set(LATE_GROUP_KEYS))
                if missing:
                    raise RuntimeError(
                        f"LionCallback: optimizer state {index} in the checkpoint was not saved by "
                        f"{type(optimizer).__name__} (its param groups lack {missing}); it looks like a run "
                        "without LionCallback. Resume it without the callback, or load only the weights "
                        "(model.load_state_dict(torch.load(path)['state_dict'])) and start Lion fresh"
                    )
