"""Lion8bit/Lion4bit state dicts: saved quantized, round trips that continue exactly (also across a
killed process), and all-or-nothing loading with errors that name the parameter."""

from __future__ import annotations

import copy
import io
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from lion_integrations import Lion4bit, Lion8bit
from tests.helpers.optimizer import through_checkpoint
from tests.helpers.quantization import CLASSES, drive, make_problem, run_steps

pytestmark = pytest.mark.usefixtures("one_thread")


def saved_bytes(state_dict) -> int:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return len(buffer.getvalue())


@pytest.mark.parametrize("bits, bound", [(8, 1.1), (4, 0.6)])
def test_checkpoint_is_saved_quantized(bits, bound):
    params = [nn.Parameter(torch.randn(1024, 1024)), nn.Parameter(torch.randn(1024))]
    optimizer = CLASSES[bits](params)
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    state_dict = optimizer.state_dict()
    assert state_dict["state"][0]["exp_avg_codes"].dtype == torch.uint8
    assert saved_bytes(state_dict) / sum(p.numel() for p in params) <= bound


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("fused", [False, True])
def test_state_dict_round_trip_then_continue_equals_uninterrupted(bits, fused):
    cls = CLASSES[bits]
    uninterrupted, _ = run_steps(cls, steps=12, fused=fused)
    params, optimizer = run_steps(cls, steps=6, fused=fused)
    resumed_params, groups, saved_state = through_checkpoint(params, optimizer, make_problem)
    resumed = cls(groups, lr=1e-3, weight_decay=0.1, min_quantized_size=1000, fused=fused)
    resumed.load_state_dict(saved_state)
    assert resumed.param_groups[1]["block_size"] == 64
    drive(resumed, resumed_params, 12, first=6)
    for expected, actual in zip(uninterrupted, resumed_params):
        assert torch.equal(expected, actual)


def quantized_snapshot(optimizer):
    return copy.deepcopy(optimizer.state_dict())


def assert_same_state(before, after):
    assert before["param_groups"] == after["param_groups"]
    assert before["state"].keys() == after["state"].keys()
    for key, entry in before["state"].items():
        assert entry.keys() == after["state"][key].keys()
        for name, value in entry.items():
            assert torch.equal(value, after["state"][key][name])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: [g.update(block_size=128) for g in sd["param_groups"]],
         r"param 0 was saved with bits=8, block_size=128; this Lion8bit uses bits=8, block_size=256"),
        (lambda sd: [g.update(bits=4) for g in sd["param_groups"]], r"param 0 was saved with bits=4"),
        (lambda sd: sd["state"][1].update(exp_avg_codes=sd["state"][1]["exp_avg_codes"][:-1]),
         r"param 1 \(shape \(48, 130\)\) has 'exp_avg_codes' of shape \(47, 130\)"),
        (lambda sd: sd["state"][0].update(exp_avg_absmax=sd["state"][0]["exp_avg_absmax"][:, :0]),
         r"param 0 \(shape \(64, 96\)\) .* 'exp_avg_absmax' of shape \(64, 0\); bits=8, block_size=256 need"),
        (lambda sd: sd["state"][0].update(exp_avg_codes=sd["state"][0]["exp_avg_codes"].float()),
         r"param 0 has 'exp_avg_codes' of dtype torch.float32"),
        (lambda sd: [g.pop("bits") for g in sd["param_groups"]], r"param 0 has quantized momentum whose param group gives bits=None"),
        (lambda sd: sd["state"][0]["exp_avg_absmax"].view(-1)[3].fill_(float("nan")),
         r"param 0 has 'exp_avg_absmax' values that are negative, inf or NaN"),
        (lambda sd: sd["state"][2].update(exp_avg=torch.zeros(10)), r"'exp_avg' of param 2 has shape \(10,\)"),
        (lambda sd: sd["state"][0].pop("exp_avg_codes"), r"state of param 0 has no momentum"),
        (lambda sd: sd["param_groups"][0].update(lr=-1.0), r"Invalid lr: -1.0"),
    ],
)
def test_bad_checkpoints_raise_naming_the_param_and_change_nothing(mutate, message):
    _, source = run_steps(Lion8bit, steps=2)
    _, target = run_steps(Lion8bit, steps=3, seed=5)
    saved = copy.deepcopy(source.state_dict())
    mutate(saved)
    before = quantized_snapshot(target)
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(saved)
    assert_same_state(before, quantized_snapshot(target))


def test_4bit_checkpoint_into_8bit_raises():
    _, source = run_steps(Lion4bit, steps=1)
    _, target = run_steps(Lion8bit, steps=1)
    before = quantized_snapshot(target)
    with pytest.raises(ValueError, match=r"param 0 was saved with bits=4, block_size=256; this Lion8bit uses bits=8"):
        target.load_state_dict(source.state_dict())
    assert_same_state(before, quantized_snapshot(target))


KILL_WORKER = r"""
import os, signal, sys, torch
from torch import nn
from lion_integrations import Lion8bit
torch.set_num_threads(1)
mode, path, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 4))
optimizer = Lion8bit(model.parameters(), lr=1e-3, weight_decay=0.1, min_quantized_size=1024)
start = 0
if mode == "resume":
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"]); optimizer.load_state_dict(checkpoint["optimizer"])
    start = checkpoint["step"]
for step in range(start, 40):
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randn(16, 32, generator=generator)
    loss = model(inputs).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    if mode == "killed" and step + 1 == kill_at:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}, path)
    if mode == "killed" and step + 1 == kill_at + 3:
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-run, after the checkpoint
torch.save([p.detach() for p in model.parameters()], path + ".final")
"""


def test_save_kill_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(KILL_WORKER)
    run = lambda *args: subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
    reference = run("reference", tmp_path / "reference.pt", 0)
    assert reference.returncode == 0, reference.stderr
    killed = run("killed", tmp_path / "checkpoint.pt", 15)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "checkpoint.pt.final").exists()
    resumed = run("resume", tmp_path / "checkpoint.pt", 0)
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(tmp_path / "reference.pt.final", weights_only=True)
    actual = torch.load(tmp_path / "checkpoint.pt.final", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, actual))
