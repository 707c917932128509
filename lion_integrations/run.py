"""Run a training script with our Trainer optimizer names registered, for scripts that do not import us.

    python -m lion_integrations.run SCRIPT.py [script args...]      e.g. --optim lion
    python -m lion_integrations.run -m PACKAGE.MODULE [args...]
    torchrun --nproc-per-node 2 -m lion_integrations.run SCRIPT.py --optim lion ...
    accelerate launch --multi_gpu --num_processes 2 -m lion_integrations.run SCRIPT.py --optim lion ...

On a machine without GPUs, a Trainer script runs data-parallel only with --use_cpu (or
ACCELERATE_USE_CPU=1); without it each process trains alone. `accelerate launch --cpu` starts one
process whatever --num_processes says (unless given an mpirun hostfile).

Registers ``optim="lion"`` (see `lion_integrations.hf`), then runs the script as ``__main__`` with
``sys.argv`` and ``sys.path[0]`` set as ``python SCRIPT.py`` would set them.
"""

from __future__ import annotations

import atexit
import gc
import os
import runpy
import sys
from typing import Any

from .hf import register

USAGE = "usage: python -m lion_integrations.run (SCRIPT.py | -m MODULE) [ARGS...]"


def main(argv: list[str] | None = None) -> bool:
    """Register the Hugging Face names, then run the script or module given in `argv` as __main__;
    returns whether it ran as one rank of a distributed run (a process group, or a launcher's
    WORLD_SIZE > 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    exit_on_usage_error(argv)
    register()
    script_globals = run_as_main(argv)
    # The script's globals (trainer, DDP model, loaders) are freed after its process group is destroyed
    # (freed before it, their destructors can hang) and before the interpreter's teardown.
    distributed = close_process_group() or os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")
    script_globals.clear()
    gc.collect()
    return distributed


def exit_on_usage_error(argv: list[str]) -> None:
    """Print the usage and exit for ``-h``/``--help`` (status 0), for no script or module, or for a
    script that does not exist (status 2, as ``python`` exits)."""
    if not argv or argv[0] in ("-h", "--help") or argv == ["-m"]:
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        print(USAGE, file=stream)
        print(__doc__, file=stream)
        raise SystemExit(0 if stream is sys.stdout else 2)
    if argv[0] != "-m" and not os.path.exists(argv[0]):
        print(f"lion_integrations.run: can't open file {argv[0]!r}: no such file", file=sys.stderr)
        raise SystemExit(2)


def run_as_main(argv: list[str]) -> dict[str, Any]:
    """Run ``SCRIPT.py ARGS...`` or ``-m MODULE ARGS...`` as __main__, with ``sys.argv`` and
    ``sys.path[0]`` set as ``python`` would set them; returns the globals it left."""
    if argv[0] == "-m":
        module, args = argv[1], argv[2:]
        sys.argv = [module, *args]  # run_module replaces argv[0] with the module's path
        return runpy.run_module(module, run_name="__main__", alter_sys=True)
    script, args = argv[0], argv[1:]
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    return runpy.run_path(script, run_name="__main__")


def close_process_group() -> bool:
    """Destroy a process group the script left open (joining its threads before anything it served
    is freed); returns whether there was one."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
        return True
    return False


def exit_without_teardown() -> None:
    """End a finished distributed run as the interpreter would, minus the teardown of C++ objects:
    there, torch's threads can abort a process whose work is done ("terminate called without an
    active exception"), and the launcher then reports the run as failed."""
    atexit._run_exitfuncs()  # the script's and the libraries' exit handlers (logging, trackers) still run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if main():
        exit_without_teardown()
