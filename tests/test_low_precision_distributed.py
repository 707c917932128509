"""The Kahan buffer (``kahan_comp``) of bf16 weights under FSDP2 and torch.distributed.checkpoint:
sharded like its parameter, saved and loaded with DCP's state dicts for a bit-exact resume,
recreated as zeros when a checkpoint lacks it, and resharded 2 -> 1 -> 2 ranks. 2 CPU processes on
gloo, launched with torchrun; the worker is tests/workers/kahan_fsdp.py and reports as JSON."""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORKERS

pytestmark = pytest.mark.multiprocess  # each case launches torchrun; `slow` marks those over 20 s
WORKER = WORKERS / "kahan_fsdp.py"


def report_of(path):
    return json.loads(path.read_text())


def placed_like_params(rows) -> bool:
    """Every buffer a bf16 DTensor on its parameter's mesh, with its placements and local shape."""
    return all(
        row["dtensor"] and row["same_mesh"] and row["same_placements"] and row["same_local_shape"]
        and row["dtype"] == "torch.bfloat16"
        for row in rows
    )


@pytest.mark.parametrize("name", ["Lion", "Lion8bit"])
def test_fsdp2_shards_kahan_buffer_and_dcp_resumes_bit_exact(torchrun, tmp_path, name):
    torchrun(WORKER, "train", name, tmp_path, tmp_path / "report.json")
    report = report_of(tmp_path / "report.json")
    assert len(report["placement"]) == 6  # every parameter, weights and biases, keeps a buffer
    assert placed_like_params(report["placement"])
    assert report["quantized"] == ([True, False, True, False, False, False] if name == "Lion8bit" else [False] * 6)
    assert report["buffers_nonzero"] > 0  # the buffers hold dropped updates: resuming needs them
    assert placed_like_params(report["loaded_placement"])
    assert report["resume_identical"]  # weights, momentum and buffers, bit for bit
    # A checkpoint without buffers loads; they are recreated as zeros at the next step, placed like
    # the parameters, and the run then differs from the uninterrupted one.
    assert all(count in (None, 0) for count in report["buffers_after_load_without"])
    assert placed_like_params(report["placement_without_buffers"])
    assert not report["resume_without_buffers_identical"]


@pytest.mark.slow  # three torchrun launches, ~25 s
def test_dcp_checkpoint_with_kahan_buffers_reshards_2_to_1_to_2_exactly(torchrun, tmp_path):
    torchrun(WORKER, "reshard", "save", tmp_path, tmp_path / "save.json", nproc=2)
    torchrun(WORKER, "reshard", "load1", tmp_path, tmp_path / "load1.json", nproc=1)
    loaded = report_of(tmp_path / "load1.json")
    assert loaded["world"] == 1 and loaded["buffers_saved"] == 6
    assert loaded["state_equals_saved"]  # codes, absmax, exp_avg and kahan_comp, gathered
    torchrun(WORKER, "reshard", "resume2", tmp_path, tmp_path / "resume2.json", nproc=2)
    resumed = report_of(tmp_path / "resume2.json")
    assert placed_like_params(resumed["placement"])
    assert resumed["equals_uninterrupted"]
