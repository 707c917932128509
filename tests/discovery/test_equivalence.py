"""Functional equivalence (lion_integrations.discovery.equivalence): the fingerprint of a program's
updates on a fixed random probe and the program hash built on it; what it merges, what it must not
(rounding, sign, non-finite updates), and that it is deterministic."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lion_integrations.discovery import BUILTIN, analyze, mutate, parse, program_hash, prune
from lion_integrations.discovery.abstract import symbolic
from lion_integrations.discovery.equivalence import SIGNIFICANT_BITS, direction, fingerprint, probe, probe_run, rounded
from lion_integrations.discovery.execute import as_tensor_like, compile_program

from tests.helpers.discovery import ADAMW, LION

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


def weights_after(program, steps: int = 6, seed: int = 11) -> list[torch.Tensor]:
    """Weights after each step of `program` as an optimizer, on a gradient stream unrelated to the
    probe's (float64, three parameter tensors of their own scales)."""
    step = compile_program(program)
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([[1e-6], [1e-2], [3.0]], dtype=torch.float64)
    w = torch.randn(3, 7, generator=gen, dtype=torch.float64) * scale
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    lr = torch.tensor([[1e-3], [3e-2], [0.5]], dtype=torch.float64)
    history = []
    for _ in range(steps):
        g = torch.randn(3, 7, generator=gen, dtype=torch.float64) * scale
        update, m, v = step(w, g, m, v, lr, lambda x: torch.linalg.vector_norm(x, dim=-1, keepdim=True))
        w = w - as_tensor_like(update, w)
        m, v = as_tensor_like(m, w), as_tensor_like(v, w)
        history.append(w)
    return history


def same_updates(a, b) -> bool:
    return all(torch.allclose(x, y, rtol=1e-9, atol=0.0) for x, y in zip(weights_after(a), weights_after(b)))


# --------------------------------------------------------------------------------------------------
# merges


EQUAL_FORMS = [
    # operand order
    ("update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)",
     "update = lr * sign(interp(g, m, 0.9)); m = interp(g, m, 0.99)"),
    # dead statements and a dead state
    ("update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)",
     "t = w * 3.0; update = sign(interp(g, m, 0.9)); v = square(g); update = update * lr; m = interp(g, m, 0.99)"),
    # x + x and 2 * x
    ("update = (g + g) * lr", "update = 2.0 * g * lr"),
    # sign(x) * lr and sign(x * lr), lr > 0
    ("update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)",
     "update = sign(interp(g, m, 0.9) * lr) * lr; m = interp(g, m, 0.99)"),
    ("update = sign(g) * lr", "update = sign(2.0 * sign(g * lr)) * lr"),
    # interp written out
    ("m = interp(g, m, 0.9); update = m * lr", "m = 0.1 * g + 0.9 * m; update = m * lr"),
    ("m = interp(g, m, 0.9); update = m * lr", "m = m + (g - m) * 0.1; update = lr * m"),
    # abs of a square, a double negation, a division by a power of two
    ("v = interp(square(g), v, 0.99); update = g / sqrt(v) * lr",
     "v = interp(abs(square(g)), v, 0.99); update = g / sqrt(abs(v)) * lr"),
    ("update = g * lr", "update = 0.0 - (0.0 - g) * lr"),
    ("update = g * 0.25 * lr", "update = g / 4.0 * lr"),
    # m and v relabelled
    ("m = interp(g, m, 0.9); v = interp(square(g), v, 0.999); update = m / (sqrt(v) + 1e-08) * lr",
     "v = interp(g, v, 0.9); m = interp(square(g), m, 0.999); update = v / (sqrt(m) + 1e-08) * lr"),
]


@pytest.mark.parametrize("first, second", EQUAL_FORMS)
def test_equal_functions_share_a_hash(first, second):
    a, b = parse(first), parse(second)
    assert same_updates(a, b)
    assert program_hash(a) == program_hash(b) is not None


def test_the_fingerprint_merges_what_the_symbols_miss():
    """x + x = 2x, sign(x) * lr = sign(x * lr), written-out interp: distinct canonical symbols, one hash."""
    pairs = [("update = (g + g) * lr", "update = 2.0 * g * lr"),
             ("update = sign(g) * lr", "update = sign(g * lr) * lr"),
             ("m = interp(g, m, 0.9); update = m * lr", "m = m + (g - m) * 0.1; update = lr * m")]
    for first, second in pairs:
        a, b = parse(first), parse(second)
        assert symbolic(a).key != symbolic(b).key
        assert program_hash(a) == program_hash(b)


# --------------------------------------------------------------------------------------------------
# no false merges


ADAMW_EPS = "m = interp(g, m, 0.9); v = interp(square(g), v, 0.999); update = m / (sqrt(v) + {eps}) * lr"
DIFFERENT = [
    "update = g * lr",
    "update = clip(g, 100.0) * lr",  # differs only where |g| > 100
    "update = clip(g, 5.0) * lr",
    "update = clip(g, 5.001) * lr",
    "update = max(g, 0.0) * lr",
    "update = g * min(lr, 1.0)",  # differs only where lr > 1
    "update = (g + 1e-08 * w) * lr",  # a tiny coupling to w
    "update = sign(g) * lr",
    "update = sign(g + 1e-08) * lr",  # differs only where -1e-8 <= g < 0 and at g = 0
    "update = tanh(g * 1000.0) * lr",
    "update = tanh(g * 1001.0) * lr",
    "update = g / (norm(g) + 1e-08) * lr",  # eps added to a norm
    "update = g / (norm(g) + 1.2e-08) * lr",
    "update = g / norm(g) * lr",
    ADAMW_EPS.format(eps="1e-08"),
    ADAMW_EPS.format(eps="1.1e-08"),
    ADAMW_EPS.format(eps="5.205e-09"),
    "m = interp(g, m, 0.9); v = interp(square(g), v, 0.999); update = m / sqrt(v + 1e-16) * lr",
    "m = interp(g, m, 0.9); update = m * lr",
    "update = m * lr; m = interp(g, m, 0.9)",  # one step late
    "m = interp(g, m, 0.9001); update = m * lr",
    "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)",
    "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.991)",
    "update = sign(interp(m, g, 0.9)) * lr; m = interp(g, m, 0.99)",
    "update = sign(interp(g, m, 0.9001)) * lr; m = interp(g, m, 0.99)",  # beta1 seen only through sign
    "update = sign(interp(g, m, 0.9413)) * lr; m = interp(g, m, 0.99)",
    "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.9821)",
    "update = sign(interp(0.1, m, 0.8422)) * lr; m = interp(g, m, 0.99)",  # a boundary at m = -0.0188
    "update = sign(interp(0.1, m, 0.8557)) * lr; m = interp(g, m, 0.99)",  # ... and at m = -0.0169
    # a step counter: differs from the next only from the fourth step on
    "v = v + 1.0; update = g * min(v, 3.0) * lr",
    "v = v + 1.0; update = g * min(v, 4.0) * lr",
    "update = g * lr; update = update + 1e-12",
]


def test_programs_that_differ_do_not_merge():
    keys = [program_hash(parse(text)) for text in DIFFERENT]
    assert None not in keys
    merged = [(DIFFERENT[i], DIFFERENT[j]) for i in range(len(keys)) for j in range(i) if keys[i] == keys[j]]
    assert not merged


def test_merged_mutants_follow_equal_trajectories_elsewhere():
    """Across many mutation chains, every pair of programs that share a hash follows the same weight
    trajectory on an input stream the probe never saw (the probe is a sample; this checks it is a
    good one)."""
    rng = random.Random(5)
    by_hash, merges = {}, 0
    for _ in range(40):
        program = rng.choice([LION, ADAMW, parse(BUILTIN["sgd_momentum"])])
        for _ in range(10):
            program = mutate(program, rng, max_statements=12)
            analysis = analyze(program)
            if not analysis.valid:
                continue
            if analysis.hash in by_hash:
                merges += 1
                other = by_hash[analysis.hash]
                for x, y in zip(weights_after(program), weights_after(other)):
                    finite = torch.isfinite(x) & torch.isfinite(y)
                    assert torch.allclose(x[finite], y[finite], rtol=1e-9, atol=1e-300), (str(program), str(other))
            by_hash[analysis.hash] = program
    assert merges > 10


# --------------------------------------------------------------------------------------------------
# rounding and non-finite outputs


def test_rounding_keeps_24_significant_bits_and_codes_non_finite_values():
    x = torch.tensor([1.0, -1.0, 0.0, -0.0, 3.0e-200, 1.0 - 2.0**-30, 123.456, float("inf"), float("-inf"), float("nan")],
                     dtype=torch.float64)
    mantissa, exponent = rounded(x)
    assert SIGNIFICANT_BITS == 24
    finite = mantissa[:7]
    assert (finite.abs() < 2**24).all() and (finite[[0, 1, 4, 6]].abs() >= 2**23).all()
    assert (mantissa[2], exponent[2]) == (mantissa[3], exponent[3]) == (0, 0)  # -0.0 rounds as 0.0
    assert (mantissa[5], exponent[5]) == (mantissa[0], exponent[0])  # rounds up to 1.0 (the carry)
    assert torch.allclose(mantissa[:7] * 2.0 ** (exponent[:7] - 24).double(), x[:7], rtol=2**-24, atol=0)
    assert len({int(m) for m in mantissa[7:]}) == 3 and (mantissa[7:].abs() > 2**24).all()
    # algebraic noise (1e-13 relative) stays in the bin; a difference of 1e-6 does not
    values = probe().gradients.flatten()
    assert (rounded(values)[0] != rounded(values * (1 + 1e-13))[0]).sum() <= 1
    assert (rounded(values)[0] != rounded(values * (1 + 1e-6))[0]).sum() > len(values) // 2


def test_non_finite_updates_fall_back_to_the_exact_symbolic_key():
    """Two different programs whose probed updates are inf/NaN in the same places would share a
    fingerprint; the key then adds the symbolic hash, so they do not merge."""
    huge = "t = g * 0.0; t = t + 60.0; t = exp(t); t = square(t); t = square(t); t = square(t); t = square(t); "
    a, b = parse(huge + "update = t * g"), parse(huge + "update = t * g; update = update * 2.0")
    assert not torch.isfinite(probe_run(a)["update"]).any()
    assert fingerprint(a) == fingerprint(b) and not fingerprint(a).finite
    assert program_hash(a) != program_hash(b)
    assert program_hash(a) == program_hash(parse(huge.replace("t = g * 0.0", "t = 0.0 * g") + "update = g * t"))
    assert fingerprint(LION).finite and fingerprint(ADAMW).finite


# --------------------------------------------------------------------------------------------------
# determinism


def test_the_hash_is_deterministic_and_independent_of_global_state():
    programs = [parse(text) for text in DIFFERENT[:6]] + [LION, ADAMW]
    expected = [fingerprint(program) for program in programs]
    torch.manual_seed(123)
    torch.rand(10)
    probe.cache_clear()
    torch.set_num_threads(2)
    assert [fingerprint(program) for program in programs] == expected
    hashes = [program_hash(program) for program in programs]
    code = ("import json, sys; from lion_integrations.discovery import parse, program_hash; "
            "print(json.dumps([program_hash(parse(t)) for t in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([str(p) for p in programs])], cwd=REPO,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert json.loads(out.stdout) == hashes


# --------------------------------------------------------------------------------------------------
# sign seen as a direction


def test_direction_keeps_what_sign_keeps_and_how_far_from_the_boundary():
    x = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1e-9, -2e-9, 5e-9]], dtype=torch.float64)
    scale = torch.tensor([[2.0], [7.0], [1e6]], dtype=torch.float64)
    assert torch.allclose(direction(x * scale), direction(x), rtol=1e-15, atol=0)
    assert torch.equal(direction(-x), -direction(x)) and torch.equal(direction(x)[1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(torch.sign(direction(x)), torch.sign(x))
    assert torch.allclose(direction(x)[0], torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64))
    column = torch.tensor([[-3.0], [0.0], [2.0]], dtype=torch.float64)  # per-row scalars: direction = sign
    assert torch.equal(direction(column), torch.sign(column))


def test_compiled_programs_take_other_implementations_of_an_op():
    program = parse("update = sign(g) * lr")
    g, lr = torch.tensor([[3.0, -4.0]], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64)
    zeros = torch.zeros_like(g)
    plain, _, _ = compile_program(program)(g, g, zeros, zeros, lr)
    directed, _, _ = compile_program(program, {"sign": direction})(g, g, zeros, zeros, lr)
    assert torch.equal(plain, torch.tensor([[0.5, -0.5]], dtype=torch.float64))
    assert torch.allclose(directed, torch.tensor([[0.3, -0.4]], dtype=torch.float64))
    assert torch.equal(compile_program(program)(g, g, zeros, zeros, lr)[0], plain)  # caches are per implementation
    with pytest.raises(ValueError, match="unknown op 'sgn'"):
        compile_program(program, {"sgn": direction})


def test_pruning_keeps_the_hash_and_the_updates():
    program = parse("t = w * 3.0; update = interp(g, m, 0.9); v = square(g); update = sign(update); "
                    "update = update * 1.0; m = interp(g, m, 0.99); update = update * lr")
    pruned = prune(program)
    assert len(pruned) == 4 and program_hash(pruned) == program_hash(program) == program_hash(LION)
    assert same_updates(pruned, program)
