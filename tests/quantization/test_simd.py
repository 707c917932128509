"""The AVX-512 kernel of the fused quantized step (lion_integrations.quantization.simd).

It must give exactly what the eager step gives (the codec's decode and encode, the rule in
rule.py): every test here compares bit for bit. The table logic it uses for encoding is checked in
Python too, so it is tested on CPUs without AVX-512 as well.
"""

from __future__ import annotations

import platform

import pytest
import torch

from lion_integrations import avx512
from lion_integrations.quantization import codec, simd
from lion_integrations.quantization.codec import quantize_blockwise
from lion_integrations.quantization.kernel import step_quantized_param_
from lion_integrations.rule import LionCoefficients
from tests.helpers.quantization import CLASSES

needs_kernel = pytest.mark.skipif(
    simd.unavailable_reason() is not None,
    reason=f"AVX-512 kernel unavailable here ({simd.unavailable_reason()}); the table logic is tested below",
)


def eager_and_kernel(param, grad, codes, absmax, coefficients, bits, block_size, steps=1):
    """(eager, kernel) results (param, codes, absmax) after `steps` steps from the same state."""
    results = []
    for fused in (False, True):
        p, c, a = param.clone(), codes.clone(), absmax.clone()
        for _ in range(steps):
            if fused:
                simd.step_([p.view(p.shape[0], -1)], [grad.view(p.shape[0], -1)], [c.view(p.shape[0], -1)], [a],
                           coefficients, bits=bits, block_size=block_size)
            else:
                step_quantized_param_(p, grad, c, a, coefficients, bits=bits, block_size=block_size, fused=False)
        results.append((p, c, a))
    return results


def assert_identical(eager, kernel):
    for name, expected, actual in zip(("param", "codes", "absmax"), eager, kernel):
        assert torch.equal(expected, actual), f"{name}: {(expected != actual).sum().item()} elements differ"


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    "shape, block_size",
    [((32, 512), 256), ((17, 300), 128), ((5, 213), 64), ((3, 37), 256), ((1, 1000), 100), ((4, 77), 6),
     ((2, 130), 2), ((6, 5, 33), 64), ((64, 1024), 4096)],
)
def test_kernel_equals_eager_step_on_every_code(bits, shape, block_size):
    # Random codes (every value of the byte, so every map entry and both zeros) and random scales,
    # full blocks, short last blocks of even and odd length, blocks shorter than a vector.
    generator = torch.Generator().manual_seed(sum(shape) + block_size + bits)
    param, grad = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    codes_shape, absmax_shape = codec.quantized_shapes(shape, bits, block_size)
    codes = torch.randint(0, 256, codes_shape, dtype=torch.uint8, generator=generator)
    if bits == 4 and (shape[-1] % block_size) % 2:  # a short odd block's padding nibble holds zero
        codes[..., -1] &= 15
    absmax = torch.rand(absmax_shape, generator=generator) * 1e-2
    coefficients = LionCoefficients.from_group(1e-3, (0.9, 0.99), 0.1)
    assert_identical(*eager_and_kernel(param, grad, codes, absmax, coefficients, bits, block_size, steps=3))


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("betas, lr, weight_decay", [((0.5, 0.5), 0.1, 0.0), ((0.0, 0.999), 1e-5, 2.0), ((1.0, 0.0), 1.0, 0.0)])
def test_kernel_equals_eager_for_lerp_weights_on_both_sides_of_one_half(bits, betas, lr, weight_decay):
    # ATen's lerp switches formulas at |weight| = 0.5; the kernel must switch the same way.
    generator = torch.Generator().manual_seed(5)
    param, grad = torch.randn(8, 512, generator=generator), torch.randn(8, 512, generator=generator)
    codes, absmax = quantize_blockwise(torch.randn(8, 512, generator=generator), bits, 256)
    coefficients = LionCoefficients.from_group(lr, betas, weight_decay)
    assert_identical(*eager_and_kernel(param, grad, codes, absmax, coefficients, bits, 256, steps=2))


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_skips_non_finite_gradients_as_eager(bits):
    # A NaN or inf gradient element is skipped (rule.lion_update_finite_): its parameter and momentum
    # keep their values, so its block's absmax stays finite and the block keeps learning. Both
    # paths count the skipped elements.
    generator = torch.Generator().manual_seed(7)
    param, grad = torch.randn(4, 512, generator=generator), torch.randn(4, 512, generator=generator)
    grad[1, 7], grad[2, 300], grad[2, 301] = float("nan"), float("inf"), float("-inf")
    codes, absmax = quantize_blockwise(torch.randn(4, 512, generator=generator), bits, 256)
    coefficients = LionCoefficients.from_group(1e-3, (0.9, 0.99), 0.1)
    eager, kernel = eager_and_kernel(param, grad, codes, absmax, coefficients, bits, 256, steps=3)
    assert_identical(eager, kernel)
    assert torch.isfinite(eager[2]).all()
    for row, col in ((1, 7), (2, 300), (2, 301)):
        assert eager[0][row, col] == param[row, col]
    assert (eager[0] != param).sum() == param.numel() - 3
    counts = simd.step_([param.clone()], [grad], [codes.clone()], [absmax.clone()], coefficients, bits=bits, block_size=256)
    eager_count = step_quantized_param_(param.clone(), grad, codes.clone(), absmax.clone(), coefficients,
                                        bits=bits, block_size=256, fused=False)
    assert counts == [3] and int(eager_count) == 3


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_equals_eager_when_the_inverse_absmax_overflows(bits):
    # A block whose largest momentum is below 2**-128 has an infinite inverse: its elements scale to
    # +-inf and its zeros to NaN; eager encodes those as the largest code and as code 0.
    generator = torch.Generator().manual_seed(11)
    grad = torch.tensor([[1e-40, -1e-40, 0.0, 5e-41, -0.0, 1e-45, 3e-39, -2e-39]]).repeat(3, 8)
    grad[1] *= torch.rand(64, generator=generator)
    param = torch.randn(3, 64, generator=generator)
    codes, absmax = quantize_blockwise(torch.zeros(3, 64), bits, 8)
    coefficients = LionCoefficients.from_group(1e-3, (0.9, 0.0), 0.0)  # the new momentum is the gradient
    eager, kernel = eager_and_kernel(param, grad, codes, absmax, coefficients, bits, 8, steps=2)
    assert (eager[2] > 0).all() and (eager[2] < 2.0**-126).all()
    assert_identical(eager, kernel)


def values_around_every_threshold(bits: int) -> torch.Tensor:
    """Magnitudes in [0, 1] at, and one float step either side of, every map entry and midpoint,
    plus a log-spaced sweep down to 1e-9."""
    magnitudes = codec.signed_dynamic_map(bits).abs().unique()
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
    points = torch.cat([magnitudes, midpoints, torch.tensor(codec.DECADE_SCALE), torch.logspace(-9, 0, 4000)])
    points = points.clamp(0, 1)
    neighbours = [points, torch.nextafter(points, torch.ones_like(points)), torch.nextafter(points, torch.zeros_like(points))]
    return torch.cat(neighbours).clamp(0, 1).unique()


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_encodes_exactly_as_the_codec_at_every_threshold(bits):
    # betas[1] = 0 makes the new momentum the gradient itself; each block starts with 1.0, so its
    # absmax is 1 and the kernel encodes the gradient's values as given, signs both ways.
    values = values_around_every_threshold(bits)
    values = torch.cat([values, -values])
    block = 256
    per_block = block - 1
    blocks = -(-values.numel() // per_block)
    body = torch.zeros(blocks * per_block)
    body[: values.numel()] = values
    grad = torch.cat([torch.ones(blocks, 1), body.view(blocks, per_block)], dim=1)
    codes, absmax = quantize_blockwise(torch.zeros(blocks, block), bits, block)
    param = torch.zeros(blocks, block)
    coefficients = LionCoefficients.from_group(0.0, (0.9, 0.0), 0.0)
    eager, kernel = eager_and_kernel(param, grad, codes, absmax, coefficients, bits, block)
    assert_identical(eager, kernel)
    expected_codes, expected_absmax = quantize_blockwise(grad, bits, block)
    assert torch.equal(kernel[1], expected_codes) and torch.equal(kernel[2], expected_absmax)


@needs_kernel
def test_kernel_results_do_not_depend_on_threads():
    generator = torch.Generator().manual_seed(3)
    param, grad = torch.randn(96, 1000, generator=generator), torch.randn(96, 1000, generator=generator)
    codes, absmax = quantize_blockwise(torch.randn(96, 1000, generator=generator) * 1e-3, 8, 256)
    coefficients = LionCoefficients.from_group(1e-3, (0.9, 0.99), 0.1)
    runs = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(eager_and_kernel(param, grad, codes, absmax, coefficients, 8, 256)[1])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert_identical(runs[0], run)


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_optimizer_steps_a_group_in_one_kernel_call_equal_to_for_loop(bits):
    calls = []
    original = simd.step_

    def counting_step(params, *args, **kwargs):
        calls.append([tuple(p.shape) for p in params])
        return original(params, *args, **kwargs)

    shapes = [(64, 300), (40, 1000), (8, 3, 250), (1000, 1)]  # the last keeps full precision (1-element rows)
    params = [torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(i)))
              for i, shape in enumerate(shapes)]
    params.append(torch.nn.Parameter(torch.randn(300, 64).t()))  # non-contiguous: stepped in a copy
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    cls = CLASSES[bits]
    fused, eager = cls(params, lr=1e-2, weight_decay=0.1, fused=True), cls(reference, lr=1e-2, weight_decay=0.1, fused=False)
    simd.step_ = counting_step
    try:
        for step in range(4):
            for p, r in zip(params, reference):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + step))
                r.grad = p.grad.clone()
            fused.step()
            eager.step()
    finally:
        simd.step_ = original
    assert calls == [[(64, 300), (40, 1000), (8, 750), (64, 300)]] * 4
    for p, r in zip(params, reference):
        assert torch.equal(p, r)
        for key, value in eager.state[r].items():
            assert torch.equal(fused.state[p][key], value), key


# --- The table logic, in Python (runs on every CPU). ---------------------------------------------


def count_below_in_python(magnitudes: torch.Tensor, thresholds, bits: int) -> torch.Tensor:
    """What simd_step.cpp's count_below computes, with torch ops."""
    shift, first_bucket = simd.BUCKETS[bits]
    table = torch.tensor(simd.counts_below_buckets(thresholds, bits))
    padded = torch.tensor([*thresholds, *[float("inf")] * (16 - len(thresholds))], dtype=torch.float32)
    bucket = ((magnitudes.view(torch.int32) >> shift) - first_bucket).clamp(0, simd.BUCKET_COUNT - 1)
    count = table[bucket]
    return count + (magnitudes > padded[count]).int()


@pytest.mark.parametrize("bits", [8, 4])
def test_bucket_tables_count_thresholds_exactly(bits):
    magnitudes = values_around_every_threshold(bits)
    if bits == 8:
        thresholds = codec.DECADE_SCALE[: codec.DECADES - 1]
        expected = (magnitudes.unsqueeze(-1) > torch.tensor(thresholds, dtype=torch.float32)).sum(-1)
    else:
        thresholds = codec.FOUR_BIT_MIDPOINTS
        expected = codec._nearest_index4(magnitudes)
    assert torch.equal(count_below_in_python(magnitudes, thresholds, bits), expected.int())


def test_bucket_table_refuses_two_thresholds_in_one_bucket():
    with pytest.raises(AssertionError, match="two thresholds in the bucket"):
        simd.counts_below_buckets([0.5, 0.51], 8)


def test_generated_rule_is_rule_py():
    # The kernel's update is rule.lion_update_finite_ run with the code-writing ops table: the
    # non-finite lanes select momentum for the gradient, 0 for the step size and 1 for the decay,
    # then rule.lion_update_ (sign, then the multiplication by the step size, become one instruction).
    assert avx512.rule_statements() == [
        "__mmask16 t0 = finite(g);",
        "__m512 t1 = _mm512_mask_blend_ps(t0, m, g);",
        "__m512 t2 = _mm512_mask_blend_ps(t0, _mm512_set1_ps(0x0.0p+0f), step_size);",
        "__m512 t3 = _mm512_mask_blend_ps(t0, _mm512_set1_ps(0x1.0000000000000p+0f), decay);",
        "__m512 t4 = lerp(m, t1, update_weight);",
        "t4 = sign_times(t4, t2);",
        "p = scale(p, t3);",
        "p = _mm512_sub_ps(p, t4);",
        "m = lerp(m, t1, momentum_weight);",
        "return t0;",
    ]
    assert "@" not in simd.source_code()


def test_unavailable_kernel_says_why_and_leaves_the_compiled_step(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LION_INTEGRATIONS_CACHE", str(tmp_path / "cache"))
    simd.compiled_step.cache_clear()
    simd.unavailable_reason.cache_clear()
    try:
        reason = simd.unavailable_reason()
        param = torch.randn(8, 64)
        applies = simd.applies(param, param)
    finally:
        simd.compiled_step.cache_clear()
        simd.unavailable_reason.cache_clear()
    assert not applies
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert reason is not None and "no-such-compiler" in reason
    else:  # the compiler is not even looked for
        assert reason is not None and reason.startswith("not an x86-64")
    monkeypatch.setenv("LION_INTEGRATIONS_SIMD", "0")
    simd.unavailable_reason.cache_clear()
    try:
        assert simd.unavailable_reason() == "disabled by LION_INTEGRATIONS_SIMD=0"
    finally:
        simd.unavailable_reason.cache_clear()


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_autograd_sees_the_kernels_in_place_update(bits):
    param = torch.nn.Parameter(torch.randn(8, 256))
    loss = (param * param).sum()
    param.grad = torch.randn(8, 256)
    optimizer = CLASSES[bits]([param], lr=0.1, min_quantized_size=0, fused=True)
    optimizer.step()
    assert "exp_avg_codes" in optimizer.state[param]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
