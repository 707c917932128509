"""Mutations (lion_integrations.discovery.mutate): well-formed children whose hashes mean equal
updates, and each mutation kind."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lion_integrations.discovery import BUILTIN, Program, analyze, mutate, parse, program_hash, prune, shortest_text, simplify
from lion_integrations.discovery.mutate import KINDS
from tests.helpers.discovery import ADAMW, LION, same_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


def _mutation_chains(seed: int, length: int) -> list[Program]:
    rng = random.Random(seed)
    program = rng.choice([LION, ADAMW, parse(BUILTIN["sgd_momentum"])])
    chain = []
    for _ in range(length):
        program = mutate(program, rng, max_statements=12)
        chain.append(program)
    return chain


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6))
def test_mutations_are_well_formed_and_hashes_mean_equal_updates(seed):
    """Every mutant round-trips through text; pruning keeps the hash and the weight trajectory;
    programs with equal hashes follow equal trajectories."""
    chain = _mutation_chains(seed, 12)
    by_hash: dict[str, Program] = {}
    for program in chain:
        assert parse(str(program)) == program and parse(program.one_line()) == program
        assert len(program) <= 12
        analysis = analyze(program)
        if not analysis.valid:
            continue
        pruned = prune(program, analysis)
        assert program_hash(pruned) == analysis.hash
        assert same_trajectory(program, pruned, steps=3)
        short = parse(shortest_text(simplify(program)))
        assert program_hash(short) == analysis.hash
        if analysis.hash in by_hash:
            assert same_trajectory(program, by_hash[analysis.hash], steps=3)
        by_hash[analysis.hash] = program


@pytest.mark.parametrize("kind", KINDS)
def test_each_mutation_kind(kind):
    rng = random.Random(1)
    for _ in range(30):
        child = mutate(ADAMW, rng, max_statements=12, kind=kind)
        assert child != ADAMW and parse(str(child)) == child
        if kind == "insert":
            assert len(child) == len(ADAMW) + 1
        elif kind == "delete":
            assert len(child) == len(ADAMW) - 1
        else:
            changed = [(a, b) for a, b in zip(ADAMW.statements, child.statements) if a != b]
            assert len(child) == len(ADAMW) and len(changed) == 1
            (before, after), = changed
            if kind == "perturb":
                assert before.op == after.op and before.target == after.target
                diffs = [(x, y) for x, y in zip(before.args, after.args) if x != y]
                assert len(diffs) == 1 and all(isinstance(z, float) for z in diffs[0])
                if before.op == "interp" and isinstance(before.args[2], float):
                    assert 0 < after.args[2] < 1
            elif kind == "modify_op":
                assert before.op != after.op
    with pytest.raises(ValueError, match="insert"):
        mutate(ADAMW, rng, max_statements=len(ADAMW), kind="insert")
    with pytest.raises(ValueError, match="unknown mutation 'swap'"):
        mutate(ADAMW, rng, kind="swap")
