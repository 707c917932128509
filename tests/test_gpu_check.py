"""scripts/gpu_check.py (`make gpu-check`): says there is no GPU and exits 0 on a CPU-only machine."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return runpy.run_path(str(SCRIPT), run_name="gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only machine's answer")
def test_without_a_gpu_it_says_so_and_exits_zero():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no GPU here" in result.stdout and "nothing to check" in result.stdout


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CPU build of torch's answer")
def test_gpus_that_torch_cannot_use_are_an_error(gpu_check, capsys, monkeypatch):
    monkeypatch.setitem(gpu_check["main"].__globals__, "gpus_listed_by_nvidia_smi", lambda: 2)
    assert gpu_check["main"]([]) == 2
    assert "built without CUDA" in capsys.readouterr().out


def test_steps_pass_fail_and_time_out(gpu_check):
    run_step = gpu_check["run_step"]
    passed, output = run_step("ok", [sys.executable, "-c", "print('fine')"], 60)
    assert passed.status == "passed" and "fine" in output
    failed, _ = run_step("bad", [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"], 60)
    assert failed.status == "FAILED" and failed.detail == "exit 3: broken"
    late, _ = run_step("slow", [sys.executable, "-c", "import time; time.sleep(60)"], gpu_check["MIN_STEP_SECONDS"])
    assert late.status == "FAILED" and "timed out" in late.detail
    unrun, _ = run_step("no time", [sys.executable, "-c", "print('ran')"], gpu_check["MIN_STEP_SECONDS"] - 1)
    assert unrun.status == "FAILED" and unrun.detail == "not run: the time budget is spent"


def test_budget_caps_every_step(gpu_check):
    budget = gpu_check["Budget"](100)
    assert 99 < budget.limit(120) <= 100 and budget.limit(30) == 30
    assert gpu_check["Budget"](-1).limit(120) < 0
    assert gpu_check["BUDGET_SECONDS"] < 300


def test_summary_figures_come_from_the_benchmark_tables(gpu_check, tmp_path):
    report = tmp_path / "step_speed.md"
    report.write_text("# title\n\n| optimizer | step / memory floor | state bytes/param |\n|---|---|---|\n"
                      "| lion_integrations fused | 1.25x | 4.000 |\n| other | 2.00x | 8.000 |\n")
    assert gpu_check["table_row"](report.read_text(), "other") == {
        "optimizer": "other", "step / memory floor": "2.00x", "state bytes/param": "8.000"}
    assert gpu_check["speed_figures"](report, "lion_integrations fused", ["step / memory floor"]) == (
        "lion_integrations fused: step / memory floor 1.25x")
    assert gpu_check["pytest_summary"]("....\n===== 4 passed, 2 deselected in 3.1s =====\n") == "4 passed, 2 deselected in 3.1s"
    checks = [gpu_check["Check"]("CUDA-marked tests", "passed", 12.0, "4 passed"),
              gpu_check["Check"]("accelerate", "skipped", 0.0, "needs 2 GPUs")]
    table = gpu_check["summary_table"](checks)
    assert "CUDA-marked tests  passed" in table and "skipped" in table
