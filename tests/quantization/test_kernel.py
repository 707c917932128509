"""The fused quantized step (lion_integrations.quantization.kernel): the compiled step against the
eager one, the optimizer's fused and for-loop paths, views of leaves that require grad, CUDA, and the
fallback when it cannot compile. The AVX-512 kernel is tested bit for bit in test_simd.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lion_integrations import Lion8bit
from lion_integrations.quantization import simd
from lion_integrations.quantization.codec import quantize_blockwise
from lion_integrations.quantization.kernel import step_quantized_param_
from lion_integrations.rule import LionCoefficients
from tests.helpers.quantization import CLASSES, drive, make_problem, run_steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(32, 512), (17, 300), (5, 3, 71)])
def test_inductor_fused_step_matches_eager_step(bits, shape, monkeypatch):
    # The compiled step (CUDA, low-precision params, CPUs without AVX-512); test_simd.py
    # covers the AVX-512 kernel that fp32 params take on this CPU.
    monkeypatch.setattr(simd, "applies", lambda param, grad: False)
    generator = torch.Generator().manual_seed(2)
    param = torch.randn(shape, generator=generator)
    momentum = torch.randn(shape, generator=generator) * 1e-3
    codes, absmax = quantize_blockwise(momentum, bits, 128)
    coefficients = LionCoefficients.from_group(1e-3, (0.9, 0.99), 0.1)
    runs = []
    for fused in (False, True):
        p, c, a = param.clone(), codes.clone(), absmax.clone()
        for step in range(5):
            grad = torch.randn(shape, generator=torch.Generator().manual_seed(10 + step))
            step_quantized_param_(p, grad, c, a, coefficients, bits=bits, block_size=128, fused=fused)
        runs.append((p, c, a))
    (p0, c0, a0), (p1, c1, a1) = runs
    # Eager lerp uses FMA, Inductor's does not: momenta may differ by an ulp, which can move a code
    # that sat on a rounding midpoint. Everything else is identical.
    assert (c0 != c1).float().mean() <= 1e-3
    torch.testing.assert_close(a1, a0, rtol=1e-5, atol=0)
    assert (p0 != p1).float().mean() <= 1e-3
    assert (p0 - p1).abs().max() <= 2 * 1e-3 * 5 + 1e-6
    assert not torch.equal(p0, param)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kernel", ["avx512", "torch.compile"])
def test_fused_and_for_loop_paths_agree_and_do_not_recompile(bits, kernel, monkeypatch):
    if kernel == "torch.compile":  # what CUDA, bf16 parameters and CPUs without AVX-512 run
        monkeypatch.setattr(simd, "applies", lambda param, grad: False)
    def halve_lr_at_10(optimizer):
        def on_step(step):
            if step == 10:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
        return on_step

    results = []
    for fused in (False, True):
        params, groups = make_problem(0)
        optimizer = CLASSES[bits](groups, lr=1e-3, weight_decay=0.1, min_quantized_size=1000,
                                  fused=fused, foreach=None if fused else False)
        drive(optimizer, params, 2, on_step=halve_lr_at_10(optimizer))
        # After the first steps built the graphs, more steps and a new learning rate compile nothing.
        with torch._dynamo.config.patch(error_on_recompile=True):
            drive(optimizer, params, 20, first=2, on_step=halve_lr_at_10(optimizer))
        results.append(params)
        if fused:
            assert optimizer.execution_path(optimizer.param_groups[0], torch.device("cpu")) == "fused"
    for expected, actual in zip(*results):
        assert (expected != actual).float().mean() <= 2e-3
        assert (expected - actual).abs().max() <= 0.2


@pytest.mark.parametrize("bits", [8, 4])
def test_params_that_require_grad_with_full_and_short_blocks(bits):
    # (20, 300) with block 256: a full block and a short one per row, stepped as two views of a
    # leaf that requires grad (a regression: autograd rejected such views in compiled code).
    param = nn.Parameter(torch.randn(20, 300, generator=torch.Generator().manual_seed(0)))
    reference = nn.Parameter(param.detach().clone())
    fused, eager = CLASSES[bits]([param], fused=True), CLASSES[bits]([reference], fused=False)
    for step in range(3):
        grad = torch.randn(20, 300, generator=torch.Generator().manual_seed(step))
        param.grad, reference.grad = grad, grad.clone()
        fused.step()
        eager.step()
    assert param.requires_grad and (param != reference).float().mean() <= 1e-3
    assert not torch.equal(param.detach(), torch.randn(20, 300, generator=torch.Generator().manual_seed(0)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU tests above run the same logic")
@pytest.mark.parametrize("bits", [8, 4])
def test_cuda_fused_matches_cpu_for_loop(bits):
    reference, _ = run_steps(CLASSES[bits], steps=10, fused=False, foreach=False)
    cpu_params, groups = make_problem(0)
    cuda_params = [nn.Parameter(p.detach().cuda()) for p in cpu_params]
    mapping = {id(p): c for p, c in zip(cpu_params, cuda_params)}
    for group in groups:
        group["params"] = [mapping[id(p)] for p in group["params"]]
    optimizer = CLASSES[bits](groups, lr=1e-3, weight_decay=0.1, min_quantized_size=1000, fused=True)
    generator = torch.Generator().manual_seed(1)
    for step in range(10):
        for index, param in enumerate(cuda_params):
            grad = torch.randn(param.shape, generator=generator)
            param.grad = None if (index == 1 and step % 2) else grad.cuda()
        optimizer.step()
    assert "exp_avg_codes" in optimizer.state[cuda_params[0]]
    for expected, actual in zip(reference, cuda_params):
        assert (expected != actual.cpu()).float().mean() <= 2e-3


def test_fused_none_falls_back_with_one_warning_and_fused_true_raises(monkeypatch):
    import lion_integrations.optimizer as optimizer_module
    import lion_integrations.quantization.optim as quantized_optim

    monkeypatch.setattr(quantized_optim, "quantized_fused_unavailable_reason", lambda device_type, bits: "no compiler here")
    monkeypatch.setattr(optimizer_module, "_warned_fallback", set())
    param = nn.Parameter(torch.randn(64, 128))
    reference = nn.Parameter(param.detach().clone())
    fallback, eager = Lion8bit([param], lr=0.1), Lion8bit([reference], lr=0.1, fused=False)
    with pytest.warns(RuntimeWarning, match=r"Lion8bit: fused quantized step unavailable on cpu \(no compiler here\)"):
        for optimizer, p in ((fallback, param), (eager, reference)):
            p.grad = torch.ones_like(p)
            optimizer.step()
    assert torch.equal(param, reference)  # the for-loop path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fallback.step()  # no second warning
    with pytest.raises(RuntimeError, match=r"Lion8bit\(fused=True\) cannot run on cpu: no compiler here"):
        Lion8bit([param], fused=True).step()
