"""Cautious masking (``cautious=True``) on Lion, Lion8bit and Lion4bit: a hand-computed step, every
execution path agreeing (the AVX-512 kernel bit for bit with the eager quantized step), the kernel's
generated rule, and the adapters' ways of asking for it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lion_integrations.fused as fused_module
from lion_integrations import Lion, Lion4bit, Lion8bit
from lion_integrations.quantization import simd
from lion_integrations.quantization.kernel import step_quantized_param_
from lion_integrations.rule import LionCoefficients, cautious_step_size

PATHS = {
    "for-loop": dict(fused=False, foreach=False),
    "foreach": dict(fused=False, foreach=True),
    "fused": dict(fused=True),
    "default": {},  # fused=None: the AVX-512 kernel for quantized momenta, small tensors unfused
}
# Lion's fused path compiles the cautious kernel with Inductor: half a minute on 2 cores.
COMPILING = pytest.param("fused", marks=pytest.mark.slow)
needs_kernel = pytest.mark.skipif(simd.unavailable_reason() is not None, reason=f"{simd.unavailable_reason()}")


@pytest.fixture(autouse=True)
def fuse_small_tensors(monkeypatch):
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 2)


def hand_computed_steps():
    """lr=0.1, betas=(0.9, 0.99), wd=0.1, two steps of a 4-element parameter.

    Step 1 (m=0): directions sign(g) = [1, 1, 0, -1]; the zero gradient is masked: 3 of 4 kept,
    step size 0.1 * 4/3. m = 0.01 g = [0.005, 0.1, 0, -0.01].
    Step 2: c = 0.9 m + 0.1 g = [-0.1955, 0.04, 0, 0.041]: signs [-1, 1, 0, 1] against sign(g)
    [-1, -1, 0, 1]: elements 1 (disagrees) and 2 (zero) masked: 2 of 4 kept, step size 0.2.
    """
    decay = 1 - 0.1 * 0.1
    first = [1.0 * decay - 0.4 / 3, 0.0 * decay - 0.4 / 3, 2.0 * decay, -1.0 * decay + 0.4 / 3]
    second = [first[0] * decay + 0.2, first[1] * decay, first[2] * decay, first[3] * decay - 0.2]
    grads = [[0.5, 10.0, 0.0, -1.0], [-2.0, -0.5, 0.0, 0.5]]
    return grads, [first, second]


@pytest.mark.parametrize(
    "cls, path",
    [(Lion, "for-loop"), (Lion, "foreach"), pytest.param(Lion, "fused", marks=pytest.mark.slow),
     (Lion8bit, "for-loop"), (Lion8bit, "fused"), (Lion4bit, "for-loop"), (Lion4bit, "fused")],
)
def test_two_steps_match_hand_computation(cls, path):
    """The quantized classes' fused path is the AVX-512 kernel where the CPU has it (else compiled)."""
    grads, expected = hand_computed_steps()
    # A (4, 16) parameter whose first column is the hand-computed one; quantized from 64 elements.
    param = nn.Parameter(torch.tensor([1.0, 0.0, 2.0, -1.0]).repeat(16, 1).t().contiguous())
    options = dict(min_quantized_size=64, block_size=16) if cls is not Lion else {}
    optimizer = cls([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1, cautious=True, **PATHS[path], **options)
    for grad, values in zip(grads, expected):
        param.grad = torch.tensor(grad).repeat(16, 1).t().contiguous()
        optimizer.step()
        torch.testing.assert_close(param.detach()[:, 0], torch.tensor(values))
        assert torch.equal(param.detach(), param.detach()[:, :1].expand(4, 16))
    if cls is not Lion:
        assert "exp_avg_codes" in optimizer.state[param]


def run(cls, path, cautious=True, steps=30, **options):
    generator = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(64, 96), (40, 33), (17,), ()]]
    optimizer = cls(params, lr=1e-2, weight_decay=0.1, cautious=cautious, **PATHS[path], **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("path", ["foreach", COMPILING])
def test_lion_paths_agree(path):
    reference, _ = run(Lion, "for-loop")
    for expected, actual in zip(reference, run(Lion, path)[0]):
        torch.testing.assert_close(actual, expected)
    uncautious, _ = run(Lion, "for-loop", cautious=False)
    assert not torch.equal(uncautious[0], reference[0])


@needs_kernel
@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_quantized_kernel_equals_eager_bit_for_bit(cls, monkeypatch):
    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 1 << 16)  # small tensors: the unfused rule, no compile
    options = dict(min_quantized_size=1024, block_size=64)
    eager, eager_optimizer = run(cls, "for-loop", **options)
    kernel, kernel_optimizer = run(cls, "default", **options)
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
    assert simd.rule_statements(cautious=True) == [
        "__m512 t0 = lerp(m, g, update_weight);",
        "t0 = sign(t0);",
        "t0 = keep_agreeing(t0, g);",
        "t0 = scale(t0, step_size);",
        "p = scale(p, decay);",
        "p = _mm512_sub_ps(p, t0);",
        "m = lerp(m, g, momentum_weight);",
    ]
    assert "keep_agreeing(t0, g)" in simd.source_code()


def test_step_size_divides_by_the_kept_fraction_down_to_the_paper_clamp():
    assert cautious_step_size(0.1, 3, 4) == pytest.approx(0.4 / 3)
    assert cautious_step_size(0.1, 0, 10_000) == pytest.approx(100.0)  # kept fraction clamped at 1e-3
    assert cautious_step_size(0.1, 0, 0) == 0.1


def test_bad_cautious_is_a_type_error():
    with pytest.raises(TypeError, match="Invalid cautious: 1"):
        Lion([nn.Parameter(torch.zeros(2))], cautious=1)
    with pytest.raises(TypeError, match="Invalid cautious: 'true'"):
        Lion8bit([nn.Parameter(torch.zeros(2))], cautious="true")


def test_old_state_dicts_load_as_not_cautious():
    param = nn.Parameter(torch.zeros(3))
    optimizer = Lion([param], fused=False)
    state = optimizer.state_dict()
    del state["param_groups"][0]["cautious"]
    optimizer.load_state_dict(state)
    assert optimizer.param_groups[0]["cautious"] is False


def test_hugging_face_optim_args_and_lightning_kwargs_turn_it_on():
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    from transformers import TrainingArguments

    from lion_integrations.hf import lion_cls_and_kwargs, parse_optim_args
    from lion_integrations.lightning import configure_lion

    args = TrainingArguments(output_dir="unused", learning_rate=1e-4, report_to=[])
    for name in ("lion", "lion_q8", "lion_q4", "lion_vote"):
        _, kwargs = lion_cls_and_kwargs(name, args, parse_optim_args("cautious=true"))
        assert kwargs["cautious"] is True
    with pytest.raises(ValueError, match="expected true or false"):
        lion_cls_and_kwargs("lion", args, parse_optim_args("cautious=1"))
    module = nn.Linear(3, 2)
    assert configure_lion(module, cautious=True)["optimizer"].param_groups[0]["cautious"] is True


@pytest.mark.slow
@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_quantized_compiled_step_agrees_with_eager(cls, monkeypatch):
    """The torch.compile'd quantized step (CUDA, and CPUs without AVX-512) with the cautious rule."""
    monkeypatch.setattr(simd, "applies", lambda param, grad: False)
    options = dict(min_quantized_size=1024, block_size=64)
    eager, eager_optimizer = run(cls, "for-loop", steps=5, **options)
    compiled, compiled_optimizer = run(cls, "fused", steps=5, **options)
    for p, q in zip(eager, compiled):
        torch.testing.assert_close(q, p)
    assert "exp_avg_codes" in compiled_optimizer.state[compiled[0]]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_shards_count_the_whole_parameter(torchrun, tmp_path):
    """Under FSDP2 (2 ranks) the kept fraction is the whole parameter's: Lion and Lion8bit with
    cautious=True equal an unsharded replica bit for bit, although each shard keeps another fraction."""
    from pathlib import Path
    import json

    worker = Path(__file__).resolve().parent / "workers" / "cautious_fsdp.py"
    torchrun(worker, tmp_path / "report.json", nproc=2)
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("Lion", "Lion8bit"):
        assert report[name]["max_diff_vs_replica"] == 0.0, report
        assert report[name]["shard_fractions_differ"], report
    assert report["Lion8bit"]["quantized"]
