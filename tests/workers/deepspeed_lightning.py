"""Worker for tests/deepspeed/test_lightning.py: the DeepSpeed engine as Lightning's DeepSpeedStrategy sets
it up, with `configure_lion` or `LionCallback`, on DeepSpeed's CPU accelerator (2 processes, gloo).

    torchrun --nproc-per-node=2 deepspeed_lightning.py STAGE VARIANT:HOW[,VARIANT:HOW...] DIR REPORT.json

DeepSpeedStrategy refuses the CPU accelerator before it builds anything, so this runs its parts that
concern the optimizer, with Lightning's own code where it can: the config `DeepSpeedStrategy(stage=STAGE)`
builds (what strategy="deepspeed_stage_STAGE" uses), completed as its `_format_config` completes it;
the optimizer and scheduler from the module's `configure_optimizers` (HOW: `configure_lion`, or AdamW
converted by `LionCallback`), parsed by Lightning's `_configure_optimizers`; `deepspeed.initialize`
through the strategy's `_setup_model_and_optimizer`; the scheduler stepped by the loop (interval
"step"), as Lightning does. Checkpoints go through `engine.save_checkpoint(..., tag="checkpoint")` /
`load_checkpoint(..., load_lr_scheduler_states=False)` with the scheduler in the client state, as
the strategy saves and loads them. tests/gpu/lightning_strategies.py runs the real Trainer on CUDA.
"""

from __future__ import annotations

import sys
from pathlib import Path

import deepspeed
import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn

from deepspeed_zero import full_weights, gathered, measure_state  # noqa: E402  (next to this script)
from lion_integrations.lightning import LionCallback, configure_lion
from worker_exit import exit_now, write_report_on_rank0  # noqa: E402  (next to this script)

torch.set_num_threads(1)
STEPS, SAVE_AFTER, BATCH = 8, 4, 8


class Net(pl.LightningModule):
    def __init__(self, variant: str, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.Tanh(), nn.Linear(256, 256),
                                  nn.Tanh(), nn.Linear(256, 8))
        self.variant, self.how = variant, how

    def forward(self, x):
        return self.body(x)

    def configure_optimizers(self):
        options = {"fused": False} if self.variant == "lion" else {"min_quantized_size": 256}
        if self.how == "configure_lion":
            return configure_lion(self, lr=1e-3, weight_decay=0.1, scheduler="cosine", warmup_steps=2,
                                  total_steps=STEPS, optimizer_class=self.variant, **options)
        adamw = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.03)
        scheduler = torch.optim.lr_scheduler.StepLR(adamw, 2, 0.5)
        optim_conf = {"optimizer": adamw, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return LionCallback(optimizer_class=self.variant, optimizer_kwargs=options).convert(optim_conf, self)


def lightning_config(stage: int) -> dict:
    strategy = DeepSpeedStrategy(stage=stage)
    config = dict(strategy.config)
    # What DeepSpeedStrategy._format_batch_size_and_grad_accum_config adds for a Trainer with
    # accumulate_grad_batches=1 and no gradient clipping.
    config.update(gradient_accumulation_steps=1, train_micro_batch_size_per_gpu=BATCH, gradient_clipping=0.0)
    return config


def setup(stage: int, variant: str, how: str):
    """(engine, our optimizer, scheduler) as DeepSpeedStrategy._initialize_deepspeed_train builds them."""
    strategy = DeepSpeedStrategy(stage=stage)
    strategy.config = lightning_config(stage)
    strategy.cluster_environment = TorchElasticEnvironment()
    # Indexed like CUDA devices: the strategy passes root_device.index to DeepSpeed as the device rank.
    strategy.parallel_devices = [torch.device("cpu", index) for index in range(dist.get_world_size())]
    module = Net(variant, how)
    optimizers, schedulers, monitor = _configure_optimizers(module.configure_optimizers())
    scheduler_configs = _configure_schedulers_automatic_opt(schedulers, monitor)
    scheduler = scheduler_configs[0].scheduler
    assert scheduler_configs[0].interval == "step"  # train_steps steps it after each optimizer step
    engine, _ = strategy._setup_model_and_optimizer(module, optimizers[0], scheduler)
    engine.lr_scheduler = None  # Lightning steps the scheduler itself
    return engine, optimizers[0], scheduler


def batch(step: int, rank: int):
    x = torch.randn(BATCH, 64, generator=torch.Generator().manual_seed(100 * step + rank))
    return x, x[:, :8].sin()


def train_steps(engine, scheduler, start: int, stop: int, lrs: list) -> None:
    for step in range(start, stop):
        x, y = batch(step, dist.get_rank())
        loss = nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        scheduler.step()
        lrs.append([group["lr"] for group in engine.optimizer.param_groups])


def reference_lrs(variant: str, how: str) -> list:
    """The learning rates the same configure_optimizers gives a plain (not DeepSpeed) run."""
    module = Net(variant, how)
    optimizers, schedulers, monitor = _configure_optimizers(module.configure_optimizers())
    scheduler = _configure_schedulers_automatic_opt(schedulers, monitor)[0].scheduler
    lrs = []
    for _ in range(STEPS):
        optimizers[0].step()
        scheduler.step()
        lrs.append([group["lr"] for group in optimizers[0].param_groups])
    return lrs


def run(stage: int, variant: str, how: str, directory: str) -> dict:
    engine, optimizer, scheduler = setup(stage, variant, how)
    lrs: list = []
    train_steps(engine, scheduler, 0, SAVE_AFTER, lrs)
    engine.save_checkpoint(directory, client_state={"lr_schedulers": [scheduler.state_dict()]}, tag="checkpoint")
    train_steps(engine, scheduler, SAVE_AFTER, STEPS, lrs)
    weights = full_weights(engine)
    report = {"optimizer_class": type(optimizer).__name__, **measure_state(optimizer)}
    report["lrs_follow_the_schedule"] = lrs == reference_lrs(variant, how)
    report["weights_rank_difference"] = max(float((w - weights).abs().max()) for w in gathered(weights))

    resumed, _, resumed_scheduler = setup(stage, variant, how)
    _, client_state = resumed.load_checkpoint(directory, tag="checkpoint", load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    resumed_scheduler.load_state_dict(client_state["lr_schedulers"][0])  # Lightning restores it from the client state
    resumed_lrs: list = []
    train_steps(resumed, resumed_scheduler, SAVE_AFTER, STEPS, resumed_lrs)
    report["resumed_lrs_equal"] = resumed_lrs == lrs[SAVE_AFTER:]
    report["resumed_equals_uninterrupted"] = bool(torch.equal(full_weights(resumed), weights))
    return report


def main() -> None:
    deepspeed.init_distributed("gloo")
    stage, runs, directory, report_path = sys.argv[1:5]
    report = {}
    for item in runs.split(","):
        variant, how = item.split(":")
        report[item] = run(int(stage), variant, how, str(Path(directory) / variant / how))
    write_report_on_rank0(report_path, report)


if __name__ == "__main__":
    main()
    exit_now()
