"""Helpers shared by several test modules, one module per package module under test."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKERS = REPO / "tests" / "workers"  # scripts launched by path (torchrun), not imported
