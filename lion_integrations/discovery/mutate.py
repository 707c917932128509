"""Mutations of programs: insert, delete, modify (an argument or the op) and constant perturbation.

Every mutation returns a well-formed program (known ops with their arity, each read after a write,
outputs assigned, at most `max_statements`) that differs from its parent as text. Abstract validity
(the update depends on g, ...) is checked by the caller, which redraws invalid children.
New constants have 4 significant digits, so the text form stays short.
"""

from __future__ import annotations

import math
import random

from .ops import OPS
from .program import INPUTS, Program, Statement

KINDS = ("insert", "delete", "modify_arg", "modify_op", "perturb")
WEIGHTS = (0.25, 0.2, 0.2, 0.1, 0.25)
CONSTANTS = (0.9, 0.99, 0.999, 0.5, 0.1, 0.01, 0.001, 2.0, 1e-8)
OP_NAMES = tuple(OPS)


def round_constant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return float(f"{value:.{digits - 1}e}")


def defined_before(program: Program, index: int) -> list[str]:
    """Names readable by statement `index` (inputs and earlier targets), in a stable order."""
    names = list(INPUTS)
    for statement in program.statements[:index]:
        if statement.target not in names:
            names.append(statement.target)
    return names


def _random_arg(rng: random.Random, names: list[str], constant_prob: float = 0.2):
    if rng.random() < constant_prob:
        return rng.choice(CONSTANTS)
    return rng.choice(names)


def _random_statement(rng: random.Random, program: Program, index: int) -> Statement:
    names = defined_before(program, index)
    op = OPS[rng.choice(OP_NAMES)]
    args = [_random_arg(rng, names) for _ in range(op.arity)]
    if op.name == "interp":
        args[2] = rng.choice((0.9, 0.99, 0.999, 0.5, 0.1))
    if all(not isinstance(a, str) for a in args):  # keep at least one variable
        args[0] = rng.choice(names)
    targets = sorted({s.target for s in program.statements} | {"update", "m", "v"})
    fresh = next(f"t{i}" for i in range(1, 10_000) if f"t{i}" not in names)
    target = fresh if rng.random() < 0.3 else rng.choice(targets)
    return Statement(target, op.name, tuple(args))


def perturb_constant(value: float, rng: random.Random, interp_weight: bool = False, scale: float = 0.5) -> float:
    """A nearby constant: multiplied by exp(N(0, scale)); an interp weight in (0, 1) moves 1 - value instead."""
    factor = math.exp(rng.gauss(0.0, scale))
    if interp_weight and 0.0 < value < 1.0:
        return round_constant(min(max(1.0 - (1.0 - value) * factor, 0.0001), 0.9999))
    if value == 0.0:
        return round_constant(rng.choice(CONSTANTS))
    return round_constant(value * factor)


def _attempt(program: Program, kind: str, rng: random.Random, max_statements: int) -> Program | None:
    statements = list(program.statements)
    n = len(statements)
    if kind == "insert":
        if n >= max_statements:
            return None
        index = rng.randint(0, n)
        statements.insert(index, _random_statement(rng, program, index))
    elif kind == "delete":
        if n <= 1:
            return None
        del statements[rng.randrange(n)]
    elif kind in ("modify_arg", "modify_op"):
        if n == 0:
            return None
        index = rng.randrange(n)
        old = statements[index]
        names = defined_before(program, index)
        if kind == "modify_arg":
            args = list(old.args)
            args[rng.randrange(len(args))] = _random_arg(rng, names)
            statements[index] = Statement(old.target, old.op, tuple(args))
        else:
            op = OPS[rng.choice([name for name in OP_NAMES if name != old.op])]
            args = list(old.args[: op.arity]) + [_random_arg(rng, names) for _ in range(op.arity - len(old.args))]
            statements[index] = Statement(old.target, op.name, tuple(args))
    elif kind == "perturb":
        spots = [(i, j) for i, s in enumerate(statements) for j, a in enumerate(s.args) if not isinstance(a, str)]
        if not spots:
            return None
        i, j = rng.choice(spots)
        old = statements[i]
        args = list(old.args)
        args[j] = perturb_constant(args[j], rng, interp_weight=old.op == "interp" and j == 2)
        statements[i] = Statement(old.target, old.op, tuple(args))
    else:
        raise ValueError(f"unknown mutation {kind!r} (known: {', '.join(KINDS)})")
    try:
        child = Program(tuple(statements), program.outputs)
    except ValueError:  # e.g. a deletion left a read before any write
        return None
    return child if child != program else None


def mutate(program: Program, rng: random.Random, max_statements: int = 16, kind: str | None = None) -> Program:
    """One random mutation of `program` (of `kind` when given), redrawn until it is well-formed and new."""
    for _ in range(1000):
        chosen = kind or rng.choices(KINDS, WEIGHTS)[0]
        child = _attempt(program, chosen, rng, max_statements)
        if child is not None:
            return child
    raise ValueError(f"no {kind or 'mutation'} of this program is possible:\n{program}")
