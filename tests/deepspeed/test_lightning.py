"""Lightning's DeepSpeedStrategy with `configure_lion` and `LionCallback`.

DeepSpeedStrategy refuses the CPU accelerator ("only supported on CUDA GPUs"), so on CPU the worker
(tests/workers/deepspeed_lightning.py) runs the DeepSpeed engine exactly as the strategy sets it up
(its config, its `_setup_model_and_optimizer`, the scheduler stepped by Lightning, its checkpoint
calls) on 2 processes; tests/gpu/lightning_strategies.py runs the real Trainer (`make gpu-check`).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import WORKERS

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install 'lion-integrations[deepspeed]'")
pytest.importorskip("lightning", reason="Lightning tests need the 'lightning' extra")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import DeepSpeedStrategy  # noqa: E402

from lion_integrations.lightning import LionCallback, configure_lion  # noqa: E402

WORKER = WORKERS / "deepspeed_lightning.py"
CLASS_NAMES = {"lion": "Lion", "lion_q8": "Lion8bit", "lion_q4": "Lion4bit"}
BYTES_PER_PARAM = {"lion": (4.0, 4.0), "lion_q8": (1.0, 1.03), "lion_q4": (0.5, 0.53)}


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("stage, runs", [
    (2, ["lion:configure_lion", "lion_q8:configure_lion", "lion_q4:callback"]),
    (3, ["lion_q8:callback", "lion_q4:configure_lion"]),
])
def test_engine_as_deepspeed_strategy_sets_it_up(torchrun, tmp_path, stage, runs):
    torchrun(WORKER, stage, ",".join(runs), tmp_path / "runs", tmp_path / "report.json")
    reports = json.loads((tmp_path / "report.json").read_text())
    for run in runs:
        variant, _ = run.split(":")
        report = reports[run]
        assert report["optimizer_class"] == CLASS_NAMES[variant], run
        low, high = BYTES_PER_PARAM[variant]
        assert low <= report["bytes_per_param"] <= high, (run, report["bytes_per_param"])
        assert report["state_keys"] == (["exp_avg"] if variant == "lion" else ["exp_avg_absmax", "exp_avg_codes"])
        assert report["lrs_follow_the_schedule"] and report["resumed_lrs_equal"], run
        assert report["weights_rank_difference"] == 0.0, run
        assert report["resumed_equals_uninterrupted"], run


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def attached(strategy) -> Module:
    module = Module()
    module.trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False)
    return module


def test_offload_under_deepspeed_strategy_is_a_clear_error():
    module = attached(DeepSpeedStrategy(stage=2, offload_optimizer=True))
    with pytest.raises(ValueError, match=r"offload_optimizer .*Lion8bit.*zero_force_ds_cpu_optimizer"):
        configure_lion(module, optimizer_class="lion_q8")
    with pytest.raises(ValueError, match=r"offload_optimizer .*Lion4bit.*zero_force_ds_cpu_optimizer"):
        LionCallback(optimizer_class="lion_q4").convert(module.configure_optimizers(), module)
    config = {**module.trainer.strategy.config, "zero_force_ds_cpu_optimizer": False}
    allowed = attached(DeepSpeedStrategy(config=config))
    assert type(configure_lion(allowed, optimizer_class="lion_q8")["optimizer"]).__name__ == "Lion8bit"
