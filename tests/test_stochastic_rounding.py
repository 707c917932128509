"""Stochastic rounding of bf16/fp16 weights (`rule.stochastic_round`): unbiased (a statistical test
with a stated false-failure rate), reproducible, the same on every path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from lion_integrations.rule import random_bits_like, stochastic_round
from tests.helpers.low_precision import CLASSES, PATHS, assert_identical, make_params, run_steps, snapshot


# --- Stochastic rounding: unbiased, reproducible. ------------------------------------------------------

# (dtype, a representable value, the spacing above it): bf16 and fp16 normal, fp16 subnormal, and
# below fp16's smallest subnormal; negative values round their magnitude alike.
ROUNDING_CASES = [
    (torch.bfloat16, 1.0, 2.0**-7),
    (torch.bfloat16, -0.05078125, -(2.0**-12)),
    (torch.float16, 1.0, 2.0**-10),
    (torch.float16, -(2.0**-20), -(2.0**-24)),
    (torch.float16, 0.0, 2.0**-24),
]
FRACTIONS = [1 / 16, 3 / 8, 1 / 2, 13 / 16]  # dyadic: low + fraction * spacing is exact in fp32
DRAWS = 1 << 20
FALSE_FAILURE_RATE = 1e-6
# Hoeffding: the mean of n draws in {0, 1} strays from its expectation by t or more with probability
# at most 2 exp(-2 n t**2). With a union bound over the cases, every case passes with probability at
# least 1 - FALSE_FAILURE_RATE when t = sqrt(ln(2 * cases / FALSE_FAILURE_RATE) / (2 n)): 0.0029 here.
TOLERANCE = math.sqrt(math.log(2 * len(ROUNDING_CASES) * len(FRACTIONS) / FALSE_FAILURE_RATE) / (2 * DRAWS))


def fraction_rounded_up(dtype, low, spacing, fraction, rounding):
    weight = torch.full((DRAWS,), low + fraction * spacing, dtype=torch.float32)
    assert weight[0].item() == low + fraction * spacing  # exactly representable in fp32
    rounded = rounding(weight, dtype).double()
    up = (rounded - low) / spacing
    assert bool(((up == 0) | (up == 1)).all()), "stochastic rounding must give one of the two neighbours"
    return up.mean().item()


@pytest.mark.parametrize(("dtype", "low", "spacing"), ROUNDING_CASES)
def test_stochastic_rounding_is_unbiased(dtype, low, spacing):
    assert TOLERANCE < 0.003
    generator = torch.Generator().manual_seed(0)

    def stochastic(weight, dtype):
        return stochastic_round(weight, random_bits_like(weight, generator), dtype)

    for fraction in FRACTIONS:
        mean = fraction_rounded_up(dtype, low, spacing, fraction, stochastic)
        assert abs(mean - fraction) < TOLERANCE, (fraction, mean)


def test_the_unbiasedness_test_fails_rounding_to_nearest():
    mean = fraction_rounded_up(torch.bfloat16, 1.0, 2.0**-7, 3 / 8, lambda weight, dtype: weight.to(dtype))
    assert abs(mean - 3 / 8) > 100 * TOLERANCE


def test_stochastic_rounding_keeps_representable_and_non_finite_values():
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, 65504.0, math.inf, -math.inf, math.nan, 3.0e38])
    for dtype in (torch.bfloat16, torch.float16):
        exact = values.to(dtype).float()
        rounded = stochastic_round(exact, random_bits_like(exact), dtype)
        assert torch.equal(rounded.float().nan_to_num(), exact.nan_to_num())
        assert torch.equal(rounded.float().signbit(), exact.signbit())


@pytest.mark.parametrize("cls", CLASSES)
def test_stochastic_rounding_is_reproducible_under_manual_seed_and_with_a_generator(cls):
    def run(seed=None, generator=None):
        params = make_params()  # seeds the global generator itself: seed after it
        if seed is not None:
            torch.manual_seed(seed)
        return snapshot(run_steps(cls, params, 6, stochastic_rounding=True, generator=generator, fused=False))

    assert_identical(run(seed=3), run(seed=3))
    other = run(seed=4)
    assert not torch.equal(run(seed=3)[0][1], other[0][1])
    with_generator = run(seed=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(5).get_state())  # untouched
    assert_identical(with_generator, run(seed=6, generator=torch.Generator().manual_seed(7)))
    assert_identical(with_generator, run(generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("cls", CLASSES)
def test_stochastic_rounding_paths_agree_given_the_same_stream(cls):
    """Every path draws each parameter's bits in parameter order from the same generator (the fused
    quantized step rounds after stepping an fp32 copy, through the AVX-512 kernel where it applies)."""
    paths = PATHS if cls is Lion else {"for-loop": PATHS["for-loop"], "fused": PATHS["fused"]}
    betas = (0.0, 0.0) if cls is Lion else (0.9, 0.99)  # Inductor's lerp, see the Kahan test
    results = {
        name: snapshot(run_steps(cls, make_params(), 8, betas=betas, stochastic_rounding=True,
                                 generator=torch.Generator().manual_seed(11), **path))
        for name, path in paths.items()
    }
    reference = results.pop("for-loop")
    for result in results.values():
        assert_identical(result, reference)


def test_stochastic_rounding_moves_weights_by_lr_on_average():
    """lr below half a spacing: nearest never moves the weights; stochastic rounding moves them by
    lr per step in expectation (1e-4 x 200 steps = 0.02, 4096 weights: the mean is within 1e-3)."""
    param = nn.Parameter(torch.full((4096,), 0.05).bfloat16())
    optimizer = Lion([param], lr=1e-4, stochastic_rounding=True, fused=False)
    torch.manual_seed(0)
    for _ in range(200):
        param.grad = torch.ones_like(param)
        optimizer.step()
    moved = 0.05 - param.detach().float().mean().item()
    assert abs(moved - 0.02) < 1e-3, moved
