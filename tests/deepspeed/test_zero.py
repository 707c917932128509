"""DeepSpeed ZeRO stages 1-3 with Lion, Lion8bit and Lion4bit as the client optimizer, 2 processes on
DeepSpeed's CPU accelerator (gloo) under torchrun; the worker is tests/workers/deepspeed_zero.py.

Each case measures the optimizer state on each rank's flat partitions (fails if it falls back to
full precision), that the ranks' weights are identical, and that a resume through DeepSpeed's own
checkpointing (engine.save_checkpoint / load_checkpoint) is bit-exact. ZeRO-2 with Lion8bit runs by
default; the rest of the table is `slow`.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORKERS

from lion_integrations import Lion, Lion4bit, Lion8bit
from lion_integrations.deepspeed import check_deepspeed_config

deepspeed = pytest.importorskip(
    "deepspeed", reason="DeepSpeed is not installed: pip install 'lion-integrations[deepspeed]'"
)

WORKER = WORKERS / "deepspeed_zero.py"
# Optimizer state per element of a rank's partition: 8-bit codes + one fp32 absmax per 256 elements.
BYTES_PER_PARAM = {"lion": (4.0, 4.0), "lion_q8": (1.0, 1.03), "lion_q4": (0.5, 0.53)}
# Share of weights that differ from one process stepping the same class on the same global
# batches. Lion: none. The quantized classes block ZeRO's flat partitions where one process blocks
# each parameter's rows, so their momenta round differently and a few update signs flip. Lion4bit
# rounds its codes stochastically, with draws keyed by the element's index in what it quantizes (the
# flat partition here, the parameter there), so its momenta take other draws: 0.19-0.20 measured.
DIFFERING_FROM_SINGLE_PROCESS = {"lion": 0.0, "lion_q8": 0.03, "lion_q4": 0.25}
ALL = ["lion", "lion_q8", "lion_q4"]
OFFLOAD = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}, "zero_force_ds_cpu_optimizer": False}


def run_zero(torchrun, tmp_path, stage: int, variants: list[str], extra_config: dict | None = None) -> dict:
    report = tmp_path / "report.json"
    torchrun(WORKER, "train", stage, ",".join(variants), tmp_path / "checkpoints", report,
             json.dumps(extra_config or {}))
    return json.loads(report.read_text())


def check_report(report: dict, variant: str) -> None:
    assert report["world"] == 2
    # One flat fp32 partition per param group (decayed weights; biases and the norm weight) per rank.
    assert report["partition_shapes"] == [[41984], [516]] and report["partition_is_plain"]
    low, high = BYTES_PER_PARAM[variant]
    assert low <= report["bytes_per_param"] <= high, report
    expected_keys = ["exp_avg"] if variant == "lion" else ["exp_avg_absmax", "exp_avg_codes"]
    assert report["state_keys"] == expected_keys
    assert report["weights_rank_difference"] == 0.0
    assert report["share_differing_from_single_process"] <= DIFFERING_FROM_SINGLE_PROCESS[variant]
    assert report["loaded_state_equals_saved"]
    assert report["resumed_equals_uninterrupted"]


@pytest.mark.multiprocess
def test_zero2_lion8bit_quantizes_partitions_and_resumes_exactly(torchrun, tmp_path):
    check_report(run_zero(torchrun, tmp_path, 2, ["lion_q8"])["lion_q8"], "lion_q8")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("stage, variants", [(1, ALL), (2, ["lion", "lion_q4"]), (3, ALL)])
def test_zero_stage_with_each_variant(torchrun, tmp_path, stage, variants):
    reports = run_zero(torchrun, tmp_path, stage, variants)
    for variant in variants:
        check_report(reports[variant], variant)
    if stage == 2:
        # 2 -> 1 processes: DeepSpeed refuses to re-partition a ZeRO checkpoint (docs/deepspeed.md).
        resize = tmp_path / "resize.json"
        torchrun(WORKER, "resize", stage, "lion_q4", tmp_path / "checkpoints", resize, nproc=1)
        error = json.loads(resize.read_text())["error"]
        assert error is not None and "world size of 2" in error and "current world size is 1" in error, error


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_offload_steps_cpu_partitions_with_our_optimizers(torchrun, tmp_path, stage):
    """ZeRO-Offload with "zero_force_ds_cpu_optimizer": false: our optimizers step the CPU partitions."""
    reports = run_zero(torchrun, tmp_path, stage, ALL, OFFLOAD)
    for variant in ALL:
        check_report(reports[variant], variant)


# --- check_deepspeed_config: no processes, no DeepSpeed engine --------------------------------


@pytest.mark.parametrize("cls", [Lion, Lion8bit, Lion4bit])
def test_offload_needs_force_ds_cpu_optimizer_false(cls):
    config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    with pytest.raises(ValueError, match=r"offload_optimizer .*zero_force_ds_cpu_optimizer\": false.*DeepSpeedCPULion"):
        check_deepspeed_config(config, cls)
    check_deepspeed_config({**config, "zero_force_ds_cpu_optimizer": False}, cls)


@pytest.mark.parametrize("cls", [Lion8bit, Lion4bit])
def test_quantized_state_refuses_nvme_offload_and_elastic_checkpoints(cls):
    nvme = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}},
            "zero_force_ds_cpu_optimizer": False}
    with pytest.raises(ValueError, match=r"offload_optimizer.device='nvme' with " + cls.__name__):
        check_deepspeed_config(nvme, cls)
    with pytest.raises(ValueError, match=r"elastic_checkpoint=true with " + cls.__name__):
        check_deepspeed_config({"zero_optimization": {"stage": 2, "elastic_checkpoint": True}}, cls)
    check_deepspeed_config({"zero_optimization": {"stage": 2, "elastic_checkpoint": True}}, Lion)


def test_plain_zero_configs_pass():
    for stage in (0, 1, 2, 3):
        for cls in (Lion, Lion8bit, Lion4bit):
            check_deepspeed_config({"zero_optimization": {"stage": stage}, "train_batch_size": 8}, cls)
    check_deepspeed_config({"train_batch_size": 8}, Lion8bit)
    with pytest.raises(TypeError, match="Invalid config"):
        check_deepspeed_config("ds_config.json", Lion8bit)
