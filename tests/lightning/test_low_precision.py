"""bf16 weights through Lightning: precision="bf16-true" with configure_lion and LionCallback (issue 14)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from lion_integrations import Lion
from tests.helpers.low_precision import compensated


# --- Lightning ---------------------------------------------------------------------------------------


def lightning_module(optim: str, **options):
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    from lion_integrations.lightning import configure_lion

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.body(x), y)

        def train_dataloader(self):
            x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
            return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True).sin()), batch_size=8)

        def configure_optimizers(self):
            if optim == "lion":
                return configure_lion(self, lr=1e-4, weight_decay=0.1, fused=False, **options)
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return pl, Net()


def fit_bf16_true(pl, module, callbacks=()):
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="bf16-true", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )
    trainer.fit(module)
    return trainer


@pytest.mark.parametrize("options", [{}, {"kahan_sum": True}, {"stochastic_rounding": True}])
def test_lightning_bf16_true_with_configure_lion(options):
    pl, module = lightning_module("lion", **options)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = fit_bf16_true(pl, module)
    (optimizer,) = trainer.optimizers
    assert all(p.dtype == torch.bfloat16 for p in module.parameters())
    assert not any(torch.equal(a.bfloat16(), b) for a, b in zip(before, module.parameters()))
    flags = compensated(optimizer)
    assert len(flags) == 4 and all(flags) == (not options.get("stochastic_rounding")) and any(flags) == all(flags)


def test_lightning_bf16_true_with_lion_callback():
    from lion_integrations.lightning import LionCallback

    pl, module = lightning_module("adamw")
    trainer = fit_bf16_true(pl, module, [LionCallback(optimizer_kwargs={"fused": False, "kahan_sum": True})])
    (optimizer,) = trainer.optimizers
    assert type(optimizer) is Lion and optimizer.param_groups[0]["kahan_sum"] is True
    flags = compensated(optimizer)
    assert len(flags) == 4 and all(flags)
