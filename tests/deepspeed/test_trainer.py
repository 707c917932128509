"""Hugging Face Trainer with ``deepspeed=<ZeRO config dict>`` and optim="lion" / "lion_q8" / "lion_q4",
2 processes under torchrun on DeepSpeed's CPU accelerator; the worker is tests/workers/deepspeed_hf.py.

On a machine without GPUs Trainer runs data-parallel only with ``use_cpu=True``: Accelerate then
sets up the 2 processes (gloo) for Trainer, and the DeepSpeed plugin still wraps the model in a
DeepSpeedEngine. Without it Accelerate finds no GPU backend and gives Trainer a world of 1 process
on every rank (each its own process zero, each walking the whole data set) while DeepSpeed
partitions over both: `lion_integrations.hf` refuses that with an error naming use_cpu.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import WORKERS

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install 'lion-integrations[deepspeed]'")
pytest.importorskip("transformers", reason="Hugging Face tests need the 'hf' extra")

import lion_integrations.hf as hf  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

WORKER = WORKERS / "deepspeed_hf.py"
BYTES_PER_PARAM = {"lion": (4.0, 4.0), "lion_q8": (1.0, 1.03), "lion_q4": (0.5, 0.53)}
CLASS_NAMES = {"lion": "Lion", "lion_q8": "Lion8bit", "lion_q4": "Lion4bit"}


def run_trainer(torchrun, tmp_path, runs: list[str], use_cpu: bool) -> list[dict]:
    report = tmp_path / "report.json"
    torchrun(WORKER, ",".join(runs), int(use_cpu), tmp_path / "runs", report)
    return [json.loads(Path(f"{report}.{rank}").read_text()) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_trainer_deepspeed_is_one_data_parallel_run_and_resumes_exactly(torchrun, tmp_path):
    runs = ["lion:2", "lion_q8:2", "lion_q4:2", "lion_q8:3"]
    by_rank = run_trainer(torchrun, tmp_path, runs, use_cpu=True)
    for run in runs:
        optim = run.split(":")[0]
        reports = [by_rank[rank][run] for rank in range(2)]
        assert [r["trainer_world"] for r in reports] == [2, 2] and [r["torch_world"] for r in reports] == [2, 2]
        assert [r["is_world_process_zero"] for r in reports] == [True, False], run
        assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" for r in reports), run
        assert all(r["deepspeed_engine"] == "DeepSpeedEngine" for r in reports), run
        # Each rank trains on its own half of every global batch: 8 steps x 4 x 2 ranks = the 64 examples once.
        first, second = (set(r["examples_seen"]) for r in reports)
        assert len(first) == len(second) == 8 * 4 and first.isdisjoint(second), run
        for report in reports:
            assert report["optimizer_class"] == CLASS_NAMES[optim], run
            assert report["partition_numel"] * 2 >= report["model_numel"], run  # this rank's half (plus padding)
            low, high = BYTES_PER_PARAM[optim]
            assert low <= report["bytes_per_param"] <= high, (run, report["bytes_per_param"])
            expected_keys = ["exp_avg"] if optim == "lion" else ["exp_avg_absmax", "exp_avg_codes"]
            assert report["state_keys"] == expected_keys, run
            assert report["resumed_equals_uninterrupted"], run


@pytest.mark.slow
@pytest.mark.multiprocess
def test_trainer_without_use_cpu_is_refused_on_cpu(torchrun, tmp_path):
    by_rank = run_trainer(torchrun, tmp_path, ["lion_q8:2"], use_cpu=False)
    for report in by_rank:
        assert "world_size=1 but torch.distributed runs 2 processes" in report["lion_q8:2"]["error"]
        assert "use_cpu=True" in report["lion_q8:2"]["error"]


def test_offload_without_force_ds_cpu_optimizer_is_a_clear_error(tmp_path):
    config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
              "train_micro_batch_size_per_gpu": "auto"}
    args = TrainingArguments(output_dir=str(tmp_path), optim="lion_q8", deepspeed=config, report_to="none")
    with pytest.raises(ValueError, match=r"offload_optimizer.*Lion8bit.*zero_force_ds_cpu_optimizer"):
        hf.lion_cls_and_kwargs("lion_q8", args, {})


@pytest.mark.slow
@pytest.mark.multiprocess
def test_trainer_fsdp2_on_cpu_trains_ddp_and_says_so(torchrun, tmp_path):
    """What blocks Trainer + FSDP2 on CPU: Accelerate makes an fsdp plugin DistributedType.FSDP only on
    GPU process groups, so with use_cpu=True Trainer wraps the model in DDP (parameters whole)."""
    torchrun(WORKERS / "trainer_fsdp2.py", tmp_path / "runs",
             tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2 and report["distributed_type"] == "DistributedType.MULTI_CPU"
    assert report["model_wrapper"] == "DistributedDataParallel" and not report["params_are_dtensors"]
    assert any("has no effect with use_cpu=True" in message for message in report["warnings"])
    assert report["optimizer_class"] == "Lion8bit" and report["quantized_params"] > 0
    assert report["resumed_equals_uninterrupted"]
