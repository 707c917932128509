"""Checkpoint conversion (lion_integrations.quantization.convert): Lion's full-precision momentum
into the codec and back, and bitsandbytes' Lion8bit state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lion_integrations import Lion, Lion8bit
from lion_integrations.quantization import codec
from lion_integrations.quantization.codec import dequantize_blockwise, quantize_blockwise
from tests.helpers.quantization import CLASSES, decoded_momentum, make_problem, run_steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits", [8, 4])
def test_lion_checkpoint_into_quantized_and_back(bits):
    cls = CLASSES[bits]
    params, lion = run_steps(Lion, steps=5)
    quantized = cls(make_problem(0)[1], lr=1e-3, min_quantized_size=1000)
    quantized.load_state_dict(lion.state_dict())
    for source, target in zip(params, quantized.param_groups[0]["params"] + quantized.param_groups[1]["params"]
                              + quantized.param_groups[2]["params"]):
        expected = lion.state[source]["exp_avg"]
        if "exp_avg_codes" in quantized.state[target]:
            actual = decoded_momentum(quantized, target, bits)
            group_block = next(g["block_size"] for g in quantized.param_groups if any(p is target for p in g["params"]))
            codes, absmax = quantize_blockwise(expected, bits, group_block)
            assert torch.equal(quantized.state[target]["exp_avg_codes"], codes)
            assert torch.equal(actual, dequantize_blockwise(codes, absmax, expected.shape, bits, group_block))
        else:
            assert torch.equal(quantized.state[target]["exp_avg"], expected)
    # And back: Lion decodes the quantized momentum exactly.
    back = Lion(make_problem(0)[1], lr=1e-3)
    back.load_state_dict(quantized.state_dict())
    for param_q, param_b in zip(
        [p for g in quantized.param_groups for p in g["params"]], [p for g in back.param_groups for p in g["params"]]
    ):
        assert torch.equal(back.state[param_b]["exp_avg"], decoded_momentum(quantized, param_q, bits))
    back.step()  # usable


def test_imports_bitsandbytes_lion8bit_state():
    bnb = pytest.importorskip("bitsandbytes")
    generator = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(96, 70, generator=generator))  # 6720 elements: 27 bnb blocks
    bias = nn.Parameter(torch.randn(70, generator=generator))
    theirs = bnb.optim.Lion8bit([weight, bias], lr=1e-3, betas=(0.9, 0.99))
    for _ in range(3):
        weight.grad, bias.grad = torch.randn(96, 70, generator=generator), torch.randn(70, generator=generator)
        theirs.step()
    state = theirs.state[weight]
    expected = (state["qmap1"][state["state1"].long()].reshape(-1)
                * state["absmax1"].repeat_interleave(256)[: weight.numel()]).reshape(weight.shape)
    for form in ("nested", "flat"):
        saved = theirs.state_dict()
        if form == "flat":  # older bitsandbytes and hand-made dicts keep the keys at the top level
            saved["state"] = {k: {**v, **v.pop("__bnb_optimizer_quant_state__", {})} for k, v in saved["state"].items()}
        ours = Lion8bit([nn.Parameter(weight.detach().clone()), nn.Parameter(bias.detach().clone())], lr=1e-3)
        ours.load_state_dict(saved)
        ours_weight, ours_bias = ours.param_groups[0]["params"]
        got = decoded_momentum(ours, ours_weight)
        bound = codec.max_abs_error(ours.state[ours_weight]["exp_avg_absmax"], 8).max()
        assert (got - expected).abs().max() <= bound * 1.0001
        assert torch.equal(ours.state[ours_bias]["exp_avg"], theirs.state[bias]["state1"])
        ours_weight.grad = torch.zeros_like(ours_weight)
        ours.step()
