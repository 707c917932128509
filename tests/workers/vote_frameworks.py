"""Worker for tests/vote/test_distributed.py: the sign-vote mode from Hugging Face's Trainer
(``optim="lion_vote"``), Lightning (``DDPStrategy(ddp_comm_hook=keep_local_gradients)``) and
Accelerate (``skip_gradient_allreduce(model)`` after ``prepare``), 2 CPU processes on gloo.

    torchrun --nproc-per-node=2 vote_frameworks.py (hf | lightning | accelerate) REPORT.json DIR

Each trains a few steps with gradient accumulation 2, then reports (rank 0 writes REPORT.json)
whether every gradient was kept local by the hook, the largest difference of the parameters and of
the momenta between ranks, and the warnings the optimizer gave.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lion_integrations.vote import SignVoteLion, count_collectives, keep_local_gradients, skip_gradient_allreduce
from lion_integrations.vote.ddp import LOCAL_GRADIENT_PARAMS
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)


class Pairs(Dataset):
    def __init__(self, count: int = 64):
        generator = torch.Generator().manual_seed(5)
        self.inputs = torch.randn(count, 8, generator=generator)
        self.targets = self.inputs[:, :2].sum(1, keepdim=True).sin()

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return {"inputs": self.inputs[index], "labels": self.targets[index]}


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, inputs, labels=None):
        output = self.body(inputs)
        return {"loss": nn.functional.mse_loss(output, labels), "logits": output}


def rank_difference(tensors) -> float:
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


class Recorder:
    """Warnings from SignVoteLion, the collectives issued, and the optimizer steps taken, while training."""

    def __enter__(self):
        self.warnings = warnings.catch_warnings(record=True)
        self.caught = self.warnings.__enter__()
        warnings.simplefilter("always")
        self.counting = count_collectives()
        self.log = self.counting.__enter__()
        self.steps = 0
        return self

    def count_steps(self, optimizer) -> None:
        optimizer.register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))

    def __exit__(self, *exc):
        self.counting.__exit__(*exc)
        self.warnings.__exit__(*exc)


def report_of(optimizer: SignVoteLion, params, recorder: Recorder) -> dict:
    return {
        "optimizer": type(optimizer).__name__,
        "steps": recorder.steps,
        "ballot_gathers": sum(name.startswith("all_gather_") for name in recorder.log.names()),
        "kept_local": all(p in LOCAL_GRADIENT_PARAMS for p in params),
        "params_rank_difference": rank_difference(params),
        "momenta_rank_difference": rank_difference([optimizer.state[p]["exp_avg"] for p in params]),
        "warnings": [str(w.message) for w in recorder.caught if "SignVoteLion" in str(w.message)],
    }


def hugging_face(directory: str) -> dict:
    from transformers import Trainer, TrainingArguments

    import lion_integrations.hf  # noqa: F401  (registers optim="lion_vote")

    args = TrainingArguments(
        output_dir=directory, optim="lion_vote", optim_args="vote=average", learning_rate=1e-2, weight_decay=0.1,
        per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=5, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    model = Regressor()
    trainer = Trainer(model=model, args=args, train_dataset=Pairs())
    trainer.create_optimizer()
    with Recorder() as recorder:
        recorder.count_steps(trainer.optimizer)
        trainer.train()
    optimizer = trainer.optimizer.optimizer  # inside Accelerate's wrapper
    report = report_of(optimizer, list(model.parameters()), recorder)
    report["vote"] = optimizer.vote
    report["ddp"] = type(trainer.model_wrapped).__name__
    return report


def lightning(directory: str) -> dict:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from lion_integrations.lightning import configure_lion

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Regressor()

        def training_step(self, batch, batch_idx):
            return self.net(**batch)["loss"]

        def train_dataloader(self):
            return DataLoader(Pairs(), batch_size=4)

        def configure_optimizers(self):
            config = configure_lion(self, lr=1e-2, weight_decay=0.1, optimizer_class="lion_vote")
            recorder.count_steps(config["optimizer"])
            return config

    module = Module()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(ddp_comm_hook=keep_local_gradients), max_steps=5,
        accumulate_grad_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=directory,
    )
    with Recorder() as recorder:
        trainer.fit(module)
    return report_of(trainer.optimizers[0], list(module.parameters()), recorder)


def accelerate(directory: str) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = Regressor()
    optimizer = SignVoteLion(model.parameters(), lr=1e-2, weight_decay=0.1, skip_ddp_allreduce=False)
    loader = DataLoader(Pairs(), batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    skip_gradient_allreduce(model)
    with Recorder() as recorder:
        recorder.count_steps(optimizer.optimizer)
        for batch in loader:
            with accelerator.accumulate(model):
                accelerator.backward(model(**batch)["loss"])
                optimizer.step()
                optimizer.zero_grad()
    report = report_of(optimizer.optimizer, list(accelerator.unwrap_model(model).parameters()), recorder)
    report["ddp"] = type(model).__name__
    return report


def main() -> None:
    mode, report_path, directory = sys.argv[1:4]
    report = {"hf": hugging_face, "lightning": lightning, "accelerate": accelerate}[mode](directory)
    if dist.get_rank() == 0:
        Path(report_path).write_text(json.dumps(report))
    dist.barrier()
    exit_now()


if __name__ == "__main__":
    main()
