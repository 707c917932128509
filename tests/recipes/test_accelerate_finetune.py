"""recipes/accelerate_finetune.py under `accelerate launch`: save_state/load_state resume exactly."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO


@pytest.mark.multiprocess
@pytest.mark.slow
def test_accelerate_recipe_resumes_with_save_state_load_state(tmp_path):
    """recipes/accelerate_finetune.py under `accelerate launch` with 2 CPU processes: a run stopped
    and resumed from its save_state checkpoint ends with the uninterrupted run's weights."""
    import os
    import subprocess
    import sys

    import torch

    repo = REPO
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(repo / "recipes" / "accelerate_finetune.py"), "--steps", "30", "--save_every", "0",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}

    def run(*args, ok=True):
        result = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, cwd=repo, timeout=600)
        assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + (result.stderr if not ok else "")

    run("--output_dir", str(tmp_path / "full"))
    stopped = run("--output_dir", str(tmp_path / "resumed"), "--stop_after", "15")
    assert "stopping after step 15" in stopped
    optimizer_file = tmp_path / "resumed" / "checkpoint-15" / "optimizer.bin"
    saved = torch.load(optimizer_file, weights_only=True)
    assert any(entry.get("exp_avg_codes") is not None and entry["exp_avg_codes"].dtype == torch.uint8
               for entry in saved["state"].values())
    # A new run into a folder with another run's checkpoints would leave them for --resume latest: refused.
    refused = run("--output_dir", str(tmp_path / "resumed"), ok=False)
    assert "Invalid --output_dir" in refused and "checkpoint-15" in refused
    resumed = run("--output_dir", str(tmp_path / "resumed"), "--resume", "latest")
    assert "resumed from" in resumed and "at step 15" in resumed
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 30 and metrics["optimizer"] == "lion_q8"
    expected = torch.load(tmp_path / "full" / "final_weights.pt", weights_only=True)
    actual = torch.load(tmp_path / "resumed" / "final_weights.pt", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, actual))
