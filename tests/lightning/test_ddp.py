"""Lightning DDP with 2 CPU processes: configure_lion and LionCallback keep the ranks identical."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

from tests.helpers import WORKERS  # noqa: E402


@pytest.mark.multiprocess
def test_ddp_two_processes_keep_ranks_identical(torchrun, tmp_path):
    report = tmp_path / "report.json"
    result = torchrun(WORKERS / "lightning_ddp.py", str(report), str(tmp_path))
    data = json.loads(report.read_text())
    assert data["world_size"] == 2, result.stdout
    for mode in ("configure_lion", "callback"):
        run = data[mode]
        assert run["optimizer"] == "Lion"
        assert run["max_rank_difference"] == 0.0 and run["max_momentum_rank_difference"] == 0.0
        assert run["changed_from_init"] > 0.0
        assert run["global_step"] == 6
        assert run["ranks_saw_different_batches"]  # each rank its own shard, gradients all-reduced
    assert data["configure_lion"]["lr"] == 0.0  # cosine schedule sized from estimated_stepping_batches ends at 0
    assert data["callback"]["lr"] == pytest.approx(1e-2 / 3)  # AdamW's lr / ratio (epoch-interval StepLR)
