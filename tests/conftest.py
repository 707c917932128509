"""Shared test helpers: torch thread count, a private compile cache, and 2-process torchrun jobs on gloo."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Kernels compiled by this run (and its worker processes, which inherit the variable) go to a cache
# of its own: another job compiling into the shared default cache at the same time can remove
# Inductor's precompiled headers under a running compile.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lion-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

REPO = Path(__file__).resolve().parent.parent


def run_torchrun(script: Path | str, *args: str, nproc: int = 2, timeout: float = 600, env: dict | None = None):
    """Run `script` under `python -m torch.distributed.run` with `nproc` CPU processes; fail on error."""
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", f"--nproc-per-node={nproc}",
        str(script), *map(str, args),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if result.returncode != 0:
        pytest.fail(
            f"torchrun {script} failed with exit code {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture
def torchrun():
    return run_torchrun
