"""The core optimizer: the rule, its three execution paths, state dicts and input checks."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import lion_integrations.fused as fused_module
import lion_integrations.optimizer as optimizer_module
from lion_integrations import Lion

@pytest.fixture(autouse=True)
def fuse_small_tensors(monkeypatch):
    """The problems here are small: let every tensor of 2+ elements take the compiled kernel."""
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 2)


PATHS = {
    "for-loop": dict(fused=False, foreach=False),
    "foreach": dict(fused=False, foreach=True),
    "fused": dict(fused=True),
}


def make_problem(seed: int, dtype=torch.float32):
    """Parameters of assorted shapes (a scalar, odd sizes, a non-contiguous one) in three groups."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(17, 9), (9,), (), (3, 5, 7), (64, 33), (1,)]
    params = [nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]
    transposed = nn.Parameter(torch.randn(12, 8, generator=generator).to(dtype).t())  # non-contiguous
    params.append(transposed)
    groups = [
        {"params": params[:3], "lr": 3e-3, "weight_decay": 0.5},
        {"params": params[3:5], "betas": (0.95, 0.98)},
        {"params": params[5:], "lr": 1e-2, "maximize": True},
    ]
    return params, groups


def run_steps(path: str, steps: int = 100, dtype=torch.float32, seed: int = 0, **options):
    params, groups = make_problem(seed, dtype)
    optimizer = Lion(groups, lr=1e-3, weight_decay=0.1, **PATHS[path], **options)
    generator = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        for index, param in enumerate(params):
            # leave one parameter without a gradient on odd steps: it must be skipped
            param.grad = None if (index == 1 and step % 2) else torch.randn(param.shape, generator=generator).to(dtype)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_paths_match_for_loop_reference_over_100_steps(path):
    reference, _ = run_steps("for-loop")
    candidate, optimizer = run_steps(path)
    assert optimizer.execution_path(optimizer.param_groups[0], torch.device("cpu")) == path
    for expected, actual in zip(reference, candidate):
        torch.testing.assert_close(actual, expected)  # fp32 rounding tolerance
    moved = sum((p - q).abs().sum() for p, q in zip(reference, make_problem(0)[0]))
    assert moved > 0


@pytest.mark.parametrize("path", list(PATHS))
def test_two_steps_match_hand_computation(path):
    # lr=0.1, betas=(0.9, 0.99), wd=0.1. Element 0: m=0.005 after step 1, then c=0.9*0.005+0.1*(-2) < 0.
    # Element 1: sign(c) follows the momentum although the gradient turned negative.
    # Element 2: zero gradient and momentum: sign(0)=0, only the decay acts.
    param = nn.Parameter(torch.tensor([1.0, 0.0, 2.0]))
    optimizer = Lion([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1, **PATHS[path])
    param.grad = torch.tensor([0.5, 10.0, 0.0])
    optimizer.step()
    torch.testing.assert_close(param.detach(), torch.tensor([0.89, -0.1, 1.98]))
    torch.testing.assert_close(optimizer.state[param]["exp_avg"], torch.tensor([0.005, 0.1, 0.0]))
    param.grad = torch.tensor([-2.0, -0.5, 0.0])
    optimizer.step()
    torch.testing.assert_close(param.detach(), torch.tensor([0.9811, -0.199, 1.9602]))
    torch.testing.assert_close(optimizer.state[param]["exp_avg"], torch.tensor([-0.01505, 0.094, 0.0]))


@pytest.mark.parametrize("path", list(PATHS))
def test_bf16_params_keep_bf16_momentum_and_match_fp32_math(path):
    reference, _ = run_steps("for-loop", steps=20, dtype=torch.bfloat16)
    candidate, optimizer = run_steps(path, steps=20, dtype=torch.bfloat16)
    # Paths may round an fp32 intermediate differently by one bf16 ulp; where that flips sign(c)
    # of a near-zero c, the element moves by one step of lr (at most 1e-2 here) instead of zero.
    for expected, actual in zip(reference, candidate):
        assert actual.dtype == torch.bfloat16
        torch.testing.assert_close(actual, expected, rtol=1.6e-2, atol=2e-2)
    identical = sum((a == b).sum().item() for a, b in zip(reference, candidate))
    assert identical >= 0.99 * sum(p.numel() for p in reference)
    assert all(state["exp_avg"].dtype == torch.bfloat16 for state in optimizer.state.values())


def test_momentum_dtype_float32_for_bf16_params_survives_state_dict_round_trip():
    params, optimizer = run_steps("for-loop", steps=3, dtype=torch.bfloat16, momentum_dtype=torch.float32)
    assert all(state["exp_avg"].dtype == torch.float32 for state in optimizer.state.values())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    restored = Lion(make_problem(0, torch.bfloat16)[1], lr=1e-3, momentum_dtype="float32")
    restored.load_state_dict(saved)
    for before, after in zip(optimizer.state.values(), restored.state.values()):
        assert after["exp_avg"].dtype == torch.float32
        assert torch.equal(before["exp_avg"], after["exp_avg"])


@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_then_continue_equals_uninterrupted(path):
    uninterrupted, _ = run_steps(path, steps=20)

    params, optimizer = run_steps(path, steps=10)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    resumed_params, groups = make_problem(0)
    with torch.no_grad():
        for param, saved in zip(resumed_params, checkpoint["params"]):
            param.copy_(saved)
    resumed = Lion(groups, lr=1e-3, weight_decay=0.1, **PATHS[path])
    resumed.load_state_dict(checkpoint["optimizer"])
    generator = torch.Generator().manual_seed(1)
    for step in range(20):
        grads = [None if (index == 1 and step % 2) else torch.randn(p.shape, generator=generator)
                 for index, p in enumerate(resumed_params)]
        if step < 10:
            continue  # the first ten steps' gradients were consumed before the checkpoint
        for param, grad in zip(resumed_params, grads):
            param.grad = grad
        resumed.step()
    for expected, actual in zip(uninterrupted, resumed_params):
        assert torch.equal(expected, actual)


def test_deepcopy_gives_an_independent_optimizer_that_continues_identically():
    model = nn.Linear(6, 3)
    optimizer = Lion(model.parameters(), lr=1e-2, weight_decay=0.1, fused=False)
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    inputs = torch.randn(4, 6)
    for m, o in ((model, optimizer), (model_copy, optimizer_copy)):
        o.zero_grad()
        m(inputs).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert optimizer.state[p]["exp_avg"].data_ptr() != optimizer_copy.state[q]["exp_avg"].data_ptr()


def test_params_without_grad_are_skipped_and_closure_loss_is_returned():
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    optimizer = Lion([used, unused], lr=0.1, fused=False)

    def closure():
        optimizer.zero_grad()
        loss = (used * torch.tensor([1.0, -1.0, 2.0])).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(2.0)
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in optimizer.state
    torch.testing.assert_close(used.detach(), torch.tensor([0.9, 1.1, 0.9]))


def test_learning_rate_scheduler_changes_step_size():
    param = nn.Parameter(torch.zeros(2))
    optimizer = Lion([param], lr=1.0, fused=False)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    positions = []
    for _ in range(3):
        param.grad = torch.tensor([-1.0, 1.0])
        optimizer.step()
        scheduler.step()
        positions.append(param.detach()[0].item())
    assert positions == [1.0, 1.5, 1.75]


def test_tensor_lr_is_accepted():
    param = nn.Parameter(torch.zeros(2))
    optimizer = Lion([param], lr=torch.tensor(0.25), fused=False)
    param.grad = torch.tensor([1.0, -1.0])
    optimizer.step()
    assert param.detach().tolist() == [-0.25, 0.25]


def test_lion_trains_a_small_regression_model():
    torch.manual_seed(0)
    inputs = torch.randn(256, 8)
    targets = inputs @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = Lion(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


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
    real_kernel = fused_module.compiled_step()
    assert fused_module.fused_unavailable_reason("cpu") is None  # the probe's own call, before the spy

    def spy(param, grad, exp_avg, scalars):
        kernel_sizes.append(param.numel())
        return real_kernel(param, grad, exp_avg, scalars)

    monkeypatch.setattr(fused_module, "compiled_step", lambda: spy)
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-3), r"Invalid lr: -0.001"),
        (dict(betas=(1.0, 0.99)), r"Invalid betas\[0\]: 1.0"),
        (dict(betas=(0.9, -0.1)), r"Invalid betas\[1\]: -0.1"),
        (dict(betas=(0.9,)), r"Invalid betas: \(0.9,\)"),
        (dict(weight_decay=-0.5), r"Invalid weight_decay: -0.5"),
        (dict(lr=float("inf")), r"Invalid lr: inf \(expected a finite number"),
        (dict(weight_decay=float("inf")), r"Invalid weight_decay: inf"),
        (dict(fused=True, foreach=True), r"fused=True with foreach=True"),
        (dict(momentum_dtype=torch.int8), r"Invalid momentum_dtype: torch.int8"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Lion([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr="fast"), r"Invalid lr: 'fast'"),
        (dict(lr="1e-3"), r"Invalid lr: '1e-3' \(expected a number, got str\)"),
        (dict(lr=True), r"Invalid lr: True"),
        (dict(weight_decay="0.1"), r"Invalid weight_decay: '0.1'"),
        (dict(betas=["0.9", "0.99"]), r"Invalid betas\[0\]: '0.9'"),
        (dict(betas=0.9), r"Invalid betas: 0.9"),
        (dict(maximize="yes"), r"Invalid maximize: 'yes'"),
        (dict(fused="no"), r"Invalid fused: 'no' \(expected True, False or None\)"),
        (dict(foreach=1), r"Invalid foreach: 1"),
        (dict(momentum_dtype=16), r"Invalid momentum_dtype: 16"),
    ],
)
def test_arguments_of_a_wrong_type_raise_type_error_naming_them(kwargs, message):
    with pytest.raises(TypeError, match=message):
        Lion([nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_param_group_is_rejected():
    optimizer = Lion([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"Invalid lr: -1"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": -1})


def test_sparse_gradient_is_rejected():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = Lion(embedding.parameters(), fused=False)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradients"):
        optimizer.step()


def test_mismatched_state_dict_is_rejected_and_changes_nothing():
    source = Lion([nn.Parameter(torch.zeros(3, 2))], lr=0.5, fused=False)
    source.param_groups[0]["params"][0].grad = torch.ones(3, 2)
    source.step()
    target_param = nn.Parameter(torch.zeros(2, 3))
    target = Lion([target_param], lr=0.01, fused=False)
    target_param.grad = torch.ones(2, 3)
    target.step()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=r"'exp_avg' of param 0 has shape \(3, 2\).*\(2, 3\)"):
        target.load_state_dict(source.state_dict())
    bad_lr = copy.deepcopy(target.state_dict())
    bad_lr["param_groups"][0]["lr"] = -3.0
    with pytest.raises(ValueError, match="Invalid lr: -3.0"):
        target.load_state_dict(bad_lr)
    with pytest.raises(ValueError, match="2 param groups"):
        target.load_state_dict({"state": {}, "param_groups": [before["param_groups"][0]] * 2})
    with pytest.raises(ValueError, match="param group 0 has no 'params' list"):
        target.load_state_dict({"state": {}, "param_groups": [{"lr": 0.1}]})
    after = target.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_state_dict_errors_name_the_parameter_of_named_groups():
    model = nn.Linear(3, 2)
    optimizer = Lion(model.named_parameters(), fused=False)
    model.weight.grad, model.bias.grad = torch.ones(2, 3), torch.ones(2)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][1]["exp_avg"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 1 \('bias'\) has shape \(5,\)"):
        optimizer.load_state_dict(saved)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU tests above run the same logic")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_paths_match_for_loop(dtype):
    def run(path):
        params, groups = make_problem(0, dtype)
        params = [nn.Parameter(p.detach().cuda()) for p in params]
        for group, count in zip(groups, (3, 2, 2)):
            group["params"], params = params[:count], params[count:]
        optimizer = Lion([dict(g) for g in groups], lr=1e-3, weight_decay=0.1, **PATHS[path])
        generator = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(50):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = torch.randn(param.shape, generator=generator, device="cuda").to(dtype)
            optimizer.step()
        return [p.detach() for g in optimizer.param_groups for p in g["params"]]

    reference = run("for-loop")
    for path in ("foreach", "fused"):
        for expected, actual in zip(reference, run(path)):
            torch.testing.assert_close(actual, expected)
