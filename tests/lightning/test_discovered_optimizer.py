"""configure_lion, LionCallback and LightningCLI build a DiscoveredOptimizer from a program."""

from __future__ import annotations

import pytest
import torch

from lion_integrations.discovery import DiscoveredOptimizer, parse, program_hash
from tests.helpers.discovery import LION


def _regression_net(pl, configure_optimizers=None):
    """A LightningModule fitting a 4 -> 1 linear layer to 16 fixed points (configure_optimizers as given)."""
    from torch.utils.data import DataLoader, TensorDataset

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def train_dataloader(self):
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
            return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    if configure_optimizers is not None:
        Net.configure_optimizers = configure_optimizers
    return Net


@pytest.mark.parametrize("way", ["configure_lion", "callback"])
def test_lightning_helpers_take_a_discovered_program(tmp_path, way):
    """configure_lion(optimizer_class=...) and LionCallback(optimizer_class=...) build DiscoveredOptimizer
    (which has no betas: its program holds its constants)."""
    pl = pytest.importorskip("lightning.pytorch")
    from lion_integrations.lightning import LionCallback, configure_lion

    def configure_optimizers(module):
        if way == "configure_lion":
            return configure_lion(module, lr=0.01, weight_decay=0.1, optimizer_class=DiscoveredOptimizer, program="lion")
        return torch.optim.AdamW(module.parameters(), lr=0.03, weight_decay=0.01)

    callbacks = [] if way == "configure_lion" else [
        LionCallback(optimizer_class="lion_integrations.discovery.DiscoveredOptimizer", optimizer_kwargs={"program": "lion"})]
    model = _regression_net(pl, configure_optimizers)()
    before = model.layer.weight.detach().clone()
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(model)
    (optimizer,) = trainer.optimizers
    assert type(optimizer) is DiscoveredOptimizer and program_hash(parse(optimizer.param_groups[0]["program"])) == program_hash(LION)
    assert [g["lr"] for g in optimizer.param_groups][0] == pytest.approx(0.01)  # AdamW's 0.03 / 3 for the callback
    assert not torch.equal(model.layer.weight.detach(), before)


def test_lightning_cli_takes_a_discovered_program(tmp_path):
    pytest.importorskip("jsonargparse")
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.cli import LightningCLI

    Net = _regression_net(pl)
    program = "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)"
    before = Net().layer.weight.detach().clone()
    cli = LightningCLI(Net, args=[
        "fit", "--optimizer", "lion_integrations.discovery.DiscoveredOptimizer", "--optimizer.program", program,
        "--optimizer.lr", "0.01", "--trainer.max_steps", "2", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", f"--trainer.default_root_dir={tmp_path}",
    ])
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is DiscoveredOptimizer and cli.trainer.global_step == 2
    assert program_hash(optimizer.program) == program_hash(LION)
    moved = (cli.model.layer.weight.detach() - before).abs()  # two sign steps of lr: 0.02 each, or 0 if they cancel
    assert torch.all(((moved - 0.02).abs() < 1e-6) | (moved < 1e-6)) and (moved > 0.01).any()
