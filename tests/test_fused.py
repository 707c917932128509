"""The fused path (lion_integrations.fused): one compiled graph, small tensors left unfused, steps
inside a user's torch.compile, and the fallback when it cannot compile."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lion_integrations.fused as fused_module
import lion_integrations.optimizer as optimizer_module
from lion_integrations import Lion, Lion8bit
from tests.helpers.optimizer import make_problem

# torch.compile's step: the AVX-512 kernel (tests/test_avx512.py) would take fp32 tensors on this CPU.
pytestmark = pytest.mark.usefixtures("fuse_small_tensors", "without_avx512_kernels")


def test_fused_compiles_one_graph_for_all_shapes_and_never_recompiles():
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    params, groups = make_problem(3)  # ranks 0 to 3, a strided tensor, sizes 1 and 2112
    optimizer = Lion(groups, lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    for _ in range(6):
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer.step()
        scheduler.step()
    assert counters["stats"]["unique_graphs"] - graphs_before <= 1  # 0 if an earlier test compiled it


def test_fused_path_sends_small_tensors_to_the_unfused_rule(monkeypatch):
    """Below MIN_FUSED_NUMEL a compiled call costs more than it saves: those tensors run the per-tensor
    rule (CPU), the large ones the kernel; both give the reference result."""
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 1000)
    kernel_sizes = []
    real_kernel = fused_module.compiled_step("float32_float32_float32")
    assert fused_module.fused_unavailable_reason("cpu") is None  # the probe's own call, before the spy

    def spy(param, grad, exp_avg, scalars):
        kernel_sizes.append(param.numel())
        return real_kernel(param, grad, exp_avg, scalars)

    monkeypatch.setattr(fused_module, "compiled_step", lambda key: spy)
    small, large = nn.Parameter(torch.randn(10, 10)), nn.Parameter(torch.randn(40, 40))
    reference = [nn.Parameter(p.detach().clone()) for p in (small, large)]
    fused, eager = Lion([small, large], lr=0.1, fused=True), Lion(reference, lr=0.1, fused=False, foreach=False)
    for p, q in zip((small, large), reference):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    fused.step()
    eager.step()
    assert kernel_sizes == [1600]
    for p, q in zip((small, large), reference):
        torch.testing.assert_close(p, q)


def test_step_inside_a_user_compiled_training_step_matches_eager():
    def train(compiled: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 1))
        optimizer = Lion(model.parameters(), lr=1e-2, weight_decay=0.1)
        inputs, targets = torch.randn(16, 5), torch.randn(16, 1)

        def train_step():
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            return loss

        step = torch.compile(train_step) if compiled else train_step
        for _ in range(4):
            step()
        return [p.detach() for p in model.parameters()]

    for eager, compiled in zip(train(False), train(True)):
        torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_user_compiled_step_with_a_scheduler(lr_kind):
    """A scheduler changes lr every step; with a tensor lr (as for torch's optimizers) the traced
    step is one graph after the first (state-creating) call: no .item() break, no recompile."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    def train(compiled: bool):
        torch.manual_seed(0)
        torch._dynamo.reset()
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 1))
        lr = torch.tensor(1e-2) if lr_kind == "tensor" else 1e-2
        optimizer = Lion(model.parameters(), lr=lr, weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        inputs, targets = torch.randn(16, 5), torch.randn(16, 1)
        counter = CompileCounter()
        step = torch.compile(optimizer.step, backend=counter) if compiled else optimizer.step
        for _ in range(8):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(inputs), targets).backward()
            step()
            scheduler.step()
        return [p.detach() for p in model.parameters()], counter.frame_count

    counters.clear()
    (eager, _), (compiled, frames) = train(False), train(True)
    for expected, actual in zip(eager, compiled):
        torch.testing.assert_close(actual, expected)
    if lr_kind == "tensor":
        assert frames <= 2
        # (the scheduler's step-counting wrapper around optimizer.step is a graph break of torch's own)
        assert not [reason for reason in counters["graph_break"] if "item()" in reason]


def test_fused_none_compiles_nothing_when_every_tensor_is_small(monkeypatch):
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 1000)
    probed = []
    monkeypatch.setattr(optimizer_module, "fused_unavailable_reason", lambda device_type: probed.append(device_type))
    small = nn.Parameter(torch.randn(10, 10))
    optimizer = Lion([small], lr=0.1)
    small.grad = torch.randn_like(small)
    optimizer.step()
    assert probed == []
    large = nn.Parameter(torch.randn(40, 40))
    large.grad = torch.randn_like(large)
    optimizer.add_param_group({"params": [large]})
    optimizer.step()
    assert probed == ["cpu"]


def test_fused_none_falls_back_with_one_warning_and_fused_true_raises(monkeypatch):
    monkeypatch.setattr(optimizer_module, "fused_unavailable_reason", lambda device_type: "no compiler here")
    monkeypatch.setattr(optimizer_module, "_warned_fallback", set())
    param = nn.Parameter(torch.ones(4))
    optimizer = Lion([param], lr=0.1)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        for _ in range(3):
            param.grad = torch.ones(4)
            optimizer.step()
    assert optimizer.execution_path(optimizer.param_groups[0], param.device) == "for-loop"  # CPU
    torch.testing.assert_close(param.detach(), torch.full((4,), 0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()  # no second warning
    strict = Lion([param], fused=True)
    with pytest.raises(RuntimeError, match="fused=True.*no compiler here"):
        strict.step()


def test_fused_lion_survives_many_dtype_combinations():
    # Each (parameter, gradient, momentum) dtype combination has its own compiled copy: with a
    # recompile limit of 2, a shared function would fail at the third combination.
    combinations = [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None), (torch.float64, None),
                    (torch.bfloat16, torch.float32)]
    with torch._dynamo.config.patch(recompile_limit=2):
        for dtype, momentum_dtype in combinations:
            param = nn.Parameter(torch.randn(64, 64, dtype=dtype))
            reference = nn.Parameter(param.detach().clone())
            param.grad = torch.randn_like(param)
            reference.grad = param.grad.clone()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                Lion([param], lr=1e-2, fused=True, momentum_dtype=momentum_dtype).step()
            Lion([reference], lr=1e-2, fused=False, momentum_dtype=momentum_dtype).step()
            torch.testing.assert_close(param, reference)


def test_fused_quantized_survives_the_issue_repro():
    with torch._dynamo.config.patch(recompile_limit=4):
        for dtype in (torch.bfloat16, torch.float16, torch.float64):
            for shape in ((64, 256), (1, 256), (64, 512), (1, 512)):
                param = nn.Parameter(torch.randn(shape, dtype=dtype))
                param.grad = torch.randn_like(param)
                Lion8bit([param], min_quantized_size=0, fused=True).step()


def test_a_recompile_limit_falls_back_to_the_eager_step_with_one_warning(monkeypatch):
    import lion_integrations.quantization.kernel as kernel_module

    def at_the_limit(*args, **kwargs):
        def compiled(*tensors):
            raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile_limit reached")
        return compiled

    monkeypatch.setattr(fused_module, "_warned_limits", set())
    monkeypatch.setattr(kernel_module, "compiled_quantized_step", at_the_limit)
    monkeypatch.setattr(kernel_module.simd, "applies", lambda *tensors: False)  # the compiled step, on any CPU
    params = [nn.Parameter(torch.randn(shape, dtype=torch.float16)) for shape in ((64, 256), (1, 256), (1, 512))]
    references = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, references):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    with pytest.warns(RuntimeWarning, match="recompile limit") as caught:
        Lion8bit(params, min_quantized_size=0, fused=True, kahan_sum=False).step()
    assert len([w for w in caught if "recompile limit" in str(w.message)]) == 1  # three fallbacks, one warning
    Lion8bit(references, min_quantized_size=0, fused=False, kahan_sum=False).step()
    for p, q in zip(params, references):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # the eager step: the same rule, the same rounding
