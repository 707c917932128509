"""The function set of discovered programs: name, arity, a safe tensor implementation, abstract type rules.

Values are tensors (the shape of a parameter), scalars (one number per parameter tensor, e.g. lr or
norm(g)) or constants. Every op is elementwise except `norm`, which reduces a tensor to a scalar.
Implementations are protected so that they stay finite on finite input where the math allows:
sqrt and log act on |x|, division and log floor |x| at a tiny value, exp/cosh clamp their input,
arcsin clamps to [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

TINY = 1e-12  # |denominator| and |log argument| floor
EXP_MAX = 60.0  # exp/cosh input clamp (exp(60) ~ 1e26, finite in fp32)

# Abstract value kinds, ordered: combining kinds gives the largest.
CONST, SCALAR, TENSOR = 0, 1, 2
KIND_NAMES = {CONST: "constant", SCALAR: "scalar", TENSOR: "tensor"}


def _like(value: Any, other: Any) -> Any:
    """`value` as a tensor on `other`'s device/dtype when `other` is a tensor and `value` a number."""
    if isinstance(value, torch.Tensor) or not isinstance(other, torch.Tensor):
        return value
    return torch.as_tensor(value, dtype=other.dtype, device=other.device)


def _pair(x: Any, y: Any) -> tuple[Any, Any]:
    return _like(x, y), _like(y, x)


def _safe_denominator(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        return torch.where(y.abs() < TINY, torch.where(y < 0, -TINY, TINY).to(y.dtype), y)
    return y if abs(y) >= TINY else math.copysign(TINY, y)


def interp(x, y, a):
    """interp(x, y, a) = (1 - a)*x + a*y (the paper's interp; torch.lerp(x, y, a))."""
    return x + a * (y - x)


def div(x, y):
    """x / y with |y| floored at TINY (sign kept)."""
    return x / _safe_denominator(y)


def clip(x, c):
    """clip(x, c) = min(max(x, -|c|), |c|)."""
    x, c = _pair(x, c)
    bound = c.abs()
    return torch.minimum(torch.maximum(x, -bound), bound)


def maximum(x, y):
    """max(x, y), elementwise."""
    return torch.maximum(*_pair(x, y))


def minimum(x, y):
    """min(x, y), elementwise."""
    return torch.minimum(*_pair(x, y))


def norm(x):
    """||x||_2 over the whole parameter tensor (a scalar)."""
    return torch.linalg.vector_norm(x)


@dataclass(frozen=True)
class Op:
    """One function of the set: `fn` takes tensors or numbers (at least one tensor at run time)."""

    name: str
    arity: int
    fn: Callable[..., Any]
    commutative: bool = False
    symbol: str | None = None  # infix operator in the text form
    reduces: bool = False  # tensor -> scalar (norm)

    def kind(self, arg_kinds: list[int]) -> int:
        """Abstract kind of the result: norm of anything non-constant is a scalar, else the largest kind."""
        largest = max(arg_kinds)
        return min(largest, SCALAR) if self.reduces else largest


_OPS = [
    Op("add", 2, lambda x, y: x + y, commutative=True, symbol="+"),
    Op("sub", 2, lambda x, y: x - y, symbol="-"),
    Op("mul", 2, lambda x, y: x * y, commutative=True, symbol="*"),
    Op("div", 2, div, symbol="/"),
    Op("interp", 3, interp),
    Op("max", 2, maximum, commutative=True),
    Op("min", 2, minimum, commutative=True),
    Op("clip", 2, clip),
    Op("sign", 1, torch.sign),
    Op("abs", 1, torch.abs),
    Op("sqrt", 1, lambda x: torch.sqrt(x.abs())),
    Op("square", 1, torch.square),
    Op("exp", 1, lambda x: torch.exp(x.clamp(max=EXP_MAX))),
    Op("log", 1, lambda x: torch.log(x.abs().clamp(min=TINY))),
    Op("arcsin", 1, lambda x: torch.asin(x.clamp(-1.0, 1.0))),
    Op("cosh", 1, lambda x: torch.cosh(x.clamp(-EXP_MAX, EXP_MAX))),
    Op("tanh", 1, torch.tanh),
    Op("norm", 1, norm, reduces=True),
]

OPS: dict[str, Op] = {op.name: op for op in _OPS}
INFIX: dict[str, str] = {op.symbol: op.name for op in _OPS if op.symbol}


def get_op(name: str) -> Op:
    """The op called `name`; ValueError naming the known ops otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r} (known: {', '.join(sorted(OPS))})") from None


def fold(op: Op, args: list[float]) -> float:
    """Value of `op` on constants, computed in float64 with the same protections."""
    tensors = [torch.tensor(a, dtype=torch.float64) for a in args]
    return float(op.fn(*tensors))
