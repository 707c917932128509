"""Simplification (lion_integrations.discovery.simplify): known redundancy removed exactly, copies
dropped, with a loss only the statements and digits that matter kept, and a deadline keeping the edits
made before it."""

from __future__ import annotations

import importlib
from dataclasses import replace
from types import SimpleNamespace

import pytest

from lion_integrations.discovery import Program, Statement, parse, program_hash, prune, shortest_text, simplify
from lion_integrations.discovery.simplify import _rounded, _variants
from lion_integrations.discovery.tasks import TINY
from lion_integrations.discovery.training import Task
from tests.helpers.discovery import ADAMW, LION

pytestmark = pytest.mark.usefixtures("one_thread")


def test_simplify_removes_known_redundancy_exactly():
    redundant = parse(
        "x = w * 2.0\n"
        "c = 0.5 + 0.4\n"  # a constant statement: folded into its reader
        "u = interp(g, m, c)\n"
        "update = u + 0.0\n"  # a copy
        "v = interp(square(g), v, 0.999)\n"  # a state the update never reads
        "update = sign(update)\n"
        "update = update * 1.0\n"
        "m = interp(g, m, 0.99)\n"
        "update = update * lr\n"
        "x = x + update"
    )
    simple = simplify(redundant)
    assert shortest_text(simple) == "update = sign(interp(g, m, 0.9)) * lr\nm = interp(g, m, 0.99)"
    assert program_hash(simple) == program_hash(redundant) == program_hash(LION)
    assert shortest_text(simplify(ADAMW)) == (
        "m = interp(g, m, 0.9)\nv = interp(square(g), v, 0.999)\nupdate = (m / (sqrt(v) + 1e-08) + w * 0.01) * lr"
    )
    nested = parse("update = (g - m) - (w - lr)")
    assert shortest_text(nested) == "update = g - m - (w - lr)"  # parentheses only where they matter
    assert program_hash(parse(shortest_text(nested))) == program_hash(nested)


@pytest.mark.parametrize("copy", ["g * 1.0", "1.0 * g", "g / 1.0", "g - 0.0", "interp(g, g, 0.3)", "max(g, g)", "min(g, g)"])
def test_simplify_removes_statements_that_copy_an_argument(copy):
    redundant = parse(f"t = {copy}\nupdate = sign(interp(t, m, 0.9)) * lr\nm = interp(g, m, 0.99)")
    assert program_hash(redundant) == program_hash(LION)
    assert shortest_text(simplify(redundant)) == "update = sign(interp(g, m, 0.9)) * lr\nm = interp(g, m, 0.99)"


def test_simplify_with_a_task_keeps_only_statements_and_digits_that_matter():
    task = Task(replace(TINY, steps=25))
    cache = {}

    def evaluate(program):
        key = program_hash(program)
        if key not in cache:
            cache[key] = task.evaluate(program).loss
        return cache[key]

    noisy = parse(
        "update = interp(g, m, 0.9013)\n"
        "update = sign(update)\n"
        "update = clip(update, 37.5)\n"  # |update| = 1 < 37.5: no effect
        "m = interp(g, m, 0.9898)\n"
        "update = update * lr"
    )
    limit = evaluate(noisy) * 1.01
    simple = simplify(noisy, evaluate, tolerance=0.01)
    assert "clip" not in str(simple) and len(simple) < len(noisy) and evaluate(simple) <= limit
    # a fixpoint: dropping or bypassing any remaining statement, or rounding any constant further, costs > 1%
    for index in range(len(simple)):
        for variant in _variants(simple, index):
            assert len(variant) >= len(simple) or evaluate(variant) > limit
    for index, statement in enumerate(simple.statements):
        for position, arg in enumerate(statement.args):
            if isinstance(arg, float):
                for value in _rounded(arg, statement.op == "interp" and position == 2):
                    args = list(statement.args)
                    args[position] = value
                    statements = list(simple.statements)
                    statements[index] = Statement(statement.target, statement.op, tuple(args))
                    assert evaluate(Program(tuple(statements), simple.outputs)) > limit


def test_simplify_with_a_synthetic_loss_keeps_what_it_rewards():
    def loss(program):  # rewards a sign and reading lr, and a scale near 0.12
        ops = {s.op for s in prune(program).statements}
        reads_lr = any("lr" in s.args for s in prune(program).statements)
        scale = [c for c in program.constants() if c not in (5.0,)]
        return 1.0 + 0.5 * ("sign" not in ops) + 0.5 * (not reads_lr) + (abs(scale[0] - 0.12) if scale else 1.0)

    program = parse(
        "t = w * 2.0; update = sign(g); update = clip(update, 5.0); update = update * 0.1234; update = update * lr"
    )
    simple = simplify(program, loss, tolerance=0.01)
    assert shortest_text(simple) == "update = sign(g) * 0.12 * lr"  # 0.1 would cost 2%, 0.12 costs nothing
    assert loss(simple) == 1.0


def test_simplify_keeps_the_edits_made_before_its_deadline(monkeypatch):
    """No evaluation starts after the deadline, and the low-effect edits accepted by then are kept."""
    program = parse("m = interp(g, m, 0.9); update = sign(m); t1 = g * 0.001; update = update + t1; "
                    "t2 = w * 0.002; update = update + t2; update = update * lr")
    evaluated = []

    def evaluate(candidate) -> float:
        evaluated.append(candidate)
        return 1.0  # every edit within tolerance

    unlimited = simplify(program, evaluate)
    unlimited_evaluations, evaluated[:] = len(evaluated), []
    module = importlib.import_module("lion_integrations.discovery.simplify")  # the package exports the function
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: len(evaluated)))
    cut = simplify(program, evaluate, deadline=2)  # the base and two edits are evaluated, then time is up
    assert len(evaluated) == 3 < unlimited_evaluations
    assert len(unlimited) < len(cut) < len(simplify(program))
