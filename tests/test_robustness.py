"""Robustness (issue 13): NaN/inf gradients, foreign or damaged checkpoints, float64 and complex
parameters, many dtypes under fused=True, wrong argument types, load hooks, foreach memory.

Each test reproduces a way the optimizers used to fail silently; torch's own optimizers are the
reference where they define a behaviour (exception types, dtype of the arithmetic, complex numbers).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import lion_integrations.fused as fused_module
import lion_integrations.rule as rule_module
from lion_integrations import Lion, Lion4bit, Lion8bit

PATHS = {
    "for-loop": dict(fused=False, foreach=False),
    "foreach": dict(fused=False, foreach=True),
    "fused": dict(fused=True),
}
QUANTIZED = {8: Lion8bit, 4: Lion4bit}


@pytest.fixture(autouse=True)
def fuse_small_tensors(monkeypatch):
    """The problems here are small: let every tensor of 2+ elements take the compiled kernel."""
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 2)


def snapshot(optimizer):
    """(parameters, state) of `optimizer`, copied."""
    params = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]
    return params, copy.deepcopy({i: dict(s) for i, s in enumerate(optimizer.state.values())})


def assert_unchanged(before, optimizer):
    params, state = snapshot(optimizer)
    for expected, actual in zip(before[0], params):
        assert torch.equal(expected, actual)
    assert state.keys() == before[1].keys()
    for index, entry in state.items():
        for key, value in entry.items():
            assert torch.equal(value, before[1][index][key]), key


# --- 1. A NaN/inf gradient element must not freeze weights silently. -------------------------------


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


def test_user_compiled_step_masks_nonfinite_gradients():
    # Inside a compiled training step the policy is the rule's own (no host read can break the graph).
    param = nn.Parameter(torch.ones(8))
    optimizer = Lion([param], lr=0.1)
    param.grad = torch.tensor([1.0, float("nan"), -1.0, float("inf"), 1.0, 1.0, 1.0, 1.0])
    torch.compile(optimizer.step)()
    assert torch.isfinite(optimizer.state[param]["exp_avg"]).all()
    torch.testing.assert_close(param.detach(), torch.tensor([0.9, 1.0, 1.1, 1.0, 0.9, 0.9, 0.9, 0.9]))


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


# --- 2. Foreign optimizer state must be refused, naming what differs. -------------------------------


def trained_model_and(optimizer_factory, steps=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    optimizer = optimizer_factory(model.parameters())
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 8)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("cls", [Lion, Lion8bit])
@pytest.mark.parametrize(
    "source, message",
    [
        (torch.optim.AdamW, r"state of param 0 holds 'exp_avg_sq', 'step', which Lion(8bit)? does not keep "
                            r"\(it looks like Adam/AdamW state\)"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
         r"state of param 0 has no momentum: it lacks 'exp_avg'; it holds 'momentum_buffer', which Lion(8bit)? "
         r"does not keep \(it looks like SGD state\)"),
    ],
)
def test_foreign_optimizer_state_is_refused_naming_what_differs(cls, source, message):
    model, foreign = trained_model_and(source)
    optimizer = cls(model.parameters(), lr=1e-4)
    model(torch.randn(5, 8)).sum().backward()
    optimizer.step()
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(foreign.state_dict())
    assert_unchanged(before, optimizer)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99) and optimizer.param_groups[0]["lr"] == 1e-4


def test_state_of_another_model_is_refused_naming_the_shapes():
    _, source = trained_model_and(lambda p: Lion(p, lr=1e-3))
    other = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 4))
    optimizer = Lion(other.named_parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 0 \('0.weight'\) has shape \(16, 8\), the parameter has shape \(12, 8\)"):
        optimizer.load_state_dict(source.state_dict())


@pytest.mark.parametrize("cls", [Lion, Lion8bit])
def test_nan_momentum_in_a_checkpoint_is_refused_naming_the_parameter(cls):
    model, optimizer = trained_model_and(lambda p: cls(p, lr=1e-3))
    saved = copy.deepcopy(optimizer.state_dict())
    saved["state"][1]["exp_avg"][3] = float("nan")
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 1 holds NaN or inf values"):
        optimizer.load_state_dict(saved)
    assert_unchanged(before, optimizer)
    saved["state"][1]["exp_avg"][3] = float("inf")
    with pytest.raises(ValueError, match=r"'exp_avg' of param 1 holds NaN or inf values"):
        optimizer.load_state_dict(saved)


def test_load_pre_hooks_run_before_the_check_and_post_hooks_after_once_each():
    # A pre-hook can adapt a foreign checkpoint: here it keeps AdamW's first moment as Lion's momentum.
    model, adamw = trained_model_and(torch.optim.AdamW)
    optimizer = Lion(model.parameters(), lr=1e-4)
    calls = []

    def keep_first_moment(opt, state_dict):
        calls.append("pre")
        state = {k: {"exp_avg": v["exp_avg"]} for k, v in state_dict["state"].items()}
        groups = [{"params": g["params"], "lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
                  for g in state_dict["param_groups"]]
        return {"state": state, "param_groups": groups}

    def after(opt):
        calls.append(("post", len(opt.state)))

    optimizer.register_load_state_dict_pre_hook(keep_first_moment)
    optimizer.register_load_state_dict_post_hook(after)
    optimizer.load_state_dict(adamw.state_dict())
    assert calls == ["pre", ("post", 4)]
    for p in model.parameters():
        assert torch.equal(optimizer.state[p]["exp_avg"], adamw.state[p]["exp_avg"])
    assert optimizer.param_groups[0]["nonfinite"] == "skip"  # a key the checkpoint lacks keeps its value


# --- 3. float64 parameters are computed in float64; complex parameters as real pairs. ---------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cls", [Lion, Lion8bit])
def test_float64_parameters_are_computed_in_float64(cls, path):
    torch.manual_seed(0)
    start = torch.randn(32, 64, dtype=torch.float64)
    param = nn.Parameter(start.clone())
    extra = dict(min_quantized_size=0) if cls is Lion8bit else {}
    param.grad = torch.randn_like(param)
    cls([param], lr=0.0, **PATHS[path], **extra).step()
    assert torch.equal(param.detach(), start)  # lr 0 changes nothing (float32 arithmetic rounded it)

    if cls is Lion:  # against a float64 reference of the rule
        optimizer = Lion([param], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, **PATHS[path])
        reference, exp_avg = start.clone(), torch.zeros_like(start)
        generator = torch.Generator().manual_seed(1)
        for _ in range(50):
            grad = torch.randn(start.shape, generator=generator, dtype=torch.float64)
            param.grad = grad
            optimizer.step()
            update = (0.9 * exp_avg + 0.1 * grad).sign()
            reference = reference * (1 - 1e-3 * 0.1) - 1e-3 * update
            exp_avg = 0.99 * exp_avg + 0.01 * grad
        assert optimizer.state[param]["exp_avg"].dtype == torch.float64
        torch.testing.assert_close(param.detach(), reference, rtol=0, atol=1e-13)


@pytest.mark.parametrize("path", list(PATHS))
def test_complex_parameters_step_as_real_pairs_like_torch_optimizers(path):
    # torch's optimizers step view_as_real(param) with view_as_real(grad): so does Lion.
    param = nn.Parameter(torch.tensor([1 + 2j, -3 + 4j]))
    real_twin = nn.Parameter(torch.view_as_real(param.detach()).clone())
    optimizer = Lion([param], lr=0.1, **PATHS[path])
    twin_optimizer = Lion([real_twin], lr=0.1, **PATHS[path])
    for step, grad in enumerate((torch.tensor([0.5 - 1j, -2 + 0.25j]), torch.tensor([-1 + 1j, 1 - 3j]))):
        param.grad, real_twin.grad = grad, torch.view_as_real(grad).clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer.step()
        twin_optimizer.step()
        if step == 0:  # each part moves by lr against its gradient's sign
            torch.testing.assert_close(param.detach(), torch.tensor([0.9 + 2.1j, -2.9 + 3.9j]))
        torch.testing.assert_close(torch.view_as_real(param.detach()), real_twin.detach())
    assert optimizer.state[param]["exp_avg"].dtype == torch.complex64
    # Adam takes the same view: the imaginary parts move too.
    adam_param = nn.Parameter(torch.tensor([1 + 2j, -3 + 4j]))
    adam_param.grad = torch.tensor([0.5 - 1j, -2 + 0.25j])
    torch.optim.Adam([adam_param], lr=0.1).step()
    assert (adam_param.detach().imag != torch.tensor([2.0, 4.0])).all()


def test_complex_parameters_keep_full_precision_momentum_in_lion8bit():
    param = nn.Parameter(torch.randn(64, 64, dtype=torch.complex64))
    optimizer = Lion8bit([param], lr=0.1, min_quantized_size=0)
    param.grad = torch.randn_like(param)
    optimizer.step()
    assert optimizer.state[param]["exp_avg"].dtype == torch.complex64
    with pytest.raises(ValueError, match=r"Invalid momentum_dtype: torch.bfloat16 for a complex parameter"):
        complex_param = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
        complex_param.grad = torch.ones_like(complex_param)
        Lion([complex_param], momentum_dtype=torch.bfloat16).step()


# --- 4. fused=True never fails on a recompile limit. -----------------------------------------------


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
    monkeypatch.setattr(fused_module, "_warned_limits", set())
    params = [nn.Parameter(torch.randn(shape, dtype=torch.float16)) for shape in ((64, 256), (1, 256), (1, 512))]
    references = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, references):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):
        with pytest.warns(RuntimeWarning, match="recompile limit"):
            Lion8bit(params, min_quantized_size=0, fused=True).step()
    Lion8bit(references, min_quantized_size=0, fused=False).step()
    for p, q in zip(params, references):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-2)  # one fp16 ulp where the compiled lerp rounds otherwise


# --- 5. Values of the wrong type are refused at once, as torch refuses them. -----------------------


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr="1e-3"), dict(weight_decay="0.1"), dict(betas=["0.9", "0.99"]), dict(betas=0.9)],
)
@pytest.mark.parametrize("cls", [Lion, Lion8bit])
def test_wrong_types_raise_the_error_torch_raises(cls, kwargs):
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(Exception) as torch_error:
        torch.optim.AdamW(params, **kwargs)
    with pytest.raises(torch_error.type, match="Invalid (lr|weight_decay|betas)"):
        cls(params, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=True), dict(weight_decay=False), dict(betas=(True, 0.99))])
def test_booleans_are_not_numbers(kwargs):
    with pytest.raises(TypeError, match="Invalid (lr|weight_decay|betas)"):
        Lion([nn.Parameter(torch.zeros(2))], **kwargs)


# --- 6. The foreach path keeps its temporaries within about one tensor's worth. --------------------


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
