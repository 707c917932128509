"""`Lion` as a torch.optim.Optimizer: its paths agree, bf16, skipped params, closures, schedulers,
tensor lr, training, and input checks. State dicts are in test_optimizer_state_dict.py, the compiled
path in test_fused.py, the rule itself in test_rule.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from tests.helpers.optimizer import PATHS, make_problem, run_steps

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")


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
