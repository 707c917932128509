"""Checkpoints of the sign-vote mode: one optimizer state per rank, since the momenta differ.

`save_rank_state(optimizer, directory)` writes ``vote_rank{r}_of{W}.pt`` on every rank;
`load_rank_state(optimizer, directory)` reads this rank's file back, so a run resumed at the same
world size continues bit for bit. At another world size (or when this rank's file is missing) every
rank loads rank 0's file instead, with a warning: all ranks restart from rank 0's momenta, which
then drift apart again as each follows its own gradients.

Trainer (Hugging Face) and Lightning save only rank 0's optimizer state, so their checkpoints
resume that way too; call these functions beside them to keep every rank's momenta.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .optimizer import SignVoteLion

FILE_PATTERN = re.compile(r"vote_rank(\d+)_of(\d+)\.pt")


def rank_state_file(directory: str | Path, rank: int, world_size: int) -> Path:
    return Path(directory) / f"vote_rank{rank}_of{world_size}.pt"


def _unwrapped(optimizer) -> SignVoteLion:
    """`optimizer`, or the SignVoteLion inside a wrapper (Accelerate's AcceleratedOptimizer, Lightning's)."""
    inner = optimizer
    while not isinstance(inner, SignVoteLion) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, SignVoteLion):
        raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} (expected a SignVoteLion or a wrapper of one)")
    return inner


def save_rank_state(optimizer, directory: str | Path) -> Path:
    """Write this rank's optimizer state to `directory` (call on every rank); returns the file."""
    optimizer = _unwrapped(optimizer)
    path = rank_state_file(directory, *optimizer.rank_and_world_size())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer.state_dict(), path)
    return path


def load_rank_state(optimizer, directory: str | Path) -> Path:
    """Load this rank's state from `directory` (call on every rank): its own file when the world
    size matches, else rank 0's of the run saved there (a warning says so); returns the file read."""
    optimizer = _unwrapped(optimizer)
    rank, world_size = optimizer.rank_and_world_size()
    path = rank_state_file(directory, rank, world_size)
    if not path.exists():
        saved = sorted(int(m.group(2)) for f in Path(directory).glob("vote_rank0_of*.pt") if (m := FILE_PATTERN.fullmatch(f.name)))
        if not saved:
            raise FileNotFoundError(f"no vote_rank*_of*.pt in {directory} (written by save_rank_state)")
        if len(saved) > 1:
            raise ValueError(f"Invalid directory: {directory} holds states of runs at {saved} ranks; keep one")
        path = rank_state_file(directory, 0, saved[0])
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return path
