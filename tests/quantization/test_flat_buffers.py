"""Lion8bit/Lion4bit on flat buffers: 1-D tensors that a wrapper (DeepSpeed ZeRO) puts into
param_groups in place of the parameters the optimizer was given. In-process, without DeepSpeed: the
groups are rewritten here as ZeRO rewrites them (tests/deepspeed/test_zero.py runs ZeRO itself). And
torch's FSDP1, whose 1-D shards of flattened parameters keep full precision, with a warning."""

from __future__ import annotations

import copy
import json
import warnings

import pytest

from tests.helpers import WORKERS
import torch

from lion_integrations import Lion4bit, Lion8bit

OPTIONS = dict(lr=1e-3, weight_decay=0.1, min_quantized_size=256, fused=False)


def flattened(cls, params, **options):
    """`cls` built on `params`, then handed one flat fp32 copy of them, as ZeRO stage 1/2 does."""
    optimizer = cls(params, **{**OPTIONS, **options})
    flat = torch.cat([p.detach().reshape(-1) for p in params]).clone().requires_grad_(True)
    optimizer.param_groups[0]["params"] = [flat]
    return optimizer, flat


def model_params():
    torch.manual_seed(0)
    return [torch.randn(32, 40, requires_grad=True), torch.randn(32, requires_grad=True)]


@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_flat_buffer_is_quantized_along_its_length_like_one_row(cls):
    optimizer, flat = flattened(cls, model_params())
    # The same values as a given (1, N) parameter: the codec's layout of one row, so the same codes.
    row = flat.detach().clone().view(1, -1).requires_grad_(True)
    reference = cls([row], **OPTIONS)
    for step in range(5):
        grad = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(step))
        flat.grad, row.grad = grad.clone(), grad.view(1, -1).clone()
        optimizer.step()
        reference.step()
    assert optimizer.is_flat_buffer(flat) and optimizer.is_quantized(flat, optimizer.param_groups[0])
    state, expected = optimizer.state[flat], reference.state[row]
    assert set(state) == {"exp_avg_codes", "exp_avg_absmax"}
    assert torch.equal(state["exp_avg_codes"], expected["exp_avg_codes"])
    assert torch.equal(state["exp_avg_absmax"], expected["exp_avg_absmax"])
    assert torch.equal(flat.detach(), row.detach().view(-1))
    state_bytes = sum(v.numel() * v.element_size() for v in state.values())
    assert state_bytes / flat.numel() < {8: 1.03, 4: 0.53}[cls.bits]


def test_given_1d_parameters_keep_full_precision():
    params = model_params()
    optimizer = Lion8bit(params, **OPTIONS)
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    weight, bias = params
    assert not optimizer.is_flat_buffer(bias) and set(optimizer.state[bias]) == {"exp_avg"}
    assert set(optimizer.state[weight]) == {"exp_avg_codes", "exp_avg_absmax"}


def test_short_flat_buffer_warns_and_keeps_full_precision():
    optimizer, flat = flattened(Lion8bit, [torch.randn(100, requires_grad=True)], min_quantized_size=4096)
    flat.grad = torch.ones_like(flat)
    with pytest.warns(RuntimeWarning, match=r"flat buffer of 100 elements.*min_quantized_size=4096"):
        optimizer.step()
    assert set(optimizer.state[flat]) == {"exp_avg"}


@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_flat_buffer_state_dict_round_trip_continues_identically(cls):
    optimizer, flat = flattened(cls, model_params())
    flat.grad = torch.randn_like(flat)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    resumed, resumed_flat = flattened(cls, model_params())
    resumed_flat.data.copy_(flat.detach())
    resumed.load_state_dict(saved)
    # Loading keeps the buffer a flat buffer (torch's load_state_dict re-enters __setstate__).
    assert resumed.is_flat_buffer(resumed_flat)
    assert torch.equal(resumed.state[resumed_flat]["exp_avg_codes"], optimizer.state[flat]["exp_avg_codes"])
    for step in range(3):
        grad = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(step))
        flat.grad, resumed_flat.grad = grad.clone(), grad.clone()
        optimizer.step()
        resumed.step()
    assert torch.equal(flat.detach(), resumed_flat.detach())


def test_flat_state_does_not_load_into_a_partition_of_another_size():
    optimizer, flat = flattened(Lion8bit, model_params())
    flat.grad = torch.randn_like(flat)
    optimizer.step()
    smaller, _ = flattened(Lion8bit, [torch.randn(32, 20, requires_grad=True)])
    with pytest.raises(ValueError, match="Invalid state_dict"):
        smaller.load_state_dict(optimizer.state_dict())


def test_copied_optimizer_treats_its_groups_as_given():
    params = model_params()
    optimizer = Lion8bit(params, **OPTIONS)
    copied = copy.deepcopy(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not any(copied.is_flat_buffer(p) for p in copied.param_groups[0]["params"])


def test_fsdp1_flattened_parameters_warn_that_they_keep_full_precision():
    """torch's FSDP1 marks what it flattens with `_fsdp_flattened`; its 1-D shards reach the optimizer."""
    shard = torch.randn(5000, requires_grad=True)
    shard._fsdp_flattened = True
    optimizer = Lion4bit([shard], **OPTIONS)
    shard.grad = torch.ones_like(shard)
    with pytest.warns(RuntimeWarning, match=r"flattened by FSDP1.*full-precision momentum.*fully_shard"):
        optimizer.step()
    assert set(optimizer.state[shard]) == {"exp_avg"}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp1_keeps_full_precision_and_says_so(torchrun, tmp_path):
    torchrun(WORKERS / "fsdp1_flattened.py", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(len(shape) == 1 for shape in report["shapes"])  # 1-D shards of the flattened parameters
    assert report["state_keys"] == ["exp_avg"]
    assert any("flattened by FSDP1" in message for message in report["warnings"]), report["warnings"]
