"""`make gpu-check`: every CUDA code path of the project on this machine's GPUs, in one command.

    python scripts/gpu_check.py [--output-dir outputs/gpu_check] [--params 50000000]

On a machine with CUDA, in order (each in its own process, with a time limit):

1. the CUDA-marked tests, ``pytest -m cuda`` (the fused Triton kernels of Lion and Lion8bit/Lion4bit
   against the CPU for-loop path);
2. benchmarks/step_speed.py and benchmarks/quant_speed.py with ``--device cuda --quick``: the compiled
   Triton paths as ratios to the GPU's measured memory-bandwidth floor and to the peers on the same GPU;
3. every script in tests/gpu/ (GPU-only checks, e.g. Lightning's DeepSpeed and FSDP strategies);
4. with 2 or more GPUs, recipes/accelerate_finetune.py with Lion8bit on two processes under
   ``accelerate launch --multi_gpu``.

Then one summary table: each check, passed / FAILED / skipped, its time and its key figures; the exit
status is 1 when a check failed. The checks share a budget of `BUDGET_SECONDS` (under 5 minutes):
each step's time limit is its own or what is left of the budget, whichever is less, and a step with
no time left is reported FAILED, not run.

Without a GPU it says so and exits 0. When ``nvidia-smi`` sees GPUs but torch was built without CUDA
(e.g. the CPU wheel), it says that and exits 2: the check cannot run as asked.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Time limits of the steps, in seconds, and of all of them together.
LIMITS = {"tests": 120, "benchmark": 120, "gpu script": 120, "accelerate": 120}
BUDGET_SECONDS = 285
MIN_STEP_SECONDS = 15


@dataclass
class Check:
    name: str
    status: str  # "passed", "FAILED" or "skipped"
    seconds: float
    detail: str


def gpus_listed_by_nvidia_smi() -> int:
    """GPUs that ``nvidia-smi -L`` lists (0 without the tool or without GPUs)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0


class Budget:
    """What is left of `BUDGET_SECONDS` since this was made."""

    def __init__(self, seconds: float = BUDGET_SECONDS) -> None:
        self.deadline = time.perf_counter() + seconds

    def limit(self, step_limit: float) -> float:
        return min(step_limit, self.deadline - time.perf_counter())


def run_step(name: str, command: list[str], limit: float, env: dict | None = None) -> tuple[Check, str]:
    """Run `command` from the repository root with this checkout first on PYTHONPATH, for at most
    `limit` seconds (not at all below `MIN_STEP_SECONDS`); (its Check, its output)."""
    if limit < MIN_STEP_SECONDS:
        return Check(name, "FAILED", 0.0, "not run: the time budget is spent"), ""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    print(f"--- {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout if isinstance(expired.stdout, str) else (expired.stdout or b"").decode(errors="replace")
        print(output[-4000:], flush=True)
        return Check(name, "FAILED", time.perf_counter() - start, f"timed out after {limit:.0f} s"), output
    output = result.stdout + result.stderr
    print(output[-4000:], flush=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        last = next((line for line in reversed(output.splitlines()) if line.strip()), "")
        return Check(name, "FAILED", seconds, f"exit {result.returncode}: {last[:100]}"), output
    return Check(name, "passed", seconds, ""), output


def table_row(markdown: str, first_cell: str) -> dict[str, str]:
    """The cells of the row of a markdown table whose first cell is `first_cell`, by column title ({} if absent)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    if not lines:
        return {}
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return dict(zip(header, cells))
    return {}


def pytest_summary(output: str) -> str:
    """pytest's closing line ('3 passed, 1 skipped in 12.3s'), without its decoration; "" if none."""
    lines = [line.strip("= ").strip() for line in output.splitlines()
             if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)|no tests ran", line)]
    return lines[-1] if lines else ""


def speed_figures(report: Path, row: str, columns: list[str]) -> str:
    """`columns` of `row` in the benchmark's markdown report, as 'title value; ...'."""
    if not report.exists():
        return "no report"
    cells = table_row(report.read_text(), row)
    return f"{row}: " + "; ".join(f"{column} {cells.get(column, '?')}" for column in columns)


def run_checks(args, gpus: int, budget: Budget) -> list[Check]:
    python = sys.executable
    output_dir = args.output_dir.resolve()
    checks = []

    check, output = run_step("CUDA-marked tests", [python, "-m", "pytest", "-m", "cuda", "-q", "tests"], budget.limit(LIMITS["tests"]))
    summary = pytest_summary(output)
    if check.status == "passed" and "skipped" in summary and "passed" not in summary:
        check.status, check.detail = "FAILED", f"every CUDA test skipped: {summary}"
    else:
        check.detail = check.detail or summary
    checks.append(check)

    for stem, row, columns in (
        ("step_speed", "lion_integrations fused", ["step / memory floor", "step / best Lion peer", "step / best peer incl. AdamW"]),
        ("quant_speed", "Lion8bit (fused)", ["step / fp32 Lion floor", "step / fp32 Lion step", "bitsandbytes Lion8bit step / step"]),
    ):
        check, _ = run_step(f"{stem} benchmark (cuda)", [
            python, f"benchmarks/{stem}.py", "--quick", "--device", "cuda", "--params", str(args.params),
            "--output-dir", str(output_dir)], budget.limit(LIMITS["benchmark"]))
        if check.status == "passed":
            check.detail = speed_figures(output_dir / f"{stem}.md", row, columns)
        checks.append(check)

    scripts = sorted((REPO / "tests" / "gpu").glob("*.py")) if (REPO / "tests" / "gpu").is_dir() else []
    scripts = [script for script in scripts if script.name != "__init__.py"]
    if not scripts:
        checks.append(Check("tests/gpu scripts", "skipped", 0.0, "no tests/gpu/*.py in this checkout"))
    for script in scripts:
        check, _ = run_step(f"tests/gpu/{script.name}", [python, str(script)], budget.limit(LIMITS["gpu script"]))
        checks.append(check)

    if gpus < 2:
        checks.append(Check("accelerate, 2 processes, Lion8bit", "skipped", 0.0, f"needs 2 GPUs, this machine has {gpus}"))
    else:
        check, output = run_step("accelerate, 2 processes, Lion8bit", [
            python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/accelerate_finetune.py",
            "--optimizer", "lion_q8", "--steps", "60", "--output_dir", str(output_dir / "accelerate_finetune"),
            "--overwrite_output_dir"], budget.limit(LIMITS["accelerate"]))
        if check.status == "passed":
            check.detail = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")[:100]
        checks.append(check)
    return checks


def summary_table(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks)
    lines = [f"{'check':{width}}  {'result':7}  {'time s':>6}  detail", "-" * (width + 30)]
    lines += [f"{c.name:{width}}  {c.status:7}  {c.seconds:6.1f}  {c.detail}" for c in checks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/gpu_check"))
    parser.add_argument("--params", type=int, default=50_000_000, help="parameters in the speed benchmarks (default 50M)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        listed = gpus_listed_by_nvidia_smi()
        if listed and torch.version.cuda is None:
            print(f"gpu-check: nvidia-smi lists {listed} GPU(s), but torch {torch.__version__} was built without CUDA: "
                  "install a CUDA build of torch (pip install torch, from PyPI on Linux) to run the GPU checks.")
            return 2
        print(f"gpu-check: no GPU here (torch {torch.__version__}, torch.cuda.is_available() is False); nothing to check.")
        return 0
    gpus = torch.cuda.device_count()
    print(f"gpu-check: {gpus} GPU(s): {', '.join(torch.cuda.get_device_name(i) for i in range(gpus))}; "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    start = time.perf_counter()
    checks = run_checks(args, gpus, Budget())
    print(f"\ngpu-check summary ({time.perf_counter() - start:.0f} s):")
    print(summary_table(checks))
    return 1 if any(check.status == "FAILED" for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
