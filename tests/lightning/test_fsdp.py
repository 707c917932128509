"""Lightning's ModelParallelStrategy (FSDP2: `fully_shard` in `configure_model`) on 2 CPU processes
(gloo, under torchrun) with `configure_lion` and `LionCallback`, for Lion, Lion8bit and Lion4bit:
sharded quantized state, identical ranks, and a resume from Lightning's distributed checkpoint that
ends bit for bit where the uninterrupted run does. The worker is tests/workers/lightning_model_parallel.py.

Lightning's FSDPStrategy (FSDP1) and DeepSpeedStrategy refuse the CPU accelerator: tests/gpu/ runs
them on CUDA (`make gpu-check`); tests/deepspeed/test_lightning.py runs, on CPU, the DeepSpeed engine
as DeepSpeedStrategy configures it.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORKERS

pytest.importorskip("lightning", reason="Lightning tests need the 'lightning' extra")

WORKER = WORKERS / "lightning_model_parallel.py"
RUNS = [f"{variant}:{how}" for how in ("configure_lion", "callback") for variant in ("lion", "lion_q8", "lion_q4")]
CLASS_NAMES = {"lion": "Lion", "lion_q8": "Lion8bit", "lion_q4": "Lion4bit"}
# The two large weights, (256, 32) and (128, 256): codes plus one fp32 absmax per row-block
# (the (256, 32) rows are one 32-element block each).
QUANTIZED_BYTES = {"lion_q8": (1.0, 1.04), "lion_q4": (0.5, 0.54)}


@pytest.mark.multiprocess
def test_model_parallel_strategy_with_lion8bit_from_configure_lion_resumes_exactly(torchrun, tmp_path):
    check_runs(torchrun, tmp_path, ["lion_q8:configure_lion"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_model_parallel_strategy_with_every_variant_resumes_exactly(torchrun, tmp_path):
    check_runs(torchrun, tmp_path, RUNS)


def check_runs(torchrun, tmp_path, runs):
    torchrun(WORKER, ",".join(runs), tmp_path / "runs", tmp_path / "report.json")
    reports = json.loads((tmp_path / "report.json").read_text())
    assert sorted(reports) == sorted(runs)
    for run, report in reports.items():
        variant, _ = run.split(":")
        assert report["optimizer_class"] == report["resumed_optimizer_class"] == CLASS_NAMES[variant], run
        assert report["state_is_dtensor"], run
        assert report["weights_rank_difference"] == 0.0, run
        assert report["checkpoint_is_a_folder"] and report["resumed_equals_uninterrupted"], run
        quantized = {tuple(shape) for shape, q in zip(report["shapes"], report["quantized"]) if q}
        if variant == "lion":
            assert not quantized and report["bytes_per_param_on_rank"] == 4.0, run
        else:
            assert quantized == {(256, 32), (128, 256)}, run
            low, high = QUANTIZED_BYTES[variant]
            assert low <= report["quantized_bytes_per_param_on_rank"] <= high, (run, report)
