"""Robustness through the adapters (issue 13): resuming an AdamW run's checkpoint with Lion fails
with a message naming what differs, in Hugging Face's Trainer and in Lightning, instead of
running on AdamW's state and hyperparameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ADAMW_STATE = r"holds 'exp_avg_sq', 'step', which Lion does not keep \(it looks like Adam/AdamW state\)"


def test_trainer_resume_of_an_adamw_checkpoint_with_optim_lion_says_why_it_fails(tmp_path):
    transformers = pytest.importorskip("transformers")
    import lion_integrations.hf  # noqa: F401  (registers optim="lion")

    class Regression(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, inputs, labels):
            return {"loss": nn.functional.mse_loss(self.body(inputs).squeeze(-1), labels)}

    generator = torch.Generator().manual_seed(0)
    examples = [{"inputs": torch.randn(4, generator=generator), "labels": torch.randn((), generator=generator)}
                for _ in range(32)]

    def trainer(run: str, optim: str) -> transformers.Trainer:
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / run), optim=optim, learning_rate=1e-3, per_device_train_batch_size=8,
            max_steps=4, save_strategy="steps", save_steps=2, report_to="none", disable_tqdm=True, use_cpu=True,
            dataloader_num_workers=0, remove_unused_columns=False,
        )
        return transformers.Trainer(model=Regression(), args=args, train_dataset=examples)

    trainer("adamw", "adamw_torch").train()
    checkpoint = tmp_path / "adamw" / "checkpoint-2"
    assert "exp_avg_sq" in torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"][0]
    with pytest.raises(ValueError, match=ADAMW_STATE):
        trainer("lion", "lion").train(resume_from_checkpoint=str(checkpoint))
    trainer("fresh", "lion").train()  # the same run without the foreign state trains


def test_lightning_resume_of_an_adamw_checkpoint_into_a_lion_module_says_why_it_fails(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lion_integrations import Lion

    class Net(pl.LightningModule):
        def __init__(self, optimizer: str):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            self.optimizer_name = optimizer

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return nn.functional.mse_loss(self.body(inputs), targets)

        def train_dataloader(self):
            generator = torch.Generator().manual_seed(0)
            data = TensorDataset(torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator))
            return DataLoader(data, batch_size=8)

        def configure_optimizers(self):
            if self.optimizer_name == "adamw":
                return torch.optim.AdamW(self.parameters(), lr=1e-3)
            return Lion(self.parameters(), lr=1e-4, weight_decay=0.1, fused=False)

    def trainer(max_steps: int) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                          max_steps=max_steps)

    run = trainer(2)
    run.fit(Net("adamw"))
    run.save_checkpoint(tmp_path / "adamw.ckpt")
    with pytest.raises(ValueError, match=ADAMW_STATE):
        trainer(4).fit(Net("lion"), ckpt_path=tmp_path / "adamw.ckpt")
