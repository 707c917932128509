"""Shared test fixtures: torch thread count, a private compile cache, 2-process torchrun jobs on gloo.

Fixtures that only some modules want (`one_thread`, `fuse_small_tensors`, `without_avx512_kernels`) are not autouse: a module
asks for them with ``pytestmark = pytest.mark.usefixtures(...)``. Helpers are in tests/helpers/.
"""

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

from tests.helpers import REPO

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Kernels compiled by this run (and its worker processes, which inherit the variable) go to a cache
# of its own: another job compiling into the shared default cache at the same time can remove
# Inductor's precompiled headers under a running compile.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lion-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test. The proxy models of discovery are tiny, and this machine is
    shared: with 2 OpenMP threads a busy neighbour turns each loop barrier of a compiled kernel into a
    scheduler time slice (20x slower on a busy 2-core box). The results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def turn_off_avx512_kernels(monkeypatch) -> None:
    """Make the fused path run torch.compile's step, as on CUDA and on CPUs without AVX-512."""
    from lion_integrations import avx512
    from lion_integrations.quantization import simd

    monkeypatch.setattr(avx512, "unavailable_reason", lambda: "turned off for this test")
    monkeypatch.setattr(simd, "unavailable_reason", lambda: "turned off for this test")


@pytest.fixture
def without_avx512_kernels(monkeypatch):
    turn_off_avx512_kernels(monkeypatch)


@pytest.fixture(autouse=True)
def fused_compiled_path(request, monkeypatch):
    """A test parametrized with ``path="fused-compiled"`` (tests/helpers' PATHS) runs the fused path
    with the AVX-512 kernels off; ``path="fused"`` takes them where this CPU has them."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("path") == "fused-compiled":
        turn_off_avx512_kernels(monkeypatch)


@pytest.fixture
def fuse_small_tensors(monkeypatch):
    """The problems here are small: let every tensor of 2+ elements take the compiled kernel."""
    import lion_integrations.fused as fused_module

    monkeypatch.setattr(fused_module, "MIN_FUSED_NUMEL", 2)
