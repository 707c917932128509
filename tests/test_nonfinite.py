"""NaN/inf gradient elements on every path (`nonfinite`): skipped, named and counted, or raised; the
user's own torch.compile; GradScaler's own skip with fp16."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lion_integrations import Lion
from tests.helpers.robustness import PATHS, QUANTIZED, assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")


def grad_with_bad_elements(shape=(64, 256), seed=0):
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    grad[0, 0], grad[5, 17], grad[9, 200] = float("nan"), float("inf"), float("-inf")
    return grad


BAD = [(0, 0), (5, 17), (9, 200)]


def optimizer_over(kind, path, params, **options):
    if kind == "lion":
        return Lion(params, lr=1e-2, weight_decay=0.1, **PATHS[path], **options)
    cls = QUANTIZED[kind]
    return cls(params, lr=1e-2, weight_decay=0.1, min_quantized_size=0, **PATHS[path], **options)


def momentum(optimizer, param):
    """The parameter's momentum as a float32 tensor (decoded for the quantized optimizers)."""
    state = optimizer.state[param]
    if "exp_avg" in state:
        return state["exp_avg"].float()
    from lion_integrations.quantization.codec import dequantize_blockwise

    return dequantize_blockwise(state["exp_avg_codes"], state["exp_avg_absmax"], param.shape,
                                optimizer.bits, optimizer.param_groups[0]["block_size"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["lion", 8, 4])
def test_nonfinite_gradient_elements_are_skipped_named_and_counted(kind, path, dtype):
    model = nn.Linear(256, 64, bias=False).to(dtype)
    optimizer = optimizer_over(kind, path, model.named_parameters())
    param = model.weight
    param.grad = torch.randn(64, 256).to(dtype)
    optimizer.step()  # a momentum to keep
    before_param, before_momentum = param.detach().clone(), momentum(optimizer, param)

    param.grad = grad_with_bad_elements().to(dtype)
    with pytest.warns(RuntimeWarning, match=r"NaN or inf gradient elements in 'weight' \(3 of 16384 elements\)"):
        optimizer.step()
    assert optimizer.nonfinite_steps == 1
    after_momentum = momentum(optimizer, param)
    assert torch.isfinite(after_momentum).all()
    if kind != "lion":
        assert torch.isfinite(optimizer.state[param]["exp_avg_absmax"]).all()
    for row, col in BAD:  # skipped: parameter and momentum as they were
        assert param[row, col] == before_param[row, col]
        if kind == "lion":
            assert after_momentum[row, col] == before_momentum[row, col]
    moved = param.detach() != before_param
    assert moved.sum() >= param.numel() - len(BAD) - param.numel() // 100

    # The next finite gradient moves every weight, the formerly bad ones included.
    before_param = param.detach().clone()
    param.grad = torch.ones(64, 256).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()
    assert (param.detach() != before_param).all()
    assert optimizer.nonfinite_steps == 1


@pytest.mark.parametrize("path", list(PATHS))
def test_skipped_elements_match_a_reference_that_masks_them(path):
    # The other elements take exactly the ordinary step: compare with a run whose bad elements
    # have a zero gradient, on the elements that are finite in both.
    torch.manual_seed(0)
    start = torch.randn(64, 256)
    params = [nn.Parameter(start.clone()) for _ in range(2)]
    optimizers = [Lion([p], lr=1e-2, weight_decay=0.1, **PATHS[path]) for p in params]
    grad = grad_with_bad_elements()
    params[0].grad = grad
    params[1].grad = torch.where(grad.isfinite(), grad, torch.zeros(()))
    with pytest.warns(RuntimeWarning):
        optimizers[0].step()
    optimizers[1].step()
    finite = grad.isfinite()
    torch.testing.assert_close(params[0].detach()[finite], params[1].detach()[finite])
    assert torch.equal(params[0].detach()[~finite], start[~finite])


@pytest.mark.parametrize("kind", ["lion", 8])
def test_nonfinite_raise_names_the_parameter_and_changes_nothing(kind):
    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 64))
    groups = [
        {"params": list(model[0].parameters()), "param_names": ["0.weight", "0.bias"]},
        {"params": list(model[1].parameters()), "param_names": ["1.weight", "1.bias"]},
    ]
    optimizer = optimizer_over(kind, "for-loop", groups, nonfinite="raise")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    before = snapshot(optimizer)
    model[1].weight.grad[3, 3] = float("inf")
    with pytest.raises(RuntimeError, match=r"non-finite gradient \(NaN or inf\) in '1.weight'; no parameter was updated"):
        optimizer.step()
    assert_unchanged(before, optimizer)
    assert optimizer.nonfinite_steps == 0


def test_nonfinite_is_checked_like_any_option():
    param = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Invalid nonfinite: 'ignore' \(expected one of 'skip', 'raise'\)"):
        Lion([param], nonfinite="ignore")
    optimizer = Lion([param])
    with pytest.raises(ValueError, match="Invalid nonfinite"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "nonfinite": "warn"})
    assert optimizer.param_groups[0]["nonfinite"] == "skip"


def test_user_compiled_step_masks_nonfinite_gradients_and_reports_them_later():
    # Inside a compiled step the rule masks, and the counts wait on the device (no host read can
    # break the graph) until nonfinite_steps is read or an eager step runs.
    param, clean = nn.Parameter(torch.ones(8)), nn.Parameter(torch.ones(3))
    optimizer = Lion([{"params": [clean]}, {"params": [param]}], lr=0.1)
    compiled_step = torch.compile(optimizer.step)
    for grad in ([1.0, float("nan"), -1.0, float("inf"), 1.0, 1.0, 1.0, 1.0], [1.0] * 8, [float("nan")] + [1.0] * 7):
        param.grad, clean.grad = torch.tensor(grad), torch.ones(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing is said inside the graph
            compiled_step()
    assert torch.isfinite(optimizer.state[param]["exp_avg"]).all()
    torch.testing.assert_close(param.detach(), torch.tensor([0.8, 0.8, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7]))
    with pytest.warns(RuntimeWarning, match=r"param 0 of group 1 \(shape \(8,\)\) \(3 elements\).*in 2 steps run inside torch.compile"):
        assert optimizer.nonfinite_steps == 2
    param.grad[1] = float("nan")
    with pytest.warns(RuntimeWarning, match="this step") as caught:
        optimizer.step()  # eager: reported at once, the tally already drained
    assert len(caught) == 1 and optimizer.nonfinite_steps == 3


def test_grad_scaler_keeps_its_own_skip_with_fp16_autocast():
    # Lion does not read GradScaler's found_inf (no _step_supports_amp_scaling): the scaler skips
    # the whole step itself when the scaled fp16 gradients overflow, and steps normally otherwise.
    assert not getattr(Lion, "_step_supports_amp_scaling", False)
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    optimizer = Lion(model.parameters(), lr=1e-2, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # 2**60 overflows fp16 at once
    inputs = torch.randn(16, 8)

    def scaled_step():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(inputs).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    before = [p.detach().clone() for p in model.parameters()]
    scaled_step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not optimizer.state and scaler.get_scale() < 2.0**60
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled_step()
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert optimizer.nonfinite_steps == 0
