"""HfArgumentParser and optim_args: "--optim lion" parses, optim_args set betas and options, bad
entries are clear errors, saved TrainingArguments load anywhere, and betas are logged."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lion_integrations.hf as hf  # noqa: E402
from lion_integrations import Lion  # noqa: E402
from transformers import HfArgumentParser, Trainer, TrainingArguments  # noqa: E402
from transformers.training_args import OptimizerNames  # noqa: E402
from tests.helpers.hf import char_blocks, tiny_gpt2, training_args  # noqa: E402


def test_hf_argument_parser_accepts_lion(tmp_path):
    parser = HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--optim", "lion", "--optim_args", "beta1=0.95,beta2=0.98",
         "--report_to", "none"]
    )
    assert args.optim is OptimizerNames.LION_INTEGRATIONS
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls is Lion and kwargs["betas"] == (0.95, 0.98)
    (bnb_args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "lion_32bit"])
    assert bnb_args.optim is OptimizerNames.LION


def test_hf_argument_parser_rejects_unknown_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--optim", "lion_typo"]
        )
    assert "invalid choice: 'lion_typo'" in capsys.readouterr().err


def test_optim_args_set_betas_and_options(tmp_path):
    examples, vocab = char_blocks(8)
    args = training_args(tmp_path, optim_args="beta1=0.95, beta2=0.98,fused=false,momentum_dtype=float32")
    trainer = Trainer(model=tiny_gpt2(vocab), args=args, train_dataset=examples)
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is Lion
    for group in optimizer.param_groups:
        assert group["betas"] == (0.95, 0.98)
        assert group["fused"] is False and group["momentum_dtype"] is torch.float32
        assert group["lr"] == 1e-3


@pytest.mark.parametrize(
    "optim_args, message",
    [
        ("beta3=0.5", r"Unknown optim_args key 'beta3'.*accepted: beta1, beta2, .*fused"),
        ("lr=0.1", r"'lr'.*learning_rate"),
        ("weight_decay=0.1", r"'weight_decay'.*--weight_decay"),
        ("betas=0.9", r"'betas'.*beta1=\.\.\.,beta2=\.\.\."),
        ("beta1=abc", r"beta1='abc'.*\[0, 1\)"),
        ("beta2=1.5", r"beta2='1.5'.*\[0, 1\)"),
        ("fused=maybe", r"fused='maybe'.*true or false"),
        ("momentum_dtype=int8", r"momentum_dtype"),
        ("beta1=0.9,beta1=0.8", r"'beta1' is given twice \(beta1=0.9, beta1=0.8\)"),
    ],
)
def test_bad_optim_args_are_clear_errors(tmp_path, optim_args, message):
    examples, vocab = char_blocks(8)
    args = training_args(tmp_path, optim_args=optim_args)
    with pytest.raises(ValueError, match=message):
        Trainer(model=tiny_gpt2(vocab), args=args, train_dataset=examples).create_optimizer()


@pytest.mark.parametrize("text", ["beta1", "beta1=0.9=0.8", "=0.9"])
def test_malformed_optim_args_entry(text):
    with pytest.raises(ValueError, match="expected key=value"):
        hf.parse_optim_args(text)


def test_saved_training_args_load_in_a_process_that_never_imported_us(tmp_path):
    """Trainer checkpoints keep TrainingArguments in training_args.bin (a pickle)."""
    path = tmp_path / "training_args.bin"
    torch.save(TrainingArguments(output_dir=str(tmp_path), optim="lion_q8", report_to=[]), path)
    code = (
        "import sys, torch; args = torch.load(sys.argv[1], weights_only=False); "
        "print(type(args.optim).__name__, args.optim.value)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["OptimizerNames", "lion_q8"]


def test_bad_optim_name_is_a_clear_error():
    with pytest.raises(ValueError, match="lion_typo is not a valid OptimizerNames.*'lion'"):
        TrainingArguments(output_dir="unused", optim="lion_typo", report_to="none")


def test_logs_betas_and_ignored_adam_betas(caplog):
    caplog.set_level(logging.INFO, logger="lion_integrations.hf")
    Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(output_dir="unused", optim="lion", report_to="none"))
    assert "betas=(0.9, 0.99)" in caplog.text and "ignored for Lion" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    args = TrainingArguments(output_dir="unused", optim="lion", adam_beta2=0.95, report_to="none")
    Trainer.get_optimizer_cls_and_kwargs(args)
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "adam_beta2=0.95" in r.getMessage()]
