"""Simplification: remove redundant and low-effect statements, round constants, print the shortest form.

`simplify` works in passes, each keeping the program hash or (with `evaluate`) a loss within
`tolerance` (relative) of the starting loss:

1. `prune`: drop statements that abstract execution finds dead or without effect.
2. Copy propagation and constant folding (``x = y + 0.0``, ``x = y * 1.0`` and all-constant
   statements disappear).
3. Low-effect statements (needs `evaluate`): delete a statement, or replace it by a copy of one of
   its arguments (``update = clip(update, 5.0)`` -> nothing), when the loss stays within tolerance
   (sweeps from the last statement to the first, at most `max_sweeps`; evaluations cached by hash).
4. Constants (needs `evaluate`): round to 1 or 2 significant digits (interp weights: 1 - c) when
   the loss stays within tolerance.
5. Temporaries renamed t1, t2, ... in order.

With a `deadline` (a `time.perf_counter()` value), passes 3 and 4 start no evaluation after it and
keep the edits made by then.

`shortest_text` then inlines temporaries used once, so Lion prints as
``update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)``.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from .abstract import analyze, prune
from .mutate import round_constant
from .ops import OPS, fold
from .program import INPUTS, OUTPUTS, Program, Statement, format_arg

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _without(statements: list[Statement], index: int, value) -> list[Statement]:
    """Statements without `index`; later reads of its target (until it is reassigned) read `value`."""
    name = statements[index].target
    out, active = list(statements[:index]), True
    for statement in statements[index + 1:]:
        if active:
            statement = Statement(statement.target, statement.op, tuple(value if a == name else a for a in statement.args))
        active = active and statement.target != name
        out.append(statement)
    return out


def propagate(program: Program) -> Program:
    """Remove copies (statements equal to one of their arguments: ``x = y + 0.0``, ``y * 1.0``,
    ``interp(y, y, c)``, ...) and all-constant statements by substituting that argument or the value
    into the readers; a substitution is kept only when the program hash is unchanged."""
    key = analyze(program).hash
    index = 0
    while index < len(program):
        statement = program.statements[index]
        variables = list(dict.fromkeys(a for a in statement.args if isinstance(a, str)))
        values = variables if variables else [fold(OPS[statement.op], list(statement.args))]
        for value in values:  # the statement may compute one of its arguments: y * 1.0, max(y, y), ...
            try:
                candidate = Program(tuple(_without(list(program.statements), index, value)), program.outputs)
            except ValueError:
                continue
            if analyze(candidate).hash == key:
                program = candidate
                break
        else:
            index += 1
    return program


def rename(program: Program) -> Program:
    """Temporaries (names other than inputs and outputs) renamed t1, t2, ... in order of assignment."""
    keep = set(INPUTS) | set(OUTPUTS) | set(program.outputs)
    mapping: dict[str, str] = {}
    number = 0
    for statement in program.statements:
        if statement.target not in keep and statement.target not in mapping:
            number += 1
            while f"t{number}" in keep:
                number += 1
            mapping[statement.target] = f"t{number}"

    def name(arg):
        return mapping.get(arg, arg) if isinstance(arg, str) else arg

    statements = tuple(Statement(name(s.target), s.op, tuple(name(a) for a in s.args)) for s in program.statements)
    return Program(statements, tuple(name(o) for o in program.outputs))


def _variants(program: Program, index: int) -> list[Program]:
    """`program` with statement `index` deleted, or replaced by a copy of one of its variable args."""
    statements = list(program.statements)
    target = statements[index]
    options = [statements[:index] + statements[index + 1:]]
    for arg in dict.fromkeys(a for a in target.args if isinstance(a, str) and a != target.target):
        options.append(statements[:index] + [Statement(target.target, "add", (arg, 0.0))] + statements[index + 1:])
    out = []
    for option in options:
        try:
            candidate = Program(tuple(option), program.outputs)
        except ValueError:
            continue
        if analyze(candidate).valid:
            out.append(propagate(prune(candidate)))
    return out


class _OutOfTime(Exception):
    """The deadline passed before an evaluation."""


def _memoized(evaluate: Callable[[Program], float], deadline: float = math.inf) -> Callable[[Program], float]:
    """`evaluate` cached by program hash (equal hashes mean equal updates); raises `_OutOfTime`
    instead of evaluating after `deadline`."""
    cache: dict[str, float] = {}

    def cached(program: Program) -> float:
        key = analyze(program).hash
        if key not in cache:
            if time.perf_counter() > deadline:
                raise _OutOfTime
            cache[key] = evaluate(program)
        return cache[key]

    return cached


def _rounded(value: float, interp_weight: bool) -> list[float]:
    if interp_weight and 0.0 < value < 1.0:
        return [c for c in (1.0 - round_constant(1.0 - value, d) for d in (1, 2)) if 0.0 < c < 1.0 and c != value]
    return [c for c in dict.fromkeys(round_constant(value, d) for d in (1, 2)) if c not in (value, 0.0)]


def simplify(
    program: Program,
    evaluate: Callable[[Program], float] | None = None,
    tolerance: float = 0.01,
    log: Callable[[str], None] | None = None,
    max_sweeps: int = 3,
    deadline: float = math.inf,
) -> Program:
    """The shortest equivalent (or, with `evaluate`, near-equivalent) program; see the module docstring."""
    log = log or (lambda message: None)
    current = propagate(prune(program))
    if evaluate is not None:
        current = propagate(prune(_low_effect_edits(current, _memoized(evaluate, deadline), tolerance, log, max_sweeps)))
    return rename(current)


def _low_effect_edits(current: Program, evaluate, tolerance: float, log, max_sweeps: int) -> Program:
    """Passes 3 and 4 of the module docstring on `current`, with a memoized `evaluate`; when that
    raises `_OutOfTime`, the program edited so far."""
    try:
        base = evaluate(current)
        limit = base * (1 + tolerance) if base >= 0 else base * (1 - tolerance)
        for _ in range(max_sweeps):  # low-effect statements, last first
            progress = False
            index = len(current) - 1
            while index >= 0:
                for candidate in _variants(current, index):
                    if len(candidate) < len(current) and evaluate(candidate) <= limit:
                        log(f"  simplify: dropped '{current.statements[index]}'")
                        current, progress = candidate, True
                        break
                index = min(index, len(current)) - 1
            if not progress:
                break
        for index, statement in enumerate(current.statements):  # round constants
            for position, arg in enumerate(statement.args):
                if isinstance(arg, str):
                    continue
                for value in _rounded(arg, statement.op == "interp" and position == 2):
                    args = list(current.statements[index].args)
                    args[position] = value
                    statements = list(current.statements)
                    statements[index] = Statement(statement.target, statement.op, tuple(args))
                    candidate = Program(tuple(statements), current.outputs)
                    if analyze(candidate).valid and evaluate(candidate) <= limit:
                        log(f"  simplify: {format_arg(arg)} -> {format_arg(value)}")
                        current = candidate
                        break
    except _OutOfTime:
        log("  simplify: out of time; keeping the edits made so far")
    return current


# ------------------------------------------------------------------------------------------------
# Shortest text: inline temporaries used once


def _reads_of(statements: list[Statement], index: int) -> list[int]:
    """Readers of the value statement `index` writes (one entry per read), up to its overwrite;
    and whether it is overwritten."""
    name, readers = statements[index].target, []
    for later in range(index + 1, len(statements)):
        readers += [later] * statements[later].args.count(name)
        if statements[later].target == name:
            return readers, True
    return readers, False


def _expression(node, parent_symbol: str | None = None, right: bool = False) -> str:
    if not isinstance(node, tuple):
        return format_arg(node)
    op, args = node
    symbol = OPS[op].symbol
    if symbol is None:
        return f"{op}({', '.join(_expression(a) for a in args)})"
    text = f"{_expression(args[0], symbol)} {symbol} {_expression(args[1], symbol, right=True)}"
    if parent_symbol is not None:
        outer, inner = _PRECEDENCE[parent_symbol], _PRECEDENCE[symbol]
        if inner < outer or (right and inner <= outer):
            return f"({text})"
    return text


def shortest_text(program: Program, header: bool = False) -> str:
    """`program` with every temporary that is read once inlined into its reader (nested calls),
    one statement a line; ``parse`` reads it back to a program with the same hash."""
    program = _sink_state_updates(program)
    statements = list(program.statements)
    nodes: list = [(s.op, list(s.args)) for s in statements]
    inlined = [False] * len(statements)
    for index, statement in enumerate(statements):
        readers, overwritten = _reads_of(statements, index)
        if len(readers) != 1 or not overwritten and statement.target in program.outputs:
            continue
        reader = readers[0]
        reads = _free_names(nodes[index])
        if any(statements[k].target in reads for k in range(index + 1, reader)):
            continue  # an argument changes before the reader runs
        op, args = nodes[reader]
        nodes[reader] = (op, [nodes[index] if a == statement.target else a for a in args])
        inlined[index] = True
    lines = [f"{s.target} = {_expression(n)}" for s, n, skip in zip(statements, nodes, inlined) if not skip]
    if program.outputs != OUTPUTS:
        lines.append(f"return {', '.join(program.outputs)}")
    if header:
        body = [f"    {line}" for line in lines]
        if program.outputs == OUTPUTS:
            body.append(f"    return {', '.join(OUTPUTS)}")
        return "\n".join([f"def train({', '.join(INPUTS)}):", *body])
    return "\n".join(lines)


def _sink_state_updates(program: Program) -> Program:
    """Move the last writes of the state outputs to the end when nothing after them depends on it,
    so that the update's chain can be inlined (same hash)."""
    key = analyze(program).hash
    for name in program.outputs[1:]:
        statements = list(program.statements)
        writes = [i for i, s in enumerate(statements) if s.target == name]
        if not writes or writes[-1] == len(statements) - 1:
            continue
        index = writes[-1]
        moved, rest = statements[index], statements[index + 1:]
        reads = {a for a in moved.args if isinstance(a, str)}
        if any(name in s.args or s.target in reads or s.target == name for s in rest):
            continue
        candidate = Program(tuple(statements[:index] + rest + [moved]), program.outputs)
        if analyze(candidate).hash == key:
            program = candidate
    return program


def _free_names(node) -> set[str]:
    if isinstance(node, str):
        return {node}
    if not isinstance(node, tuple):
        return set()
    return set().union(*(_free_names(a) for a in node[1]))
