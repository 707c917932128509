"""Input checks shared by every module: one wording, torch's exception types.

As in torch.optim, a value of the wrong type raises `TypeError` and a value of the right type that is
out of range raises `ValueError`; both messages read ``Invalid <name>: <value!r> (<what is expected>)``.
`bool` is never accepted where a number is expected (``lr=True`` is a mistake, not 1.0), and strings
are never parsed (``lr="1e-3"`` is refused: parse configuration text before it reaches an optimizer).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["check_bool", "check_choice", "check_int", "check_real"]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    above_minimum: bool = False,
    below_maximum: bool = False,
    allow_tensor: bool = False,
) -> float:
    """`value` as a float, which must be finite and in ``[minimum, maximum]``; `above_minimum` and
    `below_maximum` leave out that end (``(minimum, ...`` and ``..., maximum)``). `allow_tensor`: a
    one-element floating tensor is accepted too (a tensor lr)."""
    number = value
    if allow_tensor and isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"Invalid {name}: a tensor {name} must hold one floating value, got "
                f"shape {tuple(value.shape)} of {value.dtype}"
            )
        number = value.item()
    elif not _is_real(value):
        raise TypeError(f"Invalid {name}: {value!r} (expected a number, got {type(value).__name__})")
    number = float(number)
    below = number <= minimum if above_minimum else number < minimum
    above = number >= maximum if below_maximum else number > maximum
    if not math.isfinite(number) or below or above:
        opening, closing = "(" if above_minimum else "[", ")" if below_maximum else "]"
        raise ValueError(
            f"Invalid {name}: {value!r} (expected a finite number in {opening}{minimum}, {maximum}{closing})"
        )
    return number


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """`value`, which must be an int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Invalid {name}: {value!r} (expected an int, got {type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (expected an int >= {minimum})")
    return int(value)


def check_bool(value: Any, name: str, *, allow_none: bool = False) -> bool | None:
    """`value`, which must be True or False (or None with `allow_none`)."""
    if value is True or value is False or (allow_none and value is None):
        return value
    expected = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"Invalid {name}: {value!r} (expected {expected})")


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """`value`, which must be one of `choices`."""
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")
    return value
