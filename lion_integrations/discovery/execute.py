"""Running a program on tensors: `compile_program` turns it into a straight-line Python function.

Constant sub-expressions are folded at compile time; ``+ - *`` run as Python operators, the other ops
through their protected implementations in `ops`. `norm` is a parameter, so batched callers can
reduce over their own segments (one segment per parameter tensor).
"""

from __future__ import annotations

from typing import Callable

import torch

from .ops import OPS, fold, get_op, norm
from .program import INPUTS, Program, format_arg, parse

Step = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def source(program: Program) -> str:
    """Python source of ``step(w, g, m, v, lr, norm) -> (update, m, v)`` for `program`."""
    constants: dict[str, float] = {}
    lines = [f"def step({', '.join(INPUTS)}, norm):"]
    for statement in program.statements:
        args = [constants.get(a, a) if isinstance(a, str) else a for a in statement.args]
        op = OPS[statement.op]
        if all(not isinstance(a, str) for a in args):
            constants[statement.target] = fold(op, args)
            continue
        constants.pop(statement.target, None)
        text = [format_arg(a) for a in args]
        if op.symbol in ("+", "-", "*"):
            expression = f"({text[0]}) {op.symbol} ({text[1]})"
        elif op.name == "norm":
            expression = f"norm({text[0]})"
        else:
            expression = f"_op_{op.name}({', '.join(text)})"
        lines.append(f"    {statement.target} = {expression}")
    outputs = [format_arg(constants[name]) if name in constants else name for name in program.outputs]
    lines.append(f"    return {', '.join(outputs)}")
    return "\n".join(lines)


_CACHE: dict[tuple, Step] = {}


def compile_program(program: Program | str, implementations: dict[str, Callable] | None = None) -> Step:
    """``step(w, g, m, v, lr, norm=ops.norm) -> (update, new_m, new_v)``; outputs may be numbers,
    scalars or tensors (callers broadcast them to the parameter's shape). `implementations` replaces
    the tensor implementation of the named ops (constant folding keeps the ops' own)."""
    program = parse(program)
    code = source(program)
    implementations = implementations or {}
    for name in implementations:
        get_op(name)
    key = (code, tuple(sorted(implementations.items())))
    step = _CACHE.get(key)
    if step is None:
        namespace = {f"_op_{name}": implementations.get(name, op.fn) for name, op in OPS.items()}
        exec(compile(code, "<discovered program>", "exec"), namespace)  # names are checked identifiers
        raw = namespace["step"]

        def step(w, g, m, v, lr, norm=norm, _raw=raw):
            return _raw(w, g, m, v, lr, norm)

        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[key] = step
    return step


def as_tensor_like(value, like: torch.Tensor) -> torch.Tensor:
    """`value` (a number or a broadcastable tensor) as a tensor of `like`'s shape, dtype and device."""
    if not isinstance(value, torch.Tensor):
        return torch.full_like(like, float(value))
    if value.shape != like.shape:
        value = value.expand(like.shape)
    return value.to(like.dtype)
