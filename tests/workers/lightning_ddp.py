"""Worker for tests/lightning/test_ddp.py: Lightning DDP (gloo, CPU, 2 processes under torchrun) with Lion.

Trains twice, with `configure_lion` and with `LionCallback` over an AdamW module, then all-gathers
weights and momenta and writes, from rank 0, the largest difference between ranks as JSON.
Usage: torchrun --nproc-per-node=2 lightning_ddp.py REPORT.json ROOT_DIR
"""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lion_integrations import Lion
from lion_integrations.lightning import LionCallback, configure_lion
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)


class Net(pl.LightningModule):
    def __init__(self, use_configure_lion: bool):
        super().__init__()
        torch.manual_seed(0)  # same init on every rank (DDP also broadcasts rank 0's)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1))
        self.use_configure_lion = use_configure_lion
        self.first_batches: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.first_batches.append(float(x[0, 0]))
        return nn.functional.mse_loss(self.body(x), y)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(96, 8, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=8, shuffle=False)

    def configure_optimizers(self):
        if self.use_configure_lion:
            return configure_lion(self, lr=3e-3, weight_decay=0.1, scheduler="cosine", warmup_steps=2, fused=False)
        adamw = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.05)
        return {"optimizer": adamw, "lr_scheduler": torch.optim.lr_scheduler.StepLR(adamw, 2, 0.5)}


def max_rank_difference(tensors: list[torch.Tensor]) -> float:
    flat = torch.cat([t.detach().flatten().float() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def run(use_configure_lion: bool, root: str) -> dict:
    model = Net(use_configure_lion)
    init = [p.detach().clone() for p in model.parameters()]
    callbacks = [] if use_configure_lion else [LionCallback(optimizer_kwargs={"fused": False})]
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"), max_steps=6,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks,
    )
    trainer.fit(model)
    (optimizer,) = trainer.optimizers
    params = list(model.parameters())
    firsts = torch.tensor(model.first_batches)
    gathered = [torch.empty_like(firsts) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, firsts)
    return {
        "optimizer": type(optimizer).__name__ if isinstance(optimizer, Lion) else f"not Lion: {type(optimizer)}",
        "max_rank_difference": max_rank_difference(params),
        "max_momentum_rank_difference": max_rank_difference([optimizer.state[p]["exp_avg"] for p in params]),
        "changed_from_init": max(float((p.detach() - q).abs().max()) for p, q in zip(params, init)),
        "global_step": trainer.global_step,
        "ranks_saw_different_batches": not torch.equal(gathered[0], gathered[1]),
        "lr": optimizer.param_groups[0]["lr"],
    }


def main() -> None:
    report, root = sys.argv[1], sys.argv[2]
    results = {"configure_lion": run(True, root), "callback": run(False, root)}
    results["world_size"] = dist.get_world_size()
    if dist.get_rank() == 0:
        with open(report, "w") as handle:
            json.dump(results, handle, indent=2)
        print(json.dumps(results))
    dist.destroy_process_group()  # join gloo's threads before interpreter exit


if __name__ == "__main__":
    main()
    exit_now()
