"""bf16 weights through Hugging Face: optim_args kahan_sum / stochastic_rounding on a bf16 model (issue 14)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from lion_integrations import Lion, Lion8bit
from tests.helpers.low_precision import compensated


# --- Hugging Face ------------------------------------------------------------------------------------


@pytest.fixture
def hf_trainer(tmp_path):
    pytest.importorskip("transformers")
    import lion_integrations.hf  # noqa: F401  (registers optim="lion", ...)
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    text = Path(textwrap.__file__).read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text[: 16 * 32]])
    examples = [{"input_ids": block, "labels": block} for block in ids.view(16, 32)]

    def make(optim: str, optim_args: str) -> Trainer:
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=32, n_layer=1, n_head=2)
        model = GPT2LMHeadModel(config).to(torch.bfloat16)  # as from_pretrained(torch_dtype=torch.bfloat16)
        args = TrainingArguments(
            output_dir=str(tmp_path), optim=optim, optim_args=optim_args, learning_rate=1e-3, max_steps=3,
            per_device_train_batch_size=8, save_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=True, dataloader_num_workers=0,
        )
        return Trainer(model=model, args=args, train_dataset=examples)

    return make


@pytest.mark.parametrize(("optim", "cls"), [("lion", Lion), ("lion_q8", Lion8bit)])
def test_hf_optim_args_kahan_sum_trains_bf16_weights_with_buffers(hf_trainer, optim, cls):
    trainer = hf_trainer(optim, "kahan_sum=true,fused=false")
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(optimizer) is cls and all(group["kahan_sum"] is True for group in optimizer.param_groups)
    flags = compensated(optimizer)
    assert flags and all(flags)


def test_hf_optim_args_stochastic_rounding(hf_trainer):
    trainer = hf_trainer("lion", "stochastic_rounding=true,fused=false")
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert all(group["stochastic_rounding"] is True for group in optimizer.param_groups)
    assert not any(compensated(optimizer))


@pytest.mark.parametrize(
    ("optim_args", "error", "message"),
    [
        ("kahan_sum=true,stochastic_rounding=true", ValueError, "kahan_sum=True with stochastic_rounding=True"),
        ("stochastic_rounding=maybe", ValueError, "stochastic_rounding='maybe'.*true or false"),
        ("generator=1", TypeError, "Invalid generator: 1"),
    ],
)
def test_hf_bad_low_precision_optim_args(hf_trainer, optim_args, error, message):
    with pytest.raises(error, match=message):
        hf_trainer("lion", optim_args).create_optimizer()
