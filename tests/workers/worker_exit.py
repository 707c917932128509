"""Ending worker processes without the interpreter's teardown."""

import os
import sys


def exit_now(code: int = 0) -> None:
    """Flush output and exit at once: the results are written, and C++ threads (gloo, compile workers)
    destroyed during interpreter teardown can abort an otherwise finished worker
    ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
