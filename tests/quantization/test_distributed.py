"""Lion8bit/Lion4bit across processes: DDP via Accelerate, FSDP2, DCP state dicts, resharding a
checkpoint 2 -> 1 -> 2 ranks, and torch's ZeroRedundancyOptimizer. 2 CPU processes on gloo each,
launched with torchrun; the workers are in tests/workers/quant_*.py and report as JSON."""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORKERS

pytestmark = pytest.mark.multiprocess  # each case launches torchrun; `slow` marks those over 30 s


def report_of(tmp_path, name):
    return json.loads((tmp_path / name).read_text())


@pytest.mark.parametrize("bits", [8, 4])
def test_fsdp2_shards_state_and_matches_unsharded_replica(torchrun, tmp_path, bits):
    torchrun(WORKERS / "quant_fsdp.py", "train", bits, tmp_path / "report.json")
    report = report_of(tmp_path, "report.json")
    assert report["world"] == 2
    # Quantized iff 2-D and >= 4096 elements in the WHOLE parameter: (96, 64) is 3072 per shard.
    shapes = [tuple(s) for s in report["shapes"]]
    assert dict(zip(shapes, report["quantized"])) == {
        (96, 64): True, (96,): False, (40, 96): False, (40,): False, (100, 40): False, (100,): False,
        (1000, 100): True, (5, 1000): True, (5,): False,
    }
    assert report["state_is_dtensor"] and report["sharded_values_are_dtensors"]
    assert 0.45 <= report["local_state_fraction"] <= 0.55  # ~1/world of the state on each rank
    assert report["max_diff_vs_replica"] == 0.0  # bit-identical to the unsharded optimizer
    assert report["full_state_equals_replica"]  # gathered codes == the unsharded codes
    assert report["sharded_round_trip"] and report["full_round_trip"]
    assert report["continues_identically"]


@pytest.mark.slow
def test_dcp_checkpoint_reshards_2_to_1_to_2_and_continues_exactly(torchrun, tmp_path):
    worker = WORKERS / "quant_fsdp.py"
    torchrun(worker, "reshard", "save", tmp_path, tmp_path / "save.json", nproc=2)
    saved = report_of(tmp_path, "save.json")
    assert saved["optimizer_bytes_per_param_on_disk"] <= 1.1  # quantized on disk, not fp32
    assert saved["quantized_dtypes"] == ["torch.float32", "torch.uint8"]
    torchrun(worker, "reshard", "load1", tmp_path, tmp_path / "load1.json", nproc=1)
    loaded = report_of(tmp_path, "load1.json")
    assert loaded["world"] == 1 and loaded["state_equals_saved"]
    assert loaded["differ_after_resume"] <= 0.01 < loaded["differ_without_momentum"], loaded
    torchrun(worker, "reshard", "resume2", tmp_path, tmp_path / "resume2.json", nproc=2)
    assert report_of(tmp_path, "resume2.json")["equals_uninterrupted"]


@pytest.mark.parametrize("bits", [8, 4])
def test_accelerate_ddp_keeps_ranks_identical(torchrun, tmp_path, bits):
    torchrun(WORKERS / "quant_ddp.py", "accelerate", bits, tmp_path / "report.json")
    report = report_of(tmp_path, "report.json")
    assert report["distributed_type"] == "DistributedType.MULTI_CPU" and report["world"] == 2
    assert report["quantized"] == [True, False, True, False, False, False]
    assert report["weights_rank_difference"] == 0.0 and report["state_rank_difference"] == 0.0
    # Against one process on the same global batches: equal up to where fp32 rounding of the
    # averaged gradient flips a sign (then an element moves by 2*lr).
    assert report["fraction_differing_vs_single_process"] <= 0.01
    assert report["max_difference_vs_single_process"] <= 0.02


@pytest.mark.parametrize("bits", [8, 4])
def test_zero_redundancy_optimizer_wraps_quantized_lion(torchrun, tmp_path, bits):
    torchrun(WORKERS / "quant_ddp.py", "zero", bits, tmp_path, tmp_path / "report.json")
    report = report_of(tmp_path, "report.json")
    assert report["zero_vs_plain"] == 0.0
    assert report["local_state_params"] < report["total_params"]  # partitioned
    assert report["saved_code_dtypes"] == ["torch.float32", "torch.uint8"]
    assert report["restored_continues_identically"] and report["rank_difference"] == 0.0
