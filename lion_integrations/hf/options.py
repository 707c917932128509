"""``TrainingArguments`` -> the optimizer class and its keyword arguments, for our optim names.

lr is ``learning_rate`` and weight decay ``weight_decay``, as given. Betas come from ``optim_args``
(``beta1=...,beta2=...``), default `optimizer.DEFAULT_BETAS`; ``adam_beta1``/``adam_beta2`` are Adam's
and are ignored (with a warning when set). Every other ``optim_args`` key must be a keyword option of
the optimizer class (e.g. ``fused=false``, ``momentum_dtype=float32``, a quantized variant's ``block_size``).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers.training_args import TrainingArguments

from ..adapters import accepts_betas
from ..checks import check_bool, check_real
from ..deepspeed import check_trainer_args
from ..optimizer import DEFAULT_BETAS
from .launch import warn_if_ranks_train_alone
from .run_length import choose_fused
from .variants import VARIANTS, optimizer_class
from .visibility import info_logger

logger = logging.getLogger(__name__)

BETA_KEYS = ("beta1", "beta2")
# Keys that TrainingArguments already sets: optim_args may not set them a second time.
RESERVED_KEYS = {
    "lr": "set it with learning_rate (--learning_rate)",
    "learning_rate": "set it with learning_rate (--learning_rate)",
    "weight_decay": "set it with weight_decay (--weight_decay); Trainer applies it to decayed parameters only",
    "betas": "give beta1=...,beta2=... instead",
    "params": "Trainer passes the parameters",
}


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


def parse_value(text: str) -> Any:
    """The Python value an optim_args value spells: 'true'/'false' (any case) -> bool, 'none' -> None,
    then an int, then a float, else the text itself."""
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
    """Keyword options of ``cls.__init__`` that optim_args may set (all but the `RESERVED_KEYS`)."""
    options = {}
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in RESERVED_KEYS:
            continue
        options[parameter.name] = parameter
    return options


def checked_option(optim: str, key: str, text: str, expected: str, check: Callable[..., Any], **bounds: Any) -> Any:
    """``check(parse_value(text), key, **bounds)``; a value it refuses raises ValueError naming the
    optim_args entry and `expected` (the entry is text, so a wrong type is a wrong value here)."""
    try:
        return check(parse_value(text), key, **bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Invalid optim_args {key}={text!r} for optim={optim!r}: expected {expected}") from error


def option_value(optim: str, key: str, text: str, parameter: inspect.Parameter) -> Any:
    """The value of optim_args entry `key`=`text` for the optimizer's `parameter`: checked here for a
    flag (true/false, or none where that is the default); other values are the optimizer's to check."""
    if isinstance(parameter.default, bool) or "bool" in str(parameter.annotation):
        allow_none = parameter.default is None
        expected = "true or false, or none" if allow_none else "true or false"
        return checked_option(optim, key, text, expected, check_bool, allow_none=allow_none)
    return parse_value(text)


def lion_cls_and_kwargs(
    name: str, args: TrainingArguments, optim_args: dict[str, str], model: torch.nn.Module | None = None
) -> tuple[type, dict[str, Any]]:
    """The optimizer class and constructor kwargs for optim `name` under `args`, for `model` (whose
    size, with ``args.max_steps``, picks the fused path: see `run_length`); logs the betas used."""
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
        if key in BETA_KEYS:
            betas[BETA_KEYS.index(key)] = checked_option(
                name, key, text, "a number in [0, 1)", check_real, minimum=0.0, maximum=1.0, below_maximum=True
            )
        elif key in accepted:
            options[key] = option_value(name, key, text, accepted[key])
        else:
            raise ValueError(
                f"Unknown optim_args key {key!r} for optim={name!r} ({cls.__name__}); "
                f"accepted: {', '.join([*BETA_KEYS, *accepted])}"
            )
    missing = [key for key, parameter in accepted.items() if parameter.default is parameter.empty and key not in options]
    if missing:
        raise ValueError(f"optim={name!r} ({cls.__name__}) needs optim_args {', '.join(f'{key}=...' for key in missing)}")
    warn_if_ranks_train_alone(args)
    options = choose_fused(name, args.max_steps, model, options)
    kwargs = {"lr": args.learning_rate, "weight_decay": args.weight_decay, **options}
    explicit_betas = any(key in optim_args for key in BETA_KEYS)
    if accepts_betas(cls):
        _log_choice(name, cls, args, betas, explicit_betas)
        kwargs["betas"] = tuple(betas)
    elif explicit_betas:
        raise ValueError(f"optim={name!r} ({cls.__name__}) takes no betas: its program defines its own")
    return cls, kwargs


def _adam_beta_defaults() -> tuple[float, float]:
    defaults = {field.name: field.default for field in dataclasses.fields(TrainingArguments)}
    return defaults["adam_beta1"], defaults["adam_beta2"]


def _log_choice(name: str, cls: type, args: TrainingArguments, betas: list[float], explicit_betas: bool) -> None:
    adam_betas = (args.adam_beta1, args.adam_beta2)
    source = "optim_args" if explicit_betas else "Lion's default; set with --optim_args beta1=...,beta2=..."
    info_logger(logger).info(
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
