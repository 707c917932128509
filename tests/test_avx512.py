"""The fp32 AVX-512 step (lion_integrations.avx512): the rule's own statements, bit for bit the eager
rule on odd sizes, NaN/inf counted in its loop, and `Lion`'s fused path sending fp32 CPU tensors to
it without reading their gradients a second time."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn

import lion_integrations.optimizer as optimizer_module
from lion_integrations import Lion, avx512
from lion_integrations.rule import LionCoefficients, cautious_step_size, kept_count, lion_step_tensor_

needs_kernel = pytest.mark.skipif(
    avx512.unavailable_reason() is not None,
    reason=f"fp32 AVX-512 kernel unavailable here ({avx512.unavailable_reason()}); its source is tested below",
)
COEFFICIENTS = LionCoefficients.from_group(1e-2, (0.9, 0.99), 0.1)


def poisoned(size: int, generator: torch.Generator) -> torch.Tensor:
    """A gradient with NaN, +inf and -inf at scattered elements (when `size` allows)."""
    grad = torch.randn(size, generator=generator)
    for offset, value in enumerate((float("nan"), float("inf"), -float("inf"))):
        grad[offset::11] = value
    return grad


@contextlib.contextmanager
def no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cautious", [False, True])
def test_kernel_matches_the_eager_rule_bit_for_bit_and_counts_nonfinite(threads, cautious):
    generator = torch.Generator().manual_seed(0)
    sizes = [1, 15, 16, 17, 33, 1000, 4099]  # lanes: a partial vector, one, one and a bit...
    params = [torch.randn(size, generator=generator) for size in sizes]
    grads = [poisoned(size, generator) if size > 3 else torch.randn(size, generator=generator) for size in sizes]
    exp_avgs = [torch.randn(size, generator=generator) * 0.1 for size in sizes]
    expected_params, expected_exp_avgs = [p.clone() for p in params], [m.clone() for m in exp_avgs]
    step_sizes = [
        cautious_step_size(COEFFICIENTS.step_size, kept_count(g, m, COEFFICIENTS.update_weight), g.numel())
        if cautious else COEFFICIENTS.step_size for g, m in zip(grads, exp_avgs)
    ]
    expected_counts = []
    for param, grad, exp_avg, step_size in zip(expected_params, grads, expected_exp_avgs, step_sizes):
        finite = lion_step_tensor_(
            param, grad, exp_avg, step_size, *COEFFICIENTS.scalars()[1:], cautious=cautious, skip_nonfinite=True
        )
        expected_counts.append(int((~finite).sum()))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        counts = avx512.step_(params, grads, exp_avgs, COEFFICIENTS, step_sizes=step_sizes, cautious=cautious)
    finally:
        torch.set_num_threads(previous)
    assert counts == expected_counts and sum(counts) > 0
    for got, want in zip(params + exp_avgs, expected_params + expected_exp_avgs):
        assert torch.equal(got, want)


@needs_kernel
def test_kernel_copies_a_strided_gradient():
    param, exp_avg = torch.randn(8, 40), torch.zeros(8, 40)
    grad = torch.randn(40, 8).t()
    expected_param, expected_exp_avg = param.clone(), exp_avg.clone()
    lion_step_tensor_(expected_param, grad, expected_exp_avg, *COEFFICIENTS.scalars())
    assert avx512.applies(param, grad, exp_avg)
    avx512.step_([param], [grad], [exp_avg], COEFFICIENTS)
    assert torch.equal(param, expected_param) and torch.equal(exp_avg, expected_exp_avg)


@needs_kernel
def test_applies_only_to_contiguous_fp32_cpu_tensors():
    fp32 = torch.zeros(4, 4)
    assert avx512.applies(fp32, fp32, fp32)
    assert not avx512.applies(fp32.double(), fp32.double(), fp32.double())
    assert not avx512.applies(fp32.bfloat16(), fp32.bfloat16(), fp32)
    assert not avx512.applies(fp32.t()[:, :2], fp32[:, :2], fp32[:, :2])


@needs_kernel
def test_lion_fused_steps_fp32_in_the_kernel_and_screens_no_gradient_twice(monkeypatch):
    """The kernel finds NaN/inf in its own loop, so the step reads no gradient for `finite_flags`;
    the warning and counter are those of the other paths."""
    screened, stepped = [], []
    real_flags, real_step = optimizer_module.finite_flags, avx512.step_
    monkeypatch.setattr(optimizer_module, "finite_flags", lambda grads: screened.extend(grads) or real_flags(grads))
    monkeypatch.setattr(avx512, "step_", lambda params, *args, **kwargs: stepped.extend(params) or real_step(params, *args, **kwargs))
    model = nn.Linear(64, 32)
    reference = nn.Linear(64, 32)
    reference.load_state_dict(model.state_dict())
    fused = Lion(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    loop = Lion(reference.parameters(), lr=1e-2, weight_decay=0.1, fused=False)
    for step in range(3):
        for param, twin in zip(model.parameters(), reference.parameters()):
            param.grad = torch.randn_like(param)
            if step == 1:
                param.grad[0] = float("nan")
            twin.grad = param.grad.clone()
        expected = r"NaN or inf gradient elements in param 0 of group 0 \(shape \(32, 64\)\) \(64 of 2048"
        with pytest.warns(RuntimeWarning, match=expected) if step == 1 else no_warning():
            fused.step()
        assert screened == []
        with pytest.warns(RuntimeWarning) if step == 1 else no_warning():
            loop.step()
        screened.clear()
    assert len(stepped) == 6
    assert fused.nonfinite_steps == loop.nonfinite_steps == 1
    for param, twin in zip(model.parameters(), reference.parameters()):
        assert torch.equal(param, twin)
        assert torch.equal(fused.state[param]["exp_avg"], loop.state[twin]["exp_avg"])


@needs_kernel
def test_fused_false_and_float64_do_not_take_the_kernel(monkeypatch):
    stepped = []
    real_step = avx512.step_
    monkeypatch.setattr(avx512, "step_", lambda params, *args, **kwargs: stepped.extend(params) or real_step(params, *args, **kwargs))
    for options, dtype in ((dict(fused=False), torch.float32), (dict(fused=True), torch.float64)):
        param = nn.Parameter(torch.randn(300, dtype=dtype))
        param.grad = torch.randn_like(param)
        Lion([param], **options).step()
    assert stepped == []


def test_source_holds_the_rule_and_no_unfilled_field():
    source = avx512.rule_source() + avx512.STEP_TEMPLATE.read_text()
    assert "@" not in source
    for line in avx512.rule_statements() + avx512.rule_statements(cautious=True):
        assert line in source
    assert '__builtin_cpu_supports("avx512f")' in source and "avx512vbmi" not in source


def test_unavailable_reason_names_the_switch_and_a_failed_build_warns(monkeypatch):
    monkeypatch.setenv("LION_INTEGRATIONS_SIMD", "0")
    assert avx512.kernel_unavailable_reason(lambda: None, "fp32 step") == "disabled by LION_INTEGRATIONS_SIMD=0"
    monkeypatch.setenv("LION_INTEGRATIONS_SIMD", "1")
    monkeypatch.setattr(avx512.platform, "machine", lambda: "x86_64")

    def failing_build():
        raise RuntimeError("g++ failed: no such file")

    def foreign_cpu():
        raise avx512.CpuLacksFeatures("the CPU lacks AVX-512 F")

    with pytest.warns(RuntimeWarning, match=r"AVX-512 fp32 step could not be built \(g\+\+ failed"):
        assert "g++ failed" in avx512.kernel_unavailable_reason(failing_build, "fp32 step")
    with no_warning():  # a CPU without AVX-512 is what the torch.compile step is for
        assert "lacks AVX-512" in avx512.kernel_unavailable_reason(foreign_cpu, "fp32 step")


@needs_kernel
def test_autograd_sees_the_kernels_in_place_update():
    """As with the other paths (torch's in-place ops), a graph that saved the old weights raises on
    backward instead of using the new ones."""
    for options in (dict(fused=False), dict(fused=True)):
        param = nn.Parameter(torch.randn(64))
        loss = (param * param).sum()
        param.grad = torch.randn(64)
        optimizer = Lion([param], lr=0.1, **options)
        optimizer.step()
        assert param._version > 0 and optimizer.state[param]["exp_avg"]._version > 0
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_tensors_without_cpu_memory_are_not_for_the_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.zeros(64)
    assert not avx512.fits(fake, fake, fake)
    assert avx512.fits(torch.zeros(64), nn.Parameter(torch.zeros(64)), torch.zeros(64))
