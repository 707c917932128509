"""Abstract execution (lion_integrations.discovery.abstract): validity, the canonical hash, states
that fold to zero, and liveness."""

from __future__ import annotations

import pytest

from lion_integrations.discovery import analyze, parse, program_hash, prune
from tests.helpers.discovery import ADAMW, LION, same_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


def test_validity_reasons():
    assert analyze(LION).valid and analyze(ADAMW).valid
    cases = {
        "update = w * lr": "does not depend on the gradient g",
        "update = norm(g) * lr": "is a scalar",
        "update = lr * 2.0": "is a scalar",
        "update = 2.0 + 1.0; update = update * g": None,
        "m = interp(g, m, 0.9); update = w * lr": "does not depend on the gradient g",
        "update = m * lr; m = interp(g, m, 0.9)": None,  # g reaches the update through the state m
        "update = exp(1000.0) * g": None,  # protected exp stays finite
        "c = 1e300 * 1e300; update = g * c": "not finite",
    }
    for text, reason in cases.items():
        analysis = analyze(parse(text))
        assert analysis.valid is (reason is None), text
        if reason:
            assert reason in analysis.reason and analysis.hash is None


def test_hash_is_invariant_to_form_and_sensitive_to_meaning():
    lion_variants = [
        # commuted operands, other temporaries, dead statements, a dead state v, no-op statements
        "t = interp(g, m, 0.9); t = sign(t); update = lr * t; m = interp(g, m, 0.99)",
        "x = w * 3.0; update = interp(g, m, 0.9); v = interp(g, v, 0.5); update = sign(update); "
        "update = update * 1.0; update = update + 0.0; m = interp(g, m, 0.99); update = update * lr",
        # m and v relabelled
        "update = interp(g, v, 0.9); update = sign(update); v = interp(g, v, 0.99); update = update * lr",
        "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99); junk = update / m",
    ]
    for text in lion_variants:
        assert program_hash(parse(text)) == program_hash(LION), text
        assert same_trajectory(parse(text), LION), text
    different = [
        "update = interp(m, g, 0.9); update = sign(update); m = interp(g, m, 0.99); update = update * lr",
        "update = interp(g, m, 0.9); update = sign(update); m = interp(g, m, 0.98); update = update * lr",
        "update = interp(g, m, 0.9); update = sign(update); m = interp(g, m, 0.99); update = update / lr",
        "update = interp(g, m, 0.9); update = sign(update); m = interp(m, g, 0.99); update = update * lr",
    ]
    keys = {program_hash(parse(text)) for text in different}
    assert len(keys) == len(different) and program_hash(LION) not in keys


def test_a_state_that_is_never_written_folds_to_zero():
    program = parse("update = g + m; update = update * lr")  # m stays 0
    analysis = analyze(program)
    assert analysis.zero_states == {"m"} and analysis.hash == program_hash(parse("update = g * lr"))
    assert same_trajectory(program, "update = g * lr")


def test_liveness_counts_redundant_statements():
    program = parse(
        "a = w * 2.0\n"  # dead: never read
        "update = interp(g, m, 0.9)\n"
        "v = square(g)\n"  # dead state: the update never reads v
        "update = update * 1.0\n"  # no-op
        "update = sign(update) * lr\n"
        "m = interp(g, m, 0.99)"
    )
    analysis = analyze(program)
    assert analysis.live == (False, True, False, False, True, True, True)
    assert analysis.redundant == 3 and analysis.live_states == {"m"}
    pruned = prune(program, analysis)
    assert len(pruned) == 4 and analyze(pruned).redundant == 0 and program_hash(pruned) == analysis.hash
