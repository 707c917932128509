"""Fixtures of the Lightning tests."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when pytest's own arguments are in sys.argv."""
    monkeypatch.setattr(sys, "argv", ["prog"])
