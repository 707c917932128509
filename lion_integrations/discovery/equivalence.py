"""Functional equivalence: a program's fingerprint from its outputs on a fixed random probe.

The paper's check (Chen et al. 2023): run the program numerically on fixed random inputs,
round its outputs, hash them. Programs that compute the same function then share a fingerprint
even when the symbolic canonical form (`abstract`) misses the identity: ``x + x`` and ``2 * x``,
``sign(x * lr)`` and ``sign(x)`` (lr > 0), the written-out forms of interp, ``abs`` of a square, ...

The probe is an optimizer run, in float64, of `STEPS` steps on 2 x `ROWS` parameter tensors of
`COLUMNS` elements (a row is one parameter tensor, with its own ``norm``; the rows' lrs range from
1e-6 to 10):

* the first `ROWS` rows start from m = v = 0, as the optimizer does;
* the other `ROWS` start from m = v = s >= 0, random, small to large: states far from the start (a
  step counter after thousands of steps, an EMA of squares after warm-up). They are equal, so that
  the fingerprint does not depend on which of m and v a program calls its momentum, and
  non-negative, so that an EMA of squares stays non-negative as in training; a state the program
  never writes starts at 0 (it stays 0 in training).

Each step draws a gradient, applies ``w <- w - update`` and keeps the returned states. Only the
updates are hashed: they are what the optimizer does, so programs that differ only in dead states or
in the names of their states share a fingerprint; a difference in a live state's rule shows in the
updates of the following steps. (A state stored scaled, ``m' = 2 m``, is a different program to the
probe: the random start is the same m' and m.)

``sign`` keeps only which side of 0 its argument is on, so two programs differing in a constant
inside it (Lion's beta1) differ only where an input crosses the boundary, which a small probe may
never sample. A program that calls ``sign`` is therefore run a second time with ``sign(x)`` replaced
by ``x / ||x||`` per row (`direction`): positive factors cancel as they do in sign (``sign(x * lr)``,
``sign(2 * x)``, ``sign(sign(x))`` still merge with ``sign(x)``), a changed constant inside does not.

Inputs have random signs; each row of w, of g and of the random state has its own scale, the scales
spread over 1e-10..1e2 (so that ``norm`` ranges from tiny to large too), and each element's magnitude
is its row's scale times a log-uniform factor in 1e-2..1e2; 1 in 16 elements is exactly 0 (dead
units, zero-initialized biases). Constants such as an eps of 1e-8 (also added to a norm), a clip
bound or a protected op's floor then change some elements by far more than the rounding below.

Rounding: each update is rounded to `SIGNIFICANT_BITS` = 24 significant bits (relative 6e-8, fp32's
resolution: the optimizer and the trainer compute in fp32, where a smaller difference is below one
rounding). Algebraically equal forms differ in float64 by ~1e-15 relative, 6e7 times less, so they
almost never land in different bins; a systematic relative difference d moves about ``d / 6e-8`` of
the probe's 2,048 updates (4,096 with sign) across a bin edge, so differences above ~1e-10 are told
apart. A program with a non-finite update is reported as such (`Fingerprint.finite`): there the
numbers cannot tell programs apart (inf - inf and 0 * inf are NaN whatever the program), and callers
add the exact symbolic hash to the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch

from .execute import as_tensor_like, compile_program
from .program import STATES, Program

ROWS = 8
COLUMNS = 32
STEPS = 4
SIGNIFICANT_BITS = 24
ROW_SCALES = (-10.0, 2.0)  # log10 range of the rows' scales
ROW_SPREAD = 2.0  # decades either side of a row's scale
ZERO_SHARE = 1 / 16
LRS = (-6.0, 1.0)  # log10 range of the rows' lrs
PROBE_SEED = 20230213


@dataclass(frozen=True)
class Probe:
    """The fixed inputs, [2 * ROWS, COLUMNS] float64 (gradients [STEPS, 2 * ROWS, COLUMNS]): initial
    weights, each step's gradient, the initial state (0 in the first ROWS rows) and the lrs
    ([2 * ROWS, 1])."""

    weights: torch.Tensor
    gradients: torch.Tensor
    state: torch.Tensor
    lr: torch.Tensor


@dataclass(frozen=True)
class Fingerprint:
    """`digest` of the rounded updates; `finite` is False when some probed update was inf or NaN."""

    digest: str
    finite: bool


def wide_random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """A float64 tensor of `shape` (..., rows, columns): random signs, each row scaled by one of
    10**ROW_SCALES (evenly spread, in random order), elements within 10**ROW_SPREAD of their row's
    scale (log-uniform), a `ZERO_SHARE` of exact zeros."""
    rows = shape[-2]
    scales = torch.linspace(*ROW_SCALES, rows, dtype=torch.float64)[torch.randperm(rows, generator=generator)]
    spread = ROW_SPREAD * (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1)
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    zero = torch.rand(shape, generator=generator) < ZERO_SHARE
    return torch.where(zero, 0.0, sign * 10.0 ** (scales.unsqueeze(-1) + spread))


@lru_cache(maxsize=1)
def probe() -> Probe:
    """The probe's inputs, drawn once from a dedicated generator (independent of torch's global seed)."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    lr = torch.logspace(LRS[0], LRS[1], ROWS, dtype=torch.float64).repeat(2).unsqueeze(1)
    state = wide_random(generator, 2 * ROWS, COLUMNS).abs()
    state[:ROWS] = 0.0
    return Probe(
        weights=wide_random(generator, 2 * ROWS, COLUMNS),
        gradients=wide_random(generator, STEPS, 2 * ROWS, COLUMNS),
        state=state,
        lr=lr,
    )


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||_2 of each row (one row is one parameter tensor); a per-row scalar stays |x|."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def direction(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| per row (0 for a zero row): what ``sign`` keeps of x (invariance to positive
    factors), without rounding away how far each element is from the boundary."""
    length = row_norm(x)
    return torch.where(length > 0, x / torch.where(length > 0, length, 1.0), 0.0)


def probe_run(
    program: Program, zero_states: Iterable[str] = (), sign_as_direction: bool = False
) -> dict[str, torch.Tensor]:
    """The program's outputs at each probe step: {'update', 'm', 'v'} -> [STEPS, 2 * ROWS, COLUMNS]
    float64. States in `zero_states` (never written by the program) start at 0 in every row."""
    step = compile_program(program, {"sign": direction} if sign_as_direction else None)
    inputs = probe()
    w = inputs.weights
    state = {name: w.new_zeros(w.shape) if name in zero_states else inputs.state for name in STATES}
    outputs = {"update": [], "m": [], "v": []}
    for g in inputs.gradients:
        update, m, v = step(w, g, state["m"], state["v"], inputs.lr, row_norm)
        update = as_tensor_like(update, w)
        state = {"m": as_tensor_like(m, w), "v": as_tensor_like(v, w)}
        w = w - update
        for name, value in (("update", update), *state.items()):
            outputs[name].append(value)
    return {name: torch.stack(values) for name, values in outputs.items()}


def rounded(values: torch.Tensor, bits: int = SIGNIFICANT_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mantissa, exponent) int64 tensors with ``values ~= mantissa * 2**(exponent - bits)`` and
    |mantissa| < 2**bits: each finite value rounded to `bits` significant bits, -0.0 as 0. Non-finite
    values get mantissas out of that range: 2**bits + 1 for +inf, -(2**bits + 1) for -inf, 2**bits + 2
    for NaN."""
    finite = torch.isfinite(values)
    mantissa, exponent = torch.frexp(torch.where(finite, values, 0.0))
    scaled = torch.round(mantissa * 2.0**bits).to(torch.int64)
    carry = scaled.abs() == 2**bits  # rounded up to the next power of two
    scaled = torch.where(carry, scaled // 2, scaled)
    exponent = torch.where(carry, exponent + 1, exponent).to(torch.int64)
    exponent = torch.where(scaled == 0, 0, exponent)
    special = torch.where(torch.isnan(values), 2**bits + 2, torch.where(values > 0, 2**bits + 1, -(2**bits + 1)))
    return torch.where(finite, scaled, special), torch.where(finite, exponent, 0)


def fingerprint(program: Program, zero_states: Iterable[str] = ()) -> Fingerprint:
    """The program's functional fingerprint (see the module docstring): its updates on the probe, and
    again with sign as `direction` when it calls sign."""
    zero_states = frozenset(zero_states)
    runs = [False, True] if any(statement.op == "sign" for statement in program.statements) else [False]
    parts, finite = [], True
    for sign_as_direction in runs:
        updates = probe_run(program, zero_states, sign_as_direction)["update"]
        finite = finite and bool(torch.isfinite(updates).all())
        mantissa, exponent = rounded(updates)
        parts += [mantissa.numpy().tobytes(), exponent.numpy().tobytes()]
    return Fingerprint(hashlib.sha1(b"".join(parts)).hexdigest()[:20], finite)
