"""Trainer with optim="lion" (and its quantized and discovered variants): it trains, groups decay as
Trainer does, and resumes from a checkpoint bit for bit; a DiscoveredOptimizer passed in also steps."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lion_integrations.hf as hf  # noqa: E402
from lion_integrations import Lion, avx512  # noqa: E402
from lion_integrations.discovery import BUILTIN, DiscoveredOptimizer  # noqa: E402
from transformers import Trainer  # noqa: E402
from tests.helpers.hf import char_blocks, losses, tiny_gpt2, training_args, unwrapped  # noqa: E402


def test_trainer_trains_tiny_gpt2_with_lion(tmp_path):
    """Default Lion options, but for the path: a run this short takes the unfused one (hf.run_length),
    unless the fp32 AVX-512 kernel takes the fused step here (nothing to compile)."""
    examples, vocab = char_blocks()
    trainer = Trainer(model=tiny_gpt2(vocab), args=training_args(tmp_path), train_dataset=examples)
    trainer.train()

    optimizer = unwrapped(trainer.optimizer)
    assert type(optimizer) is Lion
    assert trainer.args.adam_beta2 == 0.999
    fused = None if avx512.unavailable_reason() is None else False
    assert all(group["betas"] == (0.9, 0.99) and group["fused"] is fused for group in optimizer.param_groups)
    # Trainer's decay/no-decay grouping, with Lion's weight decay.
    decay_names = set(trainer.get_decay_parameter_names(trainer.model))
    named = dict(trainer.model.named_parameters())
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for n, p in named.items() if n in decay_names}
    assert {id(p) for p in not_decayed["params"]} == {id(p) for n, p in named.items() if n not in decay_names}
    assert "transformer.h.0.ln_1.weight" not in decay_names and "transformer.h.0.attn.c_attn.weight" in decay_names
    assert all("exp_avg" in optimizer.state[p] for p in decayed["params"])

    history = losses(trainer)
    assert len(history) == 6
    assert history[-1] < history[0] - 0.5, history


QUANTIZED_OPTIONS = "block_size=64,min_quantized_size=0"  # quantize every tensor of the tiny model


def variant(name: str):
    """A pytest param for optim `name`, skipped while lion_integrations lacks its class."""
    missing = hf.optimizer_class(name) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"no lion_integrations.{hf.VARIANTS[name][1]}"))


@pytest.mark.parametrize("name", ["lion", variant("lion_q8"), variant("lion_q4")])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, name):
    examples, vocab = char_blocks()
    optim_args = "fused=false" if name == "lion" else f"fused=false,{QUANTIZED_OPTIONS}"
    options = dict(optim=name, max_steps=12, save_strategy="steps", save_steps=6, optim_args=optim_args,
                   logging_steps=6)

    def trainer(run: str, seed: int = 0) -> Trainer:
        args = training_args(tmp_path / run, **options)
        return Trainer(model=tiny_gpt2(vocab, seed=seed), args=args, train_dataset=examples)

    uninterrupted = trainer("a")
    uninterrupted.train()
    assert type(unwrapped(uninterrupted.optimizer)) is hf.optimizer_class(name)
    checkpoint = tmp_path / "a" / "checkpoint-6"
    assert (checkpoint / "optimizer.pt").is_file()
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert saved["param_groups"][0]["betas"] == (0.9, 0.99) and saved["state"]

    # A fresh model (different initial weights) resumed from step 6.
    resumed = trainer("b", seed=1)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert type(unwrapped(resumed.optimizer)) is hf.optimizer_class(name)
    expected = dict(uninterrupted.model.named_parameters())
    for param_name, param in resumed.model.named_parameters():
        assert torch.equal(param, expected[param_name]), param_name

    # Control: without the saved momentum the run diverges, so the comparison above can fail.
    (checkpoint / "optimizer.pt").unlink()
    no_momentum = trainer("c")
    no_momentum.train(resume_from_checkpoint=str(checkpoint))
    assert not all(torch.equal(param, expected[n]) for n, param in no_momentum.model.named_parameters())


@pytest.mark.parametrize("name", [variant("lion_q8"), variant("lion_q4")])
def test_trainer_trains_with_quantized_variant(tmp_path, name):
    examples, vocab = char_blocks()
    args = training_args(tmp_path, optim=name, optim_args=f"{QUANTIZED_OPTIONS},fused=false")
    trainer = Trainer(model=tiny_gpt2(vocab), args=args, train_dataset=examples)
    trainer.train()
    optimizer = unwrapped(trainer.optimizer)
    assert type(optimizer) is hf.optimizer_class(name)
    assert all(g["betas"] == (0.9, 0.99) and g["block_size"] == 64 for g in optimizer.param_groups)
    assert any(optimizer.is_quantized(p, g) for g in optimizer.param_groups for p in g["params"])
    history = losses(trainer)
    assert history[-1] < history[0] - 0.5, history


def test_trainer_runs_a_discovered_program_by_name(tmp_path):
    from lion_integrations.discovery import DiscoveredOptimizer

    program = tmp_path / "program.txt"
    program.write_text("update = sign(interp(g, m, 0.9)) * lr\nm = interp(g, m, 0.99)\n")
    examples, vocab = char_blocks()
    args = training_args(tmp_path, optim="lion_discovered", optim_args=f"program={program}")
    trainer = Trainer(model=tiny_gpt2(vocab), args=args, train_dataset=examples)
    trainer.train()
    optimizer = unwrapped(trainer.optimizer)
    assert type(optimizer) is DiscoveredOptimizer
    assert "sign(t2)" in optimizer.param_groups[0]["program"] and "interp(g, m, 0.9)" in optimizer.param_groups[0]["program"]
    history = losses(trainer)
    assert history[-1] < history[0] - 0.5, history
    with pytest.raises(ValueError, match="takes no betas"):
        hf.lion_cls_and_kwargs("lion_discovered", args, {"beta1": "0.9"})


def test_hf_trainer_steps_a_discovered_optimizer(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x, labels=None):
            prediction = self.layer(x)
            return {"loss": torch.nn.functional.mse_loss(prediction, labels), "logits": prediction}

    generator = torch.Generator().manual_seed(0)
    examples = [{"x": x, "labels": x.sum(0, keepdim=True)} for x in torch.randn(16, 4, generator=generator)]
    model = Regression()
    before = model.layer.weight.detach().clone()
    optimizer = DiscoveredOptimizer(model.parameters(), program=BUILTIN["lion"], lr=0.01)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, learning_rate=0.01,
        lr_scheduler_type="constant", save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples, optimizers=(optimizer, None))
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer is optimizer
    moved = (model.layer.weight.detach() - before).abs()  # three sign steps of 0.01 (some may cancel)
    assert trainer.state.global_step == 3 and (moved > 0.005).any()
    assert torch.all(torch.isclose(moved * 100, moved.mul(100).round(), atol=1e-4))
