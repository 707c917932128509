"""Cautious masking on Lion8bit and Lion4bit: a hand-computed step on the eager and fused paths, the
AVX-512 kernel bit for bit with the eager quantized step (in the optimizer and called directly), the
kernel's generated rule, and the torch.compile'd quantized step (slow)."""

from __future__ import annotations

import pytest
import torch

import lion_integrations.fused as fused_module
from lion_integrations import Lion4bit, Lion8bit
from lion_integrations import avx512
from lion_integrations.quantization import simd
from lion_integrations.quantization.kernel import step_quantized_param_
from lion_integrations.rule import LionCoefficients, cautious_step_size
from tests.helpers.cautious import check_hand_computed_steps, run_cautious

needs_kernel = pytest.mark.skipif(simd.unavailable_reason() is not None, reason=f"{simd.unavailable_reason()}")


@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
@pytest.mark.parametrize("path", ["for-loop", "fused"])
def test_two_steps_match_hand_computation(cls, path):
    """The fused path is the AVX-512 kernel where the CPU has it (else the compiled step)."""
    optimizer = check_hand_computed_steps(cls, path, min_quantized_size=64, block_size=16)
    assert "exp_avg_codes" in optimizer.state[optimizer.param_groups[0]["params"][0]]


@needs_kernel
@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_quantized_kernel_equals_eager_bit_for_bit(cls, monkeypatch):
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 1 << 16)  # small tensors: the unfused rule, no compile
    options = dict(min_quantized_size=1024, block_size=64)
    eager, eager_optimizer = run_cautious(cls, "for-loop", **options)
    kernel, kernel_optimizer = run_cautious(cls, "default", **options)
    assert kernel_optimizer._quantized_path(kernel_optimizer.param_groups[0], torch.device("cpu")) == "fused"
    assert "exp_avg_codes" in kernel_optimizer.state[kernel[0]]
    for p, q in zip(eager, kernel):
        assert torch.equal(p, q)
        for key, value in eager_optimizer.state[p].items():
            assert torch.equal(kernel_optimizer.state[q][key], value), key


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_call_equals_eager_step_with_a_cautious_step_size(bits):
    generator = torch.Generator().manual_seed(bits)
    param, grad = torch.randn(8, 100, generator=generator), torch.randn(8, 100, generator=generator)
    codes = torch.randint(0, 256, (8, 100 if bits == 8 else 50), dtype=torch.uint8, generator=generator)
    absmax = torch.rand(8, 4, generator=generator)
    coefficients = LionCoefficients(cautious_step_size(1e-2, 300, 800), 0.1, 0.01, 0.999)
    results = []
    for fused in (False, True):
        p, c, a = param.clone(), codes.clone(), absmax.clone()
        if fused:
            simd.step_([p], [grad], [c], [a], coefficients, bits=bits, block_size=32, cautious=True)
        else:
            step_quantized_param_(p, grad, c, a, coefficients, bits=bits, block_size=32, fused=False, cautious=True)
        results.append((p, c, a))
    for expected, actual in zip(*results):
        assert torch.equal(expected, actual)
    assert not torch.equal(results[0][0], param)


def test_generated_cautious_rule_masks_then_scales():
    # After the non-finite selects of rule.lion_update_finite_ (t1: the gradient, t2: the step size).
    assert avx512.rule_statements(cautious=True) == [
        "__mmask16 t0 = finite(g);",
        "__m512 t1 = _mm512_mask_blend_ps(t0, m, g);",
        "__m512 t2 = _mm512_mask_blend_ps(t0, _mm512_set1_ps(0x0.0p+0f), step_size);",
        "__m512 t3 = _mm512_mask_blend_ps(t0, _mm512_set1_ps(0x1.0000000000000p+0f), decay);",
        "__m512 t4 = lerp(m, t1, update_weight);",
        "t4 = sign(t4);",
        "t4 = keep_agreeing(t4, t1);",
        "t4 = scale(t4, t2);",
        "p = scale(p, t3);",
        "p = _mm512_sub_ps(p, t4);",
        "m = lerp(m, t1, momentum_weight);",
        "return t0;",
    ]
    assert "keep_agreeing(t4, t1)" in simd.source_code()


@pytest.mark.slow
@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_quantized_compiled_step_agrees_with_eager(cls, monkeypatch):
    """The torch.compile'd quantized step (CUDA, and CPUs without AVX-512) with the cautious rule."""
    monkeypatch.setattr(simd, "applies", lambda param, grad: False)
    options = dict(min_quantized_size=1024, block_size=64)
    eager, eager_optimizer = run_cautious(cls, "for-loop", steps=5, **options)
    compiled, compiled_optimizer = run_cautious(cls, "fused", steps=5, **options)
    for p, q in zip(eager, compiled):
        torch.testing.assert_close(q, p)
    assert "exp_avg_codes" in compiled_optimizer.state[compiled[0]]
