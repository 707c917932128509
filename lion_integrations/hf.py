"""Hugging Face Trainer integration: `TrainingArguments(optim="lion")` builds `lion_integrations.Lion`.

Importing this module registers the names (or call `register()`); both are idempotent.

Names (values of `transformers.training_args.OptimizerNames`):

- ``lion`` (member ``LION_INTEGRATIONS``): `lion_integrations.Lion`, full-precision momentum.
- ``lion_q8`` / ``lion_q4`` (``LION_INTEGRATIONS_Q8`` / ``_Q4``): the quantized-momentum classes
  `Lion8bit` / `Lion4bit`, registered only when this version of lion_integrations provides them.
- ``lion_discovered`` (``LION_INTEGRATIONS_DISCOVERED``): `lion_integrations.discovery.DiscoveredOptimizer`
  running a program found by the search, named in ``optim_args`` (``program=PATH`` or a builtin name).

transformers' own ``lion_32bit``, ``lion_8bit``, ``paged_lion_*`` (bitsandbytes; the member
``OptimizerNames.LION`` is ``"lion_32bit"``) are left exactly as they are.

Hyperparameters: lr is ``learning_rate`` as given (Lion wants one 3-10x smaller than AdamW's, see
`lion_integrations.hparams.from_adamw`). Betas come from ``optim_args`` (``beta1=...,beta2=...``),
default (0.9, 0.99); ``adam_beta1``/``adam_beta2`` are Adam's and are ignored. ``optim_args`` also
takes the optimizer's own keyword options (e.g. ``fused=false``, ``momentum_dtype=float32``, or a
quantized variant's ``block_size``); unknown keys raise ValueError. Weight decay is
``weight_decay``, applied through Trainer's decay/no-decay parameter groups.

Routing: transformers >= 5 looks optimizers up in ``trainer_optimizer._OPTIMIZER_HANDLERS``; we add
a handler there. Older releases (4.46-4.x) have no table; there we wrap the static method
``Trainer.get_optimizer_cls_and_kwargs`` and delegate every other name to the original.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import importlib
import inspect
import logging
from typing import Any

try:
    from transformers.training_args import OptimizerNames, TrainingArguments
except ImportError as error:  # pragma: no cover - exercised by a test that hides transformers
    raise ImportError(
        "lion_integrations.hf needs Hugging Face transformers (>= 4.46); install the 'hf' extra: "
        "pip install 'lion-integrations[hf]'"
    ) from error

import lion_integrations
from lion_integrations.deepspeed import check_trainer_args
from lion_integrations.names import OPTIMIZER_NAMES

logger = logging.getLogger(__name__)

# optim name -> (OptimizerNames member name, class path inside lion_integrations)
VARIANTS: dict[str, tuple[str, str]] = {
    name: (f"LION_INTEGRATIONS{suffix}", OPTIMIZER_NAMES[name])
    for name, suffix in (("lion", ""), ("lion_q8", "_Q8"), ("lion_q4", "_Q4"), ("lion_discovered", "_DISCOVERED"))
}
DEFAULT_BETAS = (0.9, 0.99)
BETA_KEYS = ("beta1", "beta2")
# Keys that TrainingArguments already sets: optim_args may not set them a second time.
RESERVED_KEYS = {
    "lr": "set it with learning_rate (--learning_rate)",
    "learning_rate": "set it with learning_rate (--learning_rate)",
    "weight_decay": "set it with weight_decay (--weight_decay); Trainer applies it to decayed parameters only",
    "betas": "give beta1=...,beta2=... instead",
    "params": "Trainer passes the parameters",
}


def optimizer_class(name: str) -> type | None:
    """The class behind optim `name`, or None when this version of lion_integrations lacks it."""
    module_path, _, attribute = f"lion_integrations.{VARIANTS[name][1]}".rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ImportError:
        return None
    return getattr(module, attribute, None)


def available_names() -> list[str]:
    """The optim names this installation can register (``lion``, plus quantized ones that exist)."""
    return [name for name in VARIANTS if optimizer_class(name) is not None]


# ---------------------------------------------------------------------------------------------
# optim_args -> optimizer kwargs
# ---------------------------------------------------------------------------------------------


def parse_optim_args(text: str | None) -> dict[str, str]:
    """``"k1=v1,k2=v2"`` (TrainingArguments.optim_args) as a dict of strings; raises on a malformed entry."""
    options: dict[str, str] = {}
    for entry in (text or "").replace(" ", "").split(","):
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        if not sep or not key or "=" in value:
            raise ValueError(f"Invalid optim_args entry {entry!r}: expected key=value pairs separated by commas")
        if key in options:
            raise ValueError(f"Invalid optim_args: {key!r} is given twice ({key}={options[key]}, {key}={value})")
        options[key] = value
    return options


def _literal(text: str) -> Any:
    """'true'/'false' -> bool, 'none' -> None, then int, then float, else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def optimizer_options(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword options of ``cls.__init__`` that optim_args may set (all but params/lr/betas/weight_decay)."""
    options = {}
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in RESERVED_KEYS:
            continue
        options[parameter.name] = parameter
    return options


def lion_cls_and_kwargs(name: str, args: TrainingArguments, optim_args: dict[str, str]) -> tuple[type, dict[str, Any]]:
    """The optimizer class and constructor kwargs for optim `name` under `args`; logs the betas used."""
    cls = optimizer_class(name)
    if cls is None:
        raise ValueError(f"optim={name!r} needs lion_integrations.{VARIANTS[name][1]}, which this version lacks")
    check_trainer_args(args, cls)  # deepspeed=...: settings that would silently do less
    accepted = optimizer_options(cls)
    betas = list(DEFAULT_BETAS)
    options: dict[str, Any] = {}
    for key, text in optim_args.items():
        if key in RESERVED_KEYS:
            raise ValueError(f"optim_args key {key!r} is not accepted for optim={name!r}: {RESERVED_KEYS[key]}")
        value = _literal(text)
        if key in BETA_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"Invalid optim_args {key}={text!r} for optim={name!r}: expected a number in [0, 1)")
            betas[BETA_KEYS.index(key)] = float(value)
        elif key in accepted:
            parameter = accepted[key]
            expects_bool = isinstance(parameter.default, bool) or "bool" in str(parameter.annotation)
            if expects_bool and not isinstance(value, bool) and not (value is None and parameter.default is None):
                raise ValueError(f"Invalid optim_args {key}={text!r} for optim={name!r}: expected true or false")
            options[key] = value
        else:
            raise ValueError(
                f"Unknown optim_args key {key!r} for optim={name!r} ({cls.__name__}); "
                f"accepted: {', '.join([*BETA_KEYS, *accepted])}"
            )
    missing = [key for key, parameter in accepted.items() if parameter.default is parameter.empty and key not in options]
    if missing:
        raise ValueError(f"optim={name!r} ({cls.__name__}) needs optim_args {', '.join(f'{key}=...' for key in missing)}")
    kwargs = {"lr": args.learning_rate, "weight_decay": args.weight_decay, **options}
    if "betas" in inspect.signature(cls.__init__).parameters:
        _log_choice(name, cls, args, betas, explicit_betas=any(key in optim_args for key in BETA_KEYS))
        kwargs["betas"] = tuple(betas)
    elif any(key in optim_args for key in BETA_KEYS):
        raise ValueError(f"optim={name!r} ({cls.__name__}) takes no betas: its program defines its own")
    return cls, kwargs


def _adam_beta_defaults() -> tuple[float, float]:
    defaults = {field.name: field.default for field in dataclasses.fields(TrainingArguments)}
    return defaults["adam_beta1"], defaults["adam_beta2"]


def _log_choice(name: str, cls: type, args: TrainingArguments, betas: list[float], explicit_betas: bool) -> None:
    adam_betas = (args.adam_beta1, args.adam_beta2)
    source = "optim_args" if explicit_betas else "Lion's default; set with --optim_args beta1=...,beta2=..."
    logger.info(
        "optim=%s: %s with betas=(%g, %g) (%s), lr=%g, weight_decay=%g on decayed parameters; "
        "adam_beta1/adam_beta2 %s are Adam's and ignored for Lion",
        name, cls.__name__, betas[0], betas[1], source, args.learning_rate, args.weight_decay, adam_betas,
    )
    if not explicit_betas and adam_betas != _adam_beta_defaults():
        logger.warning(
            "optim=%s ignores adam_beta1=%s, adam_beta2=%s; Lion uses betas=(%s, %s). "
            "Pass --optim_args beta1=...,beta2=... to change them",
            name, args.adam_beta1, args.adam_beta2, betas[0], betas[1],
        )


def _name_of(optim: Any) -> str:
    return getattr(optim, "value", optim)


# ---------------------------------------------------------------------------------------------
# OptimizerNames: real enum members
# ---------------------------------------------------------------------------------------------


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
                f"{VARIANTS[value][1]}, which lion_integrations {lion_integrations.__version__} does not provide"
            )
        return fallback(value)

    _missing_._lion_integrations = True
    type.__setattr__(enum_cls, "_missing_", classmethod(_missing_))


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def _handler(ctx) -> tuple[type, dict[str, Any]]:
    """transformers >= 5 handler: OptimizerContext -> (class, kwargs)."""
    return lion_cls_and_kwargs(_name_of(ctx.args.optim), ctx.args, parse_optim_args(ctx.args.optim_args))


def _route_handler_table(handlers: dict, members: list) -> None:
    for member in members:
        handlers[member] = _handler


# --- transformers < 5 (4.46-4.x): no handler table. Keep this small. -------------------------
def _route_legacy(trainer_cls: type) -> None:
    """Wrap the static ``trainer_cls.get_optimizer_cls_and_kwargs`` so our names build Lion."""
    original = inspect.getattr_static(trainer_cls, "get_optimizer_cls_and_kwargs")
    original_function = original.__func__ if isinstance(original, staticmethod) else original
    if getattr(original_function, "_lion_integrations", False):
        return

    def get_optimizer_cls_and_kwargs(args, model=None):
        name = _name_of(args.optim)
        if name in VARIANTS:
            return lion_cls_and_kwargs(name, args, parse_optim_args(args.optim_args))
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

        _route_handler_table(_OPTIMIZER_HANDLERS, members)
    else:  # transformers < 5
        from transformers import Trainer

        _route_legacy(Trainer)
    return names


def registered_name(value: str) -> Any:
    """``OptimizerNames(value)`` after `register()`: how pickles of our names are loaded."""
    register()
    return OptimizerNames(value)


REGISTERED = register()

__all__ = ["register", "available_names", "lion_cls_and_kwargs", "parse_optim_args", "VARIANTS", "DEFAULT_BETAS"]
