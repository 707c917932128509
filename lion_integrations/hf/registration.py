"""Our optim names as real `OptimizerNames` members, routed to `options.lion_cls_and_kwargs`.

Routing: transformers >= 5 looks optimizers up in ``trainer_optimizer._OPTIMIZER_HANDLERS``; we add
`optimizer_handler` there. Older releases (4.46-4.x) have no table; there `route_legacy_trainer` wraps
the static method ``Trainer.get_optimizer_cls_and_kwargs`` and delegates every other name to the original.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from transformers.training_args import OptimizerNames

from .. import __version__
from .options import lion_cls_and_kwargs, parse_optim_args
from .variants import VARIANTS, available_names, optimizer_class


def _add_enum_member(enum_cls: type, member_name: str, value: str) -> Any:
    """Add `member_name` = `value` to a ``(str, Enum)`` class as if it had been declared; idempotent."""
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        if existing.name != member_name:
            raise RuntimeError(f"{enum_cls.__name__} already maps {value!r} to {existing.name}, not {member_name}")
        return existing
    if member_name in enum_cls._member_map_:
        raise RuntimeError(f"{enum_cls.__name__}.{member_name} already exists with another value")
    member = str.__new__(enum_cls, value)
    member._name_ = member_name
    member._value_ = value
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    member.__init__(value)
    # Pickles (a Trainer checkpoint's training_args.bin) rebuild the member through `registered_name`,
    # so they load in a process that has not imported us.
    member.__reduce_ex__ = lambda protocol: (registered_name, (value,))
    type.__setattr__(enum_cls, member_name, member)  # EnumType.__setattr__ refuses member names
    enum_cls._member_map_[member_name] = member
    enum_cls._member_names_.append(member_name)
    enum_cls._value2member_map_[value] = member
    if isinstance(getattr(enum_cls, "_hashable_values_", None), list):  # Python >= 3.13
        enum_cls._hashable_values_.append(value)
    return member


def _explain_missing(enum_cls: type) -> None:
    """Make ``OptimizerNames("lion_q8")`` say why when that variant is not available here; idempotent."""
    current = inspect.getattr_static(enum_cls, "_missing_")
    if getattr(getattr(current, "__func__", None), "_lion_integrations", False):
        return
    fallback = enum_cls._missing_  # bound to enum_cls

    def _missing_(cls, value):
        if value in VARIANTS and optimizer_class(value) is None:
            raise ValueError(
                f"{value} is not a valid {cls.__name__}: optim={value!r} needs lion_integrations."
                f"{VARIANTS[value][1]}, which lion_integrations {__version__} does not provide"
            )
        return fallback(value)

    _missing_._lion_integrations = True
    type.__setattr__(enum_cls, "_missing_", classmethod(_missing_))


def _optim_name(optim: Any) -> str:
    """The text of ``args.optim``, an `OptimizerNames` member or a plain string."""
    return getattr(optim, "value", optim)


def optimizer_handler(ctx) -> tuple[type, dict[str, Any]]:
    """transformers >= 5 handler: OptimizerContext -> (class, kwargs)."""
    return lion_cls_and_kwargs(_optim_name(ctx.args.optim), ctx.args, parse_optim_args(ctx.args.optim_args), ctx.model)


# --- transformers < 5 (4.46-4.x): no handler table. Keep this small. -------------------------
def route_legacy_trainer(trainer_cls: type) -> None:
    """Wrap the static ``trainer_cls.get_optimizer_cls_and_kwargs`` so our names build Lion; idempotent."""
    original = inspect.getattr_static(trainer_cls, "get_optimizer_cls_and_kwargs")
    original_function = original.__func__ if isinstance(original, staticmethod) else original
    if getattr(original_function, "_lion_integrations", False):
        return

    def get_optimizer_cls_and_kwargs(args, model=None):
        name = _optim_name(args.optim)
        if name in VARIANTS:
            return lion_cls_and_kwargs(name, args, parse_optim_args(args.optim_args), model)
        return original_function(args, model)

    get_optimizer_cls_and_kwargs._lion_integrations = True
    get_optimizer_cls_and_kwargs.__wrapped__ = original_function
    get_optimizer_cls_and_kwargs.__doc__ = original_function.__doc__
    trainer_cls.get_optimizer_cls_and_kwargs = staticmethod(get_optimizer_cls_and_kwargs)
# --- end of transformers < 5 ------------------------------------------------------------------


def register() -> list[str]:
    """Add our optim names to OptimizerNames and route them to our optimizers; returns the names.

    Idempotent; call again after a new variant becomes importable to add it.
    """
    names = available_names()
    members = [_add_enum_member(OptimizerNames, VARIANTS[name][0], name) for name in names]
    _explain_missing(OptimizerNames)
    if importlib.util.find_spec("transformers.trainer_optimizer") is not None:
        from transformers.trainer_optimizer import _OPTIMIZER_HANDLERS

        for member in members:
            _OPTIMIZER_HANDLERS[member] = optimizer_handler
    else:  # transformers < 5
        from transformers import Trainer

        route_legacy_trainer(Trainer)
    return names


def registered_name(value: str) -> Any:
    """``OptimizerNames(value)`` after `register()`: how pickles of our names are loaded."""
    register()
    return OptimizerNames(value)
