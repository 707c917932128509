"""Ending worker processes without the interpreter's teardown."""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist


def exit_now(code: int = 0) -> None:
    """Flush output and exit at once: the results are written, and C++ threads (gloo, compile workers)
    destroyed during interpreter teardown can abort an otherwise finished worker
    ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def write_report_on_rank0(report_path, report: dict) -> None:
    """Rank 0 writes `report` as JSON to `report_path`; every rank then waits for it (a barrier)."""
    if dist.get_rank() == 0:
        Path(report_path).write_text(json.dumps(report))
    dist.barrier()
