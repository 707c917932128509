"""Stochastic rounding of 4-bit codes (codec.stochastic_code4, codec.code_draws): unbiased, reproducible,
the same on every path (eager, torch.compile, the AVX-512 kernel) and sharding, resumable from a
state dict, and what keeps Lion4bit's momentum moving where rounding to nearest freezes it."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lion_integrations import Lion4bit
from lion_integrations.quantization import codec, simd
from lion_integrations.quantization.codec import quantize_blockwise
from lion_integrations.quantization.kernel import step_quantized_param_
from lion_integrations.rule import LionCoefficients

pytestmark = pytest.mark.usefixtures("one_thread")

needs_kernel = pytest.mark.skipif(
    simd.unavailable_reason() is not None, reason=f"AVX-512 kernel unavailable here ({simd.unavailable_reason()})"
)


def points_inside_gaps() -> torch.Tensor:
    """Values at 10%, 30%, 70% and 90% of every gap between neighbouring 4-bit magnitudes, both signs,
    and the entries themselves: (64,) float32 in [-1, 1]."""
    entries = (0.0, *codec.FOUR_BIT_MAGNITUDES)
    inside = [low + f * (high - low) for low, high in zip(entries, entries[1:]) for f in (0.1, 0.3, 0.7, 0.9)]
    values = torch.tensor(inside + list(entries[1:]), dtype=torch.float32)
    return torch.cat([values, -values[:29]])


def test_stochastic_codes_are_unbiased():
    """E[decode(encode(x))] = x. Each of K = 64 values is encoded N = 4096 times with independent
    draws; a decoded value lies in [low, low + gap], so by Hoeffding's inequality its mean is off by
    t = gap * sqrt(ln(2 K / p) / (2 N)) or more with probability at most p / K: with p = 1e-6,
    t = 0.048 gap, and every value passes with probability above 1 - 1e-6 (draws taken as uniform
    and independent). Rounding to nearest is off by 0.1 gap at these points, so it fails."""
    values = points_inside_gaps()
    trials = 4096
    draws = codec.code_draws(trials, values.numel(), codec.rounding_key(7))
    decoded = codec.decode_codes(codec.stochastic_code4(values.expand(trials, -1), draws), 4).double()
    magnitudes = torch.tensor((0.0, *codec.FOUR_BIT_MAGNITUDES), dtype=torch.float64)
    gap = (magnitudes[1:] - magnitudes[:-1]).max()
    bound = gap * math.sqrt(math.log(2 * values.numel() / 1e-6) / (2 * trials))
    assert bound < 0.05 * gap
    assert (decoded.mean(0) - values.double()).abs().max() <= bound
    # Each value is encoded to one of its two neighbouring entries, and entries to themselves.
    assert ((decoded - values.double()).abs() < gap).all()
    entries = values.abs() == torch.tensor(codec.FOUR_BIT_MAGNITUDES).unsqueeze(1)
    exact = entries.any(0)
    assert torch.equal(decoded[:, exact], values[exact].double().expand(trials, -1))
    nearest = codec.decode_codes(codec.nearest_code(values, 4), 4).double()
    assert (nearest - values.double()).abs().max() > 2 * bound


def test_code_draws_are_uniform_reproducible_and_follow_the_global_index():
    rows, cols = 64, 257
    key = codec.rounding_key(3)
    draws = codec.code_draws(rows, cols, key)
    assert draws.dtype == torch.int32 and draws.min() >= 0 and draws.max() < 2**codec.DRAW_BITS
    assert torch.equal(draws, codec.code_draws(rows, cols, key))
    # A shard of rows 40.. draws what those rows of the whole tensor draw.
    assert torch.equal(codec.code_draws(rows - 40, cols, key, first_index=40 * cols), draws[40:])
    assert (draws != codec.code_draws(rows, cols, codec.rounding_key(4))).float().mean() > 0.99
    # Uniform: each of 16 equal bins holds 1/16 of the draws (a 7-sd margin for 16448 draws).
    counts = torch.bincount((draws >> (codec.DRAW_BITS - 4)).flatten().long(), minlength=16).double()
    expected = draws.numel() / 16
    assert ((counts - expected).abs() <= 7 * math.sqrt(expected)).all()
    # The Python-int hash and the tensor hash agree (the key is computed one way, the draws the other).
    x = torch.tensor([0, 1, 2**31, 2**32 - 1, 123456789], dtype=torch.int64)
    assert codec.mix32(x).tolist() == [codec.mix32(int(v)) for v in x]


def test_compiled_stochastic_encode_matches_eager_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(32, 128, generator=generator) * torch.rand(32, 1, generator=generator)
    values[3] = 0.0
    values[5, 7] = float("nan")
    draws = codec.code_draws(32, 128, codec.rounding_key(11))
    eager = codec.encode_blocks(values, 4, draws)
    compiled = torch.compile(codec.encode_blocks, fullgraph=True, dynamic=True)(values, 4, draws)
    assert torch.equal(eager[0], compiled[0])
    torch.testing.assert_close(compiled[1], eager[1], rtol=0, atol=0, equal_nan=True)  # row 5's absmax is NaN
    assert not torch.equal(eager[0], codec.encode_blocks(values, 4)[0])  # the draws were used


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, block_size", [((16, 256), 64), ((7, 131), 64), ((5, 3, 45), 20)])
def test_kernel_rounds_codes_as_the_eager_step(shape, block_size, threads):
    """The AVX-512 kernel's draws and stochastic encode against the eager step, bit for bit, on
    blocks that tile the rows, short odd last blocks, a shard offset and several threads."""
    generator = torch.Generator().manual_seed(1)
    param = torch.randn(shape, generator=generator)
    codes, absmax = quantize_blockwise(torch.randn(shape, generator=generator) * 1e-2, 4, block_size)
    coefficients = LionCoefficients.from_group(1e-3, (0.9, 0.99), 0.1)
    rows = shape[0]
    results = []
    for fused in (False, True):
        p, c, a = param.clone(), codes.clone(), absmax.clone()
        for step in range(4):
            grad = torch.randn(shape, generator=torch.Generator().manual_seed(10 + step))
            rounding = (codec.rounding_key(step), 1000 * p[0].numel())
            if fused:
                torch.set_num_threads(threads)
                simd.step_([p.view(rows, -1)], [grad.view(rows, -1)], [c.view(rows, -1)], [a], coefficients,
                           bits=4, block_size=block_size, roundings=[rounding])
                torch.set_num_threads(1)
            else:
                step_quantized_param_(p, grad, c, a, coefficients, bits=4, block_size=block_size, fused=False,
                                      rounding=rounding)
        results.append((p, c, a))
    (p0, c0, a0), (p1, c1, a1) = results
    assert torch.equal(p0, p1) and torch.equal(c0, c1) and torch.equal(a0, a1)
    nearest = codes.clone(), absmax.clone()
    step_quantized_param_(param.clone(), grad, *nearest, coefficients, bits=4, block_size=block_size, fused=False)
    assert not torch.equal(nearest[0], c0)


def test_eight_bit_codes_refuse_draws():
    with pytest.raises(ValueError, match="only 4-bit codes"):
        codec.encode_blocks(torch.zeros(2, 8), 8, torch.zeros(2, 8, dtype=torch.int32))
    param = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="only 4-bit codes"):
        step_quantized_param_(param, param, torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 2),
                              LionCoefficients(0.0, 0.0, 0.0, 1.0), bits=8, block_size=4, fused=False, rounding=(0, 0))


def test_small_momentum_updates_accumulate_where_nearest_rounding_freezes_them():
    """A block whose absmax is pinned at 1 (element 0: momentum 1, gradient 1) and whose other
    elements start at 0 with gradient 0.3: m_t = 0.3 (1 - 0.99**t). Each step adds 0.003, below half
    the first gap (1/64), so rounding to nearest leaves them 0 forever; stochastic rounding tracks
    m_t on average (sd of the mean of 8190 elements ~0.002; tolerance 0.03)."""
    param = torch.nn.Parameter(torch.zeros(2, 4096))
    optimizer = Lion4bit([param], lr=1e-6, betas=(0.9, 0.99), block_size=4096, min_quantized_size=0, fused=False)
    grad = torch.full_like(param, 0.3)
    grad[:, 0] = 1.0
    param.grad = grad
    optimizer.step()  # creates the state; then pin element 0's momentum at 1
    state = optimizer.state[param]
    momentum = torch.zeros_like(param)
    momentum[:, 0] = 1.0
    state["exp_avg_codes"], state["exp_avg_absmax"] = quantize_blockwise(momentum, 4, 4096)
    steps = 100
    for _ in range(steps):
        optimizer.step()
    decoded = codec.dequantize_blockwise(state["exp_avg_codes"], state["exp_avg_absmax"], param.shape, 4, 4096)
    expected = 0.3 * (1 - 0.99**steps)
    assert decoded[:, 0].eq(1.0).all()
    assert abs(decoded[:, 1:].mean().item() - expected) < 0.03


def test_state_dict_keeps_the_step_count_and_resumes_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(32, 256, generator=generator)) for _ in range(2)]
    grads = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(6)]
    optimizer = Lion4bit(params, lr=1e-3, fused=False)

    def run(opt, ps, steps):
        for step_grads in steps:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()

    run(optimizer, params, grads[:3])
    saved = copy.deepcopy(optimizer.state_dict())
    saved_params = [p.detach().clone() for p in params]
    assert saved["param_groups"][0]["code_rounding_steps"] == 3
    run(optimizer, params, grads[3:])
    resumed_params = [torch.nn.Parameter(p) for p in saved_params]
    resumed = Lion4bit(resumed_params, lr=1e-3, fused=False)
    resumed.load_state_dict(saved)
    run(resumed, resumed_params, grads[3:])
    for p, r in zip(params, resumed_params):
        assert torch.equal(p, r)
        assert torch.equal(optimizer.state[p]["exp_avg_codes"], resumed.state[r]["exp_avg_codes"])
    # A checkpoint without the count (Lion's, Lion8bit's, an older Lion4bit's) starts from 0.
    del saved["param_groups"][0]["code_rounding_steps"]
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["code_rounding_steps"] == 0
    saved["param_groups"][0]["code_rounding_steps"] = -1
    with pytest.raises(ValueError, match=r"Invalid code_rounding_steps: -1"):
        resumed.load_state_dict(saved)


@pytest.mark.parametrize("block_size", [128, 256])
def test_state_is_at_most_055_bytes_per_parameter_for_whole_blocks(block_size):
    param = torch.nn.Parameter(torch.randn(64, 4 * block_size))
    optimizer = Lion4bit([param], lr=1e-3, block_size=block_size, fused=False)
    param.grad = torch.randn_like(param)
    optimizer.step()
    state = optimizer.state[param]
    state_bytes = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    assert state_bytes / param.numel() == 0.5 + 4 / block_size <= 0.55
