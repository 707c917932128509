"""SignVoteLion across processes (torchrun, gloo, CPU): hand-computed votes at 2 and 4 ranks, ranks
bit-identical, DDP's gradient all-reduce skipped (the collectives counted), gradient accumulation
voted once per step, per-rank checkpoints resumed bit for bit, and another world size's checkpoint
re-seeding every rank from rank 0 (tests/workers/vote_ddp.py); and from Hugging Face's Trainer,
Lightning and Accelerate (tests/workers/vote_frameworks.py, slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lion_integrations.vote import SignVoteLion, save_rank_state
from tests.helpers import WORKERS

# The all-gather that SignVoteLion issues (all_gather_single from torch 2.13 on).
ALL_GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
pytestmark = pytest.mark.multiprocess


def one_rank_checkpoint(directory: Path) -> Path:
    """A checkpoint of a 1-process run of the worker's model (its shapes), one step in."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = SignVoteLion(model.parameters(), lr=1e-2)
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    return save_rank_state(optimizer, directory)


def check_report(path: Path, world: int) -> list[dict]:
    ranks = json.loads(path.read_text())["ranks"]
    assert [r["world"] for r in ranks] == [world] * world
    for report in ranks:
        for case, result in report["hand_computed"].items():
            assert result == {"steps_match": [True, True], "one_voter_matches": True, "untouched": True}, case
        # 4 steps of 2 micro-batches (the first under no_sync): one all-gather of ballots per step,
        # plus the first step's check that the ranks start equal; no all-reduce at all.
        assert report["collectives"] == [ALL_GATHER] * 5
        assert report["params_rank_difference"] == 0.0
        assert report["momenta_rank_difference"] > 0.0  # each rank's momentum follows its own gradients
        assert report["grads_are_local"] and report["grads_rank_difference"] > 0.0
        assert report["hook_kept_every_gradient"]
        # One header byte per parameter tensor (6) and the packed signs (in whole 8-byte words), sent to
        # W-1 ranks; DDP's fp32 all-reduce sends 2(W-1)/W x 4 bytes per element.
        params = report["param_count"]
        assert report["bytes_per_step"] == (world - 1) * (6 + 8 * math.ceil(params / 64))
        assert report["ddp_bytes_per_step"] == pytest.approx(2 * (world - 1) / world * 4 * params)
        assert report["ddp_bytes_per_step"] / report["bytes_per_step"] >= 0.95 * 64 / world  # header: 2% here
        assert report["resume_warnings"] == []
        assert report["resumed_params_equal"] and report["resumed_momenta_equal"]
    return ranks


def check_reseeded(ranks: list[dict], saved_world: int) -> None:
    for rank, report in enumerate(ranks):
        assert report["reseed_file"] == f"vote_rank0_of{saved_world}.pt"
        assert report["reseeded_equals_rank0_file"] and report["reseeded_momenta_rank_difference"] == 0.0
        [message] = report["reseed_warnings"]
        assert f"rank {rank} of {len(ranks)}" in message and f"rank 0 of a {saved_world}-rank run" in message


def test_two_ranks_vote_skip_the_allreduce_and_resume(torchrun, tmp_path):
    one_rank_checkpoint(tmp_path / "one")
    torchrun(WORKERS / "vote_ddp.py", tmp_path / "report.json", tmp_path / "two", tmp_path / "one", nproc=2)
    check_reseeded(check_report(tmp_path / "report.json", 2), saved_world=1)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["vote_rank0_of2.pt", "vote_rank1_of2.pt"]


@pytest.mark.slow
def test_four_ranks_vote_and_reseed_from_a_two_rank_checkpoint(torchrun, tmp_path):
    torchrun(WORKERS / "vote_ddp.py", tmp_path / "report2.json", tmp_path / "two", nproc=2)
    torchrun(WORKERS / "vote_ddp.py", tmp_path / "report4.json", tmp_path / "four", tmp_path / "two", nproc=4)
    check_reseeded(check_report(tmp_path / "report4.json", 4), saved_world=2)


@pytest.mark.slow
@pytest.mark.parametrize("framework, steps", [("hf", 5), ("lightning", 5), ("accelerate", 4)])
def test_frameworks_vote_with_local_gradients(torchrun, tmp_path, framework, steps):
    """Trainer with optim="lion_vote" (the optimizer registers the hook on Trainer's DDP model itself),
    Lightning's DDPStrategy(ddp_comm_hook=keep_local_gradients), Accelerate with
    skip_gradient_allreduce after prepare; gradient accumulation 2."""
    torchrun(WORKERS / "vote_frameworks.py", framework, tmp_path / "report.json", tmp_path, nproc=2)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["optimizer"] == "SignVoteLion" and report["steps"] == steps
    assert report["ballot_gathers"] == steps + 1  # one vote per optimizer step, and the first step's check
    assert report["kept_local"] and report["warnings"] == []
    assert report["params_rank_difference"] == 0.0 < report["momenta_rank_difference"]
    if framework == "hf":
        assert report["vote"] == "average" and report["ddp"] == "DistributedDataParallel"
