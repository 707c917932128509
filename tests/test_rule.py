"""The update rule itself, checked against the paper rather than one path against another (every
path runs the same `rule.lion_update_`, so their agreement cannot catch a wrong rule): a two-step
hand computation, and tests/reference.py (Algorithm 2 in float64, independent of the package) over
30 steps on every execution path of Lion, Lion8bit and Lion4bit, with weight decay, three param
groups of different lr, betas and weight decay, maximize=True, and a parameter without a gradient
on every other step.

Tolerances, from fp32 rounding (the package computes in fp32 whatever the storage):
- Parameters, per step: p*decay - lr*sign(c) rounds a few times (the decay factor, the product, the
  difference), each at most 2**-24 ~ 6e-8 of |p| + lr, so one step is within ~2e-7 * (|p| + lr).
  We allow STEP_RTOL = 1e-6 of |p| + lr per step (5x margin), and `steps` times that over an
  independent run of `steps` steps, where the errors add up.
- Momentum, per step: lerp(m, g, 1-b2) rounds within a few ulp of |m| + |g|: STEP_RTOL of that.
- A sign decision whose |c| is within rounding of zero (a tie) may go either way in fp32; there the
  element may move by 2*lr differently. Ties are rare (asserted), and bounded by 2*lr each.
- Quantized momentum: the codec stores the new momentum to within `codec.max_abs_error` of its
  block's absmax (the round-trip bound tested in quantization/test_codec.py); each step is compared
  with the reference run from the momentum the optimizer decodes, so the codec's error does not
  compound, and the parameter update, computed from that decoded momentum, stays at fp32 accuracy.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lion_integrations.rule as rule_module
from lion_integrations import Lion
from lion_integrations.quantization import codec
from tests.helpers.optimizer import PATHS
from tests.helpers.quantization import CLASSES, decoded_momentum
from tests.reference import reference_lion_step

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")

STEPS = 30
STEP_RTOL = 1e-6
TIE_RTOL = 1e-6  # |c| below this fraction of |b1*m| + |(1-b1)*g| counts as a tie
DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
GROUP_SETTINGS = [
    dict(lr=3e-3, weight_decay=0.5),
    dict(betas=(0.95, 0.98), weight_decay=0.0),
    dict(lr=1e-2, betas=(0.5, 0.9), maximize=True),
]
# Lion: a scalar, odd sizes, a 3-D and a non-contiguous parameter. Quantized variants: each group
# holds quantized parameters (2+ dims, >= 1000 elements; the last is non-contiguous) and small ones
# that keep full-precision momentum.
LION_SHAPES = [[(17, 9), (9,), ()], [(3, 5, 7), (64, 33)], [(1,), "transposed"]]
QUANTIZED_SHAPES = [[(64, 96), (9,)], [(48, 130), (3, 5)], [(24, 4, 50), (300,), "transposed"]]


def make_groups(shapes, seed=0):
    """(params in order, param groups with GROUP_SETTINGS, {id(param): its hyperparameters})."""
    generator = torch.Generator().manual_seed(seed)
    params, groups, settings = [], [], {}
    for group_shapes, group_settings in zip(shapes, GROUP_SETTINGS):
        group_params = [
            nn.Parameter(torch.randn(72, 64, generator=generator).t() if shape == "transposed"
                         else torch.randn(shape, generator=generator))
            for shape in group_shapes
        ]
        params += group_params
        groups.append({"params": group_params, **group_settings})
        hyperparameters = {"maximize": False, **DEFAULTS, **group_settings}
        settings.update({id(param): hyperparameters for param in group_params})
    return params, groups, settings


def gradients(params, step, generator):
    """Random gradients; the second parameter has none on odd steps (it must be left alone)."""
    grads = [torch.randn(param.shape, generator=generator) for param in params]
    return [None if (index == 1 and step % 2) else grad for index, grad in enumerate(grads)]


def momentum(optimizer, param, bits):
    """The momentum `optimizer` will use for `param` (decoded when quantized), in float64."""
    if not optimizer.state.get(param):
        return torch.zeros(param.shape, dtype=torch.float64)
    return decoded_momentum(optimizer, param, bits).double()


def momentum_bound(optimizer, param, bits):
    """Per element, how far the stored momentum may be from the exact one: the codec's round-trip
    bound of its block when quantized, else 0 (fp32 rounding is allowed for separately)."""
    state = optimizer.state[param]
    if "exp_avg_codes" not in state:
        return torch.zeros(param.shape, dtype=torch.float64)
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    _, cols = codec.rows_and_cols(param.shape)
    per_block = codec.max_abs_error(state["exp_avg_absmax"], bits).double()
    return per_block.repeat_interleave(group["block_size"], dim=1)[:, :cols].reshape(param.shape)


def assert_follows_algorithm_2_step_by_step(optimizer, params, settings, bits=8, steps=STEPS):
    """Step `optimizer` and, before each step, run the reference from the optimizer's own parameters
    and (decoded) momentum; compare both after the step. Sign ties must be rare."""
    generator = torch.Generator().manual_seed(1)
    ties = checked = 0
    for step in range(steps):
        before = {param: (param.detach().double(), momentum(optimizer, param, bits)) for param in params}
        for param, grad in zip(params, gradients(params, step, generator)):
            param.grad = grad
        optimizer.step()
        for param in params:
            old_param, old_momentum = before[param]
            if param.grad is None:
                assert torch.equal(param.detach().double(), old_param)
                assert torch.equal(momentum(optimizer, param, bits), old_momentum)
                continue
            hyper = settings[id(param)]
            expected_param, expected_momentum, c = reference_lion_step(old_param, param.grad, old_momentum, **hyper)
            beta1 = hyper["betas"][0]
            grad = param.grad.double()
            tie = c.abs() <= TIE_RTOL * (beta1 * old_momentum.abs() + (1 - beta1) * grad.abs())
            allowed = STEP_RTOL * (old_param.abs() + hyper["lr"]) + tie * 2 * hyper["lr"]
            error = (param.detach().double() - expected_param).abs()
            assert torch.all(error <= allowed), (
                f"step {step}, param {tuple(param.shape)}: max error {error.max().item():.3g}"
            )
            momentum_error = (momentum(optimizer, param, bits) - expected_momentum).abs()
            momentum_allowed = STEP_RTOL * (old_momentum.abs() + grad.abs()) + momentum_bound(optimizer, param, bits) * 1.0001
            assert torch.all(momentum_error <= momentum_allowed), (
                f"step {step}, momentum of {tuple(param.shape)}: max error {momentum_error.max().item():.3g}"
            )
            ties += int(tie.sum())
            checked += tie.numel()
    assert checked > 0 and ties <= 1e-4 * checked


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


def test_reference_is_algorithm_2():
    """The reference itself, on the hand-computed case above, and with maximize."""
    param, grad, exp_avg = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.5, 10.0, 0.0]), torch.zeros(3)
    new_param, new_momentum, c = reference_lion_step(param, grad, exp_avg, lr=0.1, betas=(0.9, 0.99), weight_decay=0.1)
    assert new_param.dtype == new_momentum.dtype == torch.float64
    torch.testing.assert_close(new_param, torch.tensor([0.89, -0.1, 1.98], dtype=torch.float64))
    torch.testing.assert_close(new_momentum, torch.tensor([0.005, 0.1, 0.0], dtype=torch.float64))
    torch.testing.assert_close(c, torch.tensor([0.05, 1.0, 0.0], dtype=torch.float64))
    ascended, ascended_momentum, _ = reference_lion_step(param, grad, exp_avg, lr=0.1, betas=(0.9, 0.99),
                                                         weight_decay=0.0, maximize=True)
    torch.testing.assert_close(ascended, torch.tensor([1.1, 0.1, 2.0], dtype=torch.float64))
    torch.testing.assert_close(ascended_momentum, torch.tensor([-0.005, -0.1, 0.0], dtype=torch.float64))
    assert torch.equal(param, torch.tensor([1.0, 0.0, 2.0])) and torch.equal(exp_avg, torch.zeros(3))


@pytest.mark.parametrize("path", list(PATHS))
def test_lion_follows_algorithm_2_step_by_step(path):
    params, groups, settings = make_groups(LION_SHAPES)
    optimizer = Lion(groups, **DEFAULTS, **PATHS[path])
    assert_follows_algorithm_2_step_by_step(optimizer, params, settings)
    expected = "fused" if path.startswith("fused") else path
    assert all(optimizer.execution_path(group, torch.device("cpu")) == expected for group in optimizer.param_groups)


@pytest.mark.parametrize("path", list(PATHS))
def test_lion_follows_an_independent_float64_run(path):
    """Lion and the reference each run 30 steps on their own from the same start. The parameters'
    fp32 rounding adds up to at most STEPS * STEP_RTOL * (|p| + lr), except on elements where a sign
    decision was a near tie at some step (there the fp32 and float64 momenta, which differ by their
    accumulated rounding, may decide differently). The momentum is an average of the gradients: its
    rounding stays within STEPS * STEP_RTOL of the largest gradient."""
    params, groups, settings = make_groups(LION_SHAPES)
    start = [param.detach().clone() for param in params]
    optimizer = Lion(groups, **DEFAULTS, **PATHS[path])
    reference = {param: (param.detach().double(), torch.zeros(param.shape, dtype=torch.float64)) for param in params}
    near_tie = {param: torch.zeros(param.shape, dtype=torch.bool) for param in params}
    largest_grad = dict.fromkeys(params, 0.0)
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        for param, grad in zip(params, gradients(params, step, generator)):
            param.grad = grad
        optimizer.step()
        for param in params:
            if param.grad is None:
                continue
            hyper = settings[id(param)]
            old_param, old_momentum = reference[param]
            new_param, new_momentum, c = reference_lion_step(old_param, param.grad, old_momentum, **hyper)
            reference[param] = (new_param, new_momentum)
            grad = param.grad.double().abs()
            scale = hyper["betas"][0] * old_momentum.abs() + (1 - hyper["betas"][0]) * grad
            near_tie[param] |= c.abs() <= 1e-4 * scale  # 100x the momentum's accumulated rounding
            largest_grad[param] = max(largest_grad[param], grad.max().item())
    elements = sum(param.numel() for param in params)
    assert sum(int(mask.sum()) for mask in near_tie.values()) <= 0.01 * elements
    for param in params:
        expected_param, expected_momentum = reference[param]
        lr = settings[id(param)]["lr"]
        allowed = STEPS * STEP_RTOL * (expected_param.abs() + lr) + near_tie[param] * 2 * lr * STEPS
        assert torch.all((param.detach().double() - expected_param).abs() <= allowed), tuple(param.shape)
        torch.testing.assert_close(optimizer.state[param]["exp_avg"].double(), expected_momentum,
                                   rtol=0, atol=STEPS * STEP_RTOL * largest_grad[param])
    # Every parameter moved far beyond the tolerance (a step moves an element by about lr).
    assert all((param.detach() - before).abs().max() > 100 * STEPS * STEP_RTOL for param, before in zip(params, start))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("path", list(PATHS))
def test_quantized_lion_follows_algorithm_2_from_its_decoded_momentum(bits, path):
    params, groups, settings = make_groups(QUANTIZED_SHAPES)
    groups[1]["block_size"] = 64
    optimizer = CLASSES[bits](groups, **DEFAULTS, min_quantized_size=1000, **PATHS[path])
    assert_follows_algorithm_2_step_by_step(optimizer, params, settings, bits=bits)
    quantized = ["exp_avg_codes" in optimizer.state[param] for param in params]
    assert quantized == [True, False, True, False, True, False, True]


def test_foreach_steps_in_chunks_of_one_tensors_worth(monkeypatch):
    monkeypatch.setattr(rule_module, "FOREACH_CHUNK_NUMEL", 1000)
    sizes = []
    real_lerp = torch._foreach_lerp

    def spy(tensors, *args, **kwargs):
        sizes.append(sum(t.numel() for t in tensors))
        return real_lerp(tensors, *args, **kwargs)

    monkeypatch.setattr(rule_module.FOREACH_OPS, "lerp", spy)
    params = [nn.Parameter(torch.randn(300)) for _ in range(10)] + [nn.Parameter(torch.randn(40, 40))]
    references = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, references):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    Lion(params, lr=0.1, fused=False, foreach=True).step()
    Lion(references, lr=0.1, fused=False, foreach=False).step()
    assert sum(sizes) == sum(p.numel() for p in params) and max(sizes) <= 1600 and len(sizes) > 1
    for p, q in zip(params, references):
        torch.testing.assert_close(p, q)
