"""Worker for tests/lightning/test_fsdp.py: Lightning's ModelParallelStrategy (FSDP2: `fully_shard` in
`configure_model`) on 2 CPU processes (gloo) with Lion, Lion8bit or Lion4bit.

    torchrun --nproc-per-node=2 lightning_model_parallel.py VARIANT:HOW[,VARIANT:HOW...] DIR REPORT.json

VARIANT is lion, lion_q8 or lion_q4; HOW is `configure_lion` (the module returns `configure_lion(...)`
with a warmup schedule) or `callback` (the module returns AdamW and a StepLR;
`LionCallback(optimizer_class=VARIANT)` swaps them). For each pair, in one launch: trains 8 steps
(2 epochs) with a distributed checkpoint every 4 (Lightning's DCP folders), then fits a fresh module
(other initial weights) from the step-4 checkpoint to step 8: its weights must equal the
uninterrupted run's. Rank 0 writes REPORT.json, {"VARIANT:HOW": ...}: the optimizer's state
(quantized, as DTensors, bytes per parameter on this rank) and the comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from lion_integrations.lightning import LionCallback, configure_lion
from worker_exit import exit_now, write_report_on_rank0  # noqa: E402  (next to this script)

torch.set_num_threads(1)
STEPS = 8


class Net(pl.LightningModule):
    def __init__(self, variant: str, how: str, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(32, 256), nn.LayerNorm(256), nn.Tanh(), nn.Linear(256, 128),
                                  nn.Tanh(), nn.Linear(128, 1))
        self.variant, self.how = variant, how

    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in self.body:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def forward(self, x):
        return self.body(x)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(STEPS // 2 * 8 * 2, 32, generator=g)  # 4 batches per rank: one epoch per checkpoint
        return DataLoader(TensorDataset(x, x[:, :4].sum(1, keepdim=True).sin()), batch_size=8, shuffle=False)

    def configure_optimizers(self):
        if self.how == "configure_lion":
            options = {} if self.variant == "lion" else {"min_quantized_size": 1024}
            return configure_lion(self, lr=1e-3, weight_decay=0.1, scheduler="cosine", warmup_steps=2,
                                  total_steps=STEPS, optimizer_class=self.variant, fused=False, **options)
        adamw = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.03)
        return {"optimizer": adamw, "lr_scheduler": torch.optim.lr_scheduler.StepLR(adamw, 2, 0.5)}


def fit(variant: str, how: str, root: Path, seed: int, ckpt_path: str | None = None):
    callbacks = [ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=4, save_top_k=-1,
                                 filename="{step}")]
    if how == "callback":
        options = {"fused": False} if variant == "lion" else {"fused": False, "min_quantized_size": 1024}
        callbacks.append(LionCallback(optimizer_class=variant, optimizer_kwargs=options))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo"),
        max_steps=STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks,
    )
    module = Net(variant, how, seed)
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module


def full_weights(module) -> torch.Tensor:
    return torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().reshape(-1).float()
                      for p in module.parameters()])


def describe_state(optimizer) -> dict:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    quantized = [p for p in params if "exp_avg_codes" in optimizer.state[p]]

    def local_bytes(params):
        return sum(v.to_local().numel() * v.element_size() for p in params for v in optimizer.state[p].values())

    def local_numel(params):
        return sum(p.to_local().numel() for p in params)

    return {
        "optimizer_class": type(optimizer).__name__,
        "shapes": [list(p.shape) for p in params],
        "quantized": ["exp_avg_codes" in optimizer.state[p] for p in params],
        "state_is_dtensor": all(isinstance(v, DTensor) for p in params for v in optimizer.state[p].values()),
        "bytes_per_param_on_rank": local_bytes(params) / local_numel(params),
        "quantized_bytes_per_param_on_rank": local_bytes(quantized) / local_numel(quantized) if quantized else None,
    }


def run(variant: str, how: str, root: Path) -> dict:
    trainer, module = fit(variant, how, root, seed=0)
    report = describe_state(trainer.optimizers[0])
    weights = full_weights(module)
    gathered = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    report["weights_rank_difference"] = max(float((g - weights).abs().max()) for g in gathered)
    checkpoint = root / "checkpoints" / "step=4.ckpt"
    report["checkpoint_is_a_folder"] = checkpoint.is_dir()

    resumed_trainer, resumed = fit(variant, how, root / "resumed", seed=1, ckpt_path=str(checkpoint))
    report["resumed_optimizer_class"] = type(resumed_trainer.optimizers[0]).__name__
    report["resumed_equals_uninterrupted"] = bool(torch.equal(full_weights(resumed), weights))
    return report


def main() -> None:
    runs, directory, report_path = sys.argv[1:4]
    report = {}
    for item in runs.split(","):
        variant, how = item.split(":")
        report[item] = run(variant, how, Path(directory) / variant / how)
    write_report_on_rank0(report_path, report)


if __name__ == "__main__":
    main()
    exit_now()
