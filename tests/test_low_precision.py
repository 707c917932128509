"""bf16/fp16 parameters without lost updates: the options, Kahan summation (state ``kahan_comp``),
its state dicts and conversions. Stochastic rounding: test_stochastic_rounding.py."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from lion_integrations import Lion, Lion4bit, Lion8bit
from lion_integrations.state import COMPENSATION
from tests.helpers.low_precision import CLASSES, PATHS, assert_identical, make_params, options, run_steps, snapshot


# --- Options and their checks. -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_both_on_is_a_value_error_naming_both(cls):
    with pytest.raises(ValueError, match="kahan_sum=True with stochastic_rounding=True"):
        cls(make_params(), kahan_sum=True, stochastic_rounding=True)
    optimizer = cls(make_params()[:1], kahan_sum=True)
    with pytest.raises(ValueError, match="kahan_sum=True with stochastic_rounding=True"):
        optimizer.add_param_group({"params": make_params()[1:], "stochastic_rounding": True})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(kahan_sum="true"), TypeError, "Invalid kahan_sum: 'true' \\(expected True, False or None\\)"),
        (dict(kahan_sum=1), TypeError, "Invalid kahan_sum: 1"),
        (dict(stochastic_rounding=None), TypeError, "Invalid stochastic_rounding: None \\(expected True or False\\)"),
        (dict(generator=0), TypeError, "Invalid generator: 0"),
    ],
)
def test_bad_option_types(kwargs, error, message):
    with pytest.raises(error, match=message):
        Lion(make_params(), **kwargs)


def test_group_option_is_checked():
    optimizer = Lion(make_params()[:1])
    with pytest.raises(TypeError, match="Invalid stochastic_rounding: 'yes'"):
        optimizer.add_param_group({"params": make_params()[1:], "stochastic_rounding": "yes"})


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("name", ["kahan_sum", "stochastic_rounding"])
def test_asking_for_it_on_fp32_parameters_warns_and_keeps_no_buffer(cls, name):
    params = make_params(torch.float32)
    with pytest.warns(UserWarning, match=f"{name}=True does nothing for 3 parameter\\(s\\) of dtype float32"):
        optimizer = run_steps(cls, params, 2, **{name: True})
    assert all(COMPENSATION not in optimizer.state[p] for p in params)
    reference = run_steps(cls, make_params(torch.float32), 2)
    assert_identical(snapshot(optimizer), snapshot(reference))


def test_default_warns_for_nothing_and_keeps_buffers_for_low_precision_only():
    params = make_params(torch.bfloat16) + make_params(torch.float32, seed=1) + make_params(torch.float16, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = run_steps(Lion, params, 1, fused=False)
    for param in params:
        state = optimizer.state[param]
        if param.dtype == torch.float32:
            assert COMPENSATION not in state
        else:
            assert state[COMPENSATION].dtype == param.dtype and state[COMPENSATION].shape == param.shape
            assert state[COMPENSATION].abs().max() > 0


@pytest.mark.parametrize("cls", CLASSES)
def test_kahan_off_and_stochastic_rounding_keep_no_buffer(cls):
    for kwargs in (dict(kahan_sum=False), dict(stochastic_rounding=True)):
        params = make_params()
        optimizer = run_steps(cls, params, 1, **kwargs)
        assert all(COMPENSATION not in optimizer.state[p] for p in params)


# --- Kahan summation: the updates add up, on every path alike. -------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kahan_keeps_updates_below_half_a_spacing(dtype):
    """lr = 1e-4 is below half the spacing s of weights near 0.05 (bf16: s = 2**-12 = 2.4e-4): rounded
    to nearest, bf16 weights never move. With Kahan, weight + buffer follows the exact sum of updates:
    each step rounds only the buffer (|buffer| <= s/2), by half the buffer's spacing."""
    start = torch.full((64,), 0.05).to(dtype)
    steps, lr = 100, 1e-4
    results = {}
    for kahan in (False, True):
        param = nn.Parameter(start.clone())
        optimizer = Lion([param], lr=lr, kahan_sum=kahan, fused=False)
        for _ in range(steps):
            param.grad = torch.ones_like(param)
            optimizer.step()
        weight = param.detach().float()
        if kahan:
            weight = weight + optimizer.state[param][COMPENSATION].float()
        results[kahan] = weight
    expected = start.float() - steps * lr
    spacing, eps = 2.0**-5 * torch.finfo(dtype).eps, torch.finfo(dtype).eps  # 0.05 lies in [2**-5, 2**-4)
    # per step: the buffer's rounding (fp16's buffer is subnormal: spacing tiny * eps), and fp32's
    buffer_rounding = max(spacing * eps / 4, torch.finfo(dtype).tiny * eps / 2)
    bound = steps * (buffer_rounding + 0.05 * 2.0**-24)
    if dtype == torch.bfloat16:
        assert torch.equal(results[False], start.float())  # every update lost
    assert (results[False] - expected).abs().max() > 10 * bound
    assert (results[True] - expected).abs().max() <= bound


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kahan_paths_agree_bit_for_bit(cls, dtype):
    """Weights, buffers and momenta equal on every path. betas=(0, 0) makes the momentum the gradient
    exactly on each path: Inductor's lerp may round an ulp away from eager torch's otherwise (as
    without Kahan), and that would be the only difference."""
    paths = PATHS if cls is Lion else {"for-loop": PATHS["for-loop"], "fused": PATHS["fused"]}
    results = {
        name: snapshot(run_steps(cls, make_params(dtype), 12, betas=(0.0, 0.0), kahan_sum=True, **path))
        for name, path in paths.items()
    }
    reference = results.pop("for-loop")
    assert any(key == COMPENSATION for key, _ in reference)
    for result in results.values():
        assert_identical(result, reference)


def test_kahan_for_loop_and_foreach_agree_bit_for_bit_with_momentum():
    results = [snapshot(run_steps(Lion, make_params(), 12, kahan_sum=True, **PATHS[name])) for name in ("for-loop", "foreach")]
    assert_identical(*results)


class Regression(nn.Module):
    """70k-parameter MLP regressing a fixed random teacher (x 10), as in the issue's report."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))

    def forward(self, x):
        return self.net(x)


def regression_loss(dtype, steps=200, **kwargs):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    model = Regression().to(dtype)
    optimizer = Lion(model.parameters(), lr=1e-4, fused=False, **kwargs)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(128, 16, generator=data)
        with torch.no_grad():
            y = teacher(x) * 10
        loss = nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return nn.functional.mse_loss(model(x.to(dtype)).float(), teacher(x) * 10).item()


def test_bf16_training_with_kahan_or_stochastic_rounding_tracks_fp32():
    """Bound: bf16 weights with Kahan (or stochastic rounding) end within 5% of the fp32-weights run's
    validation loss (measured: about 1%, the bf16 forward pass's own noise). Rounded to nearest,
    they end far above it (measured: about 3.8x), which shows the bound can fail."""
    fp32 = regression_loss(torch.float32)
    kahan = regression_loss(torch.bfloat16)
    stochastic = regression_loss(torch.bfloat16, stochastic_rounding=True)
    nearest = regression_loss(torch.bfloat16, kahan_sum=False)
    assert abs(kahan - fp32) <= 0.05 * fp32, (kahan, fp32)
    assert abs(stochastic - fp32) <= 0.05 * fp32, (stochastic, fp32)
    assert nearest > 1.5 * fp32, (nearest, fp32)


# --- State dicts: save, resume, convert. --------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("path", ["for-loop", "fused"])
def test_kahan_state_dict_round_trip_resumes_bit_exact(cls, path):
    params = make_params()
    optimizer = run_steps(cls, params, 3, kahan_sum=True, **PATHS[path])
    saved_state, saved_params = copy.deepcopy(optimizer.state_dict()), [p.detach().clone() for p in params]
    assert all(COMPENSATION in entry for entry in saved_state["state"].values())
    grads = [torch.randn(p.shape).to(p.dtype) for p in params for _ in range(3)]

    def continue_(optimizer, params):
        for step in range(3):
            for index, param in enumerate(params):
                param.grad = grads[3 * index + step]
            optimizer.step()
        return snapshot(optimizer)

    expected = continue_(optimizer, params)
    resumed_params = [nn.Parameter(p.clone()) for p in saved_params]
    resumed = cls(resumed_params, lr=1e-4, weight_decay=0.1, **options(cls, kahan_sum=True, **PATHS[path]))
    resumed.load_state_dict(saved_state)
    assert_identical(continue_(resumed, resumed_params), expected)


@pytest.mark.parametrize("cls", CLASSES)
def test_checkpoint_without_the_buffer_loads_with_a_zero_buffer(cls):
    params = make_params()
    saved = copy.deepcopy(run_steps(cls, params, 2, kahan_sum=False).state_dict())
    assert all(COMPENSATION not in entry for entry in saved["state"].values())
    copies = [[nn.Parameter(p.detach().clone()) for p in params] for _ in range(2)]
    loaded = cls(copies[0], lr=1e-4, **options(cls, kahan_sum=True, fused=False))
    loaded.load_state_dict(saved)
    reference = cls(copies[1], lr=1e-4, **options(cls, kahan_sum=True, fused=False))
    reference.load_state_dict(saved)
    for param in copies[1]:
        reference.state[param][COMPENSATION] = torch.zeros_like(param)
    for optimizer, group_params in ((loaded, copies[0]), (reference, copies[1])):
        for param in group_params:
            param.grad = torch.ones_like(param)
        optimizer.step()
    assert_identical(snapshot(loaded), snapshot(reference))


@pytest.mark.parametrize(("source", "target"), [(Lion, Lion8bit), (Lion8bit, Lion), (Lion, Lion4bit), (Lion4bit, Lion)])
def test_converting_between_classes_keeps_the_buffer(source, target):
    params = make_params()
    saved = run_steps(source, params, 3, kahan_sum=True).state_dict()
    converted = target(params, lr=1e-4, **options(target, kahan_sum=True))
    converted.load_state_dict(saved)
    for index, param in enumerate(params):
        buffer = converted.state[param][COMPENSATION]
        assert buffer.dtype == param.dtype and torch.equal(buffer, saved["state"][index][COMPENSATION])


def test_a_buffer_of_the_wrong_shape_is_rejected_naming_the_parameter():
    params = make_params()
    saved = copy.deepcopy(run_steps(Lion8bit, params, 1, kahan_sum=True).state_dict())
    saved["state"][1][COMPENSATION] = torch.zeros(3)
    for cls in (Lion, Lion8bit):
        optimizer = cls(params, **options(cls))
        with pytest.raises(ValueError, match="'kahan_comp' of param 1 has shape \\(3,\\), the parameter has shape \\(40, 100\\)"):
            optimizer.load_state_dict(saved)


def test_state_dicts_from_before_these_options_load():
    params = make_params()
    saved = copy.deepcopy(run_steps(Lion, params, 1).state_dict())
    for group in saved["param_groups"]:
        del group["kahan_sum"], group["stochastic_rounding"]
    optimizer = Lion(params)
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["kahan_sum"] is None and optimizer.param_groups[0]["stochastic_rounding"] is False
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    assert COMPENSATION in optimizer.state[params[0]]


def test_turning_kahan_off_drops_the_buffer():
    params = make_params()
    optimizer = run_steps(Lion, params, 1, kahan_sum=True, fused=False)
    optimizer.param_groups[0]["kahan_sum"] = False
    optimizer.step()
    assert all(COMPENSATION not in optimizer.state[p] for p in params)


def test_sign_vote_lion_keeps_a_kahan_buffer_and_refuses_stochastic_rounding():
    """One process votes alone: SignVoteLion is Lion, Kahan buffer included, bit for bit."""
    from lion_integrations.vote import SignVoteLion

    results = []
    for cls in (Lion, SignVoteLion):
        params = make_params()
        optimizer = run_steps(cls, params, 4, **({"fused": False} if cls is Lion else {}))
        results.append(snapshot(optimizer))
    assert any(key == COMPENSATION for key, _ in results[1])
    assert_identical(*results)
    with pytest.raises(ValueError, match="stochastic_rounding=True for SignVoteLion"):
        SignVoteLion([{"params": make_params(), "stochastic_rounding": True}])
