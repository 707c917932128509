"""`make gpu-check`: Lightning's DeepSpeedStrategy (ZeRO 2 and 3) and FSDPStrategy (FSDP1) with
`configure_lion` and `LionCallback`, on every CUDA GPU of this machine. Both strategies refuse the CPU,
so the CPU suite runs what it can of them (tests/deepspeed/test_lightning.py); this runs the real
Trainer.

    python tests/gpu/lightning_strategies.py [--strategies deepspeed_stage_2,deepspeed_stage_3,fsdp] [--root DIR]

For each strategy and each of configure_lion (Lion8bit) and LionCallback (AdamW -> Lion4bit): trains
8 steps (2 epochs) with a checkpoint every 4, then fits a fresh module from the step-4 checkpoint and
checks that it ends with the uninterrupted run's weights. DeepSpeed: the optimizer state on ZeRO's flat
partitions must be quantized (about 1.02 / 0.52 bytes per element). FSDP1 hands the optimizer 1-D shards
of flattened parameters: the state stays full precision and the optimizer must warn. Exits non-zero,
naming the case, on any failure; prints one line per case from rank 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lion_integrations.lightning import LionCallback, configure_lion

STEPS = 8
EXPECTED_BYTES = {"lion_q8": (1.0, 1.03), "lion_q4": (0.5, 0.53)}


class Net(pl.LightningModule):
    def __init__(self, variant: str, how: str, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(64, 512), nn.LayerNorm(512), nn.Tanh(), nn.Linear(512, 512),
                                  nn.Tanh(), nn.Linear(512, 8))
        self.variant, self.how = variant, how

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def train_dataloader(self):
        x = torch.randn(4 * 8 * self.trainer.world_size, 64, generator=torch.Generator().manual_seed(1234))
        return DataLoader(TensorDataset(x, x[:, :8].sin()), batch_size=8, shuffle=False)  # 4 steps per epoch

    def configure_optimizers(self):
        if self.how == "configure_lion":
            return configure_lion(self, lr=1e-3, weight_decay=0.1, scheduler="cosine", warmup_steps=2,
                                  total_steps=STEPS, optimizer_class=self.variant, min_quantized_size=1024)
        adamw = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.03)
        return {"optimizer": adamw, "lr_scheduler": torch.optim.lr_scheduler.StepLR(adamw, 2, 0.5)}


def fit(strategy: str, variant: str, how: str, root: Path, seed: int, ckpt_path: str | None = None):
    callbacks = [ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=4, save_top_k=-1, filename="{step}")]
    if how == "callback":
        callbacks.append(LionCallback(optimizer_class=variant, optimizer_kwargs={"min_quantized_size": 1024}))
    trainer = pl.Trainer(accelerator="cuda", devices=-1, strategy=strategy, max_steps=STEPS, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         callbacks=callbacks)
    module = Net(variant, how, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module, [str(w.message) for w in caught]


def full_weights(trainer, module) -> torch.Tensor:
    if trainer.strategy.strategy_name.startswith("deepspeed"):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return torch.cat([p.detach().reshape(-1).float().cpu() for p in module.parameters()])
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model):
        return torch.cat([p.detach().reshape(-1).float().cpu() for p in module.parameters()])


def our_optimizer(trainer):
    optimizer = trainer.optimizers[0]
    optimizer = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer
    return getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO optimizer -> ours


def check(strategy: str, variant: str, how: str, root: Path) -> list[str]:
    """Failures of one case, as sentences (none: it passed)."""
    failures = []
    trainer, module, caught = fit(strategy, variant, how, root, seed=0)
    optimizer = our_optimizer(trainer)
    names = {"lion_q8": "Lion8bit", "lion_q4": "Lion4bit"}
    if type(optimizer).__name__ != names[variant]:
        failures.append(f"optimizer is {type(optimizer).__name__}, not {names[variant]}")
    keys = {key for state in optimizer.state.values() for key in state}
    if strategy.startswith("deepspeed"):
        numel = sum(p.numel() for p in optimizer.state)
        state_bytes = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                          if isinstance(v, torch.Tensor))
        low, high = EXPECTED_BYTES[variant]
        if "exp_avg_codes" not in keys or not low <= state_bytes / numel <= high:
            failures.append(f"state on ZeRO's partitions is {sorted(keys)}, {state_bytes / numel:.3f} bytes/param")
    else:
        if not any("flattened by FSDP1" in message for message in caught):
            failures.append("no warning that FSDP1's flattened shards keep full precision")
    weights = full_weights(trainer, module)
    checkpoint = root / "checkpoints" / "step=4.ckpt"
    resumed_trainer, resumed, _ = fit(strategy, variant, how, root / "resumed", seed=1, ckpt_path=str(checkpoint))
    if not torch.equal(full_weights(resumed_trainer, resumed), weights):
        failures.append("the run resumed from step 4 does not end with the uninterrupted run's weights")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="deepspeed_stage_2,deepspeed_stage_3,fsdp")
    parser.add_argument("--root", default="outputs/gpu-check", help="checkpoints go here (emptied first)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu-check needs a CUDA device (torch.cuda.is_available() is False)")
    root = Path(args.root)
    # Lightning starts the other ranks as copies of this script (with LOCAL_RANK set) at the first fit:
    # only the first process empties the folder they all share.
    if "LOCAL_RANK" not in os.environ:
        shutil.rmtree(root, ignore_errors=True)
    failed = False
    for strategy in args.strategies.split(","):
        for variant, how in (("lion_q8", "configure_lion"), ("lion_q4", "callback")):
            failures = check(strategy, variant, how, root / strategy / how)
            failed = failed or bool(failures)
            if rank_zero_only.rank == 0:
                print(f"{strategy} {how} {variant}: {'; '.join(failures) or 'ok'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
