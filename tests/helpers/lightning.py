"""A small LightningModule whose configure_optimizers returns each form Lightning accepts, a Trainer
factory, and readers of weights, momenta and learning rates. Import after
``pytest.importorskip("lightning")``."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim import lr_scheduler as sched
from torch.utils.data import DataLoader, TensorDataset

from lion_integrations.lightning import configure_lion


BATCHES_PER_EPOCH = 4


def dataset(n: int = 8 * BATCHES_PER_EPOCH) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True).sin())


class Net(pl.LightningModule):
    """A small regression net; `optim` picks what configure_optimizers returns."""

    def __init__(self, optim: str = "adamw", seed: int = 0, **options):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1))
        self.optim = optim
        self.options = options

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def train_dataloader(self):
        return DataLoader(dataset(), batch_size=8, shuffle=False)

    def configure_optimizers(self):
        if self.optim == "lion":
            return configure_lion(self, **{"lr": 3e-4, "weight_decay": 0.1, "fused": False, **self.options})
        adamw = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.05)
        step = sched.StepLR(adamw, step_size=2, gamma=0.5)
        forms = {
            "adamw": adamw,
            "list": [adamw],
            "tuple": (adamw,),
            "lists": ([adamw], [step]),
            "dict": {"optimizer": adamw, "lr_scheduler": step},
            "dict_config": {"optimizer": adamw, "lr_scheduler": {"scheduler": step, "interval": "step"}},
            "list_of_dicts": [{"optimizer": adamw, "lr_scheduler": {"scheduler": step, "interval": "step"}}],
        }
        return forms[self.optim]


class LrRecorder(pl.Callback):
    """The lr of every param group at each optimizer step."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


def trainer(tmp_path, callbacks=(), **kwargs):
    options = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, max_steps=BATCHES_PER_EPOCH,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def momenta(optimizer) -> list[torch.Tensor]:
    return [optimizer.state[p]["exp_avg"].clone() for group in optimizer.param_groups for p in group["params"]]
