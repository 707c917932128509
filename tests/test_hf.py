"""Hugging Face Trainer integration: optim="lion" registration, dispatch, training, resume, runner."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lion_integrations  # noqa: E402
import lion_integrations.hf as hf  # noqa: E402
from lion_integrations import Lion  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments  # noqa: E402
from transformers.training_args import OptimizerNames  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_GPT2 = dict(n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
BLOCK = 32


def char_blocks(n_blocks: int = 64) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Character-level blocks of `textwrap`'s own source: (examples, vocab size)."""
    text = Path(textwrap.__file__).read_text()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    blocks = [ids[i * BLOCK:(i + 1) * BLOCK] for i in range(n_blocks)]
    return [{"input_ids": b, "labels": b} for b in blocks], len(vocab)


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, **TINY_GPT2))


def training_args(output_dir: Path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(output_dir), optim="lion", learning_rate=1e-3, weight_decay=0.1,
        per_device_train_batch_size=8, max_steps=30, logging_steps=5, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, use_cpu=True, dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    return TrainingArguments(**{**options, **overrides})


def unwrapped(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The user's optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# --- registration -----------------------------------------------------------------------------


def test_lion_is_a_real_optimizer_names_member():
    member = OptimizerNames("lion")
    assert member is OptimizerNames.LION_INTEGRATIONS is OptimizerNames["LION_INTEGRATIONS"]
    assert member in list(OptimizerNames) and member == "lion" and member.value == "lion"
    # Built like a declared member: same attributes as a native one (plus how it pickles).
    assert sorted(vars(member).keys() - {"__reduce_ex__"}) == sorted(vars(OptimizerNames.SGD))
    assert TrainingArguments(output_dir="unused", optim="lion", report_to="none").optim is member


def test_register_is_idempotent_and_keeps_bitsandbytes_names():
    count = len(OptimizerNames)
    assert hf.register() == hf.register() == hf.available_names()
    assert len(OptimizerNames) == len(list(OptimizerNames)) == count
    assert OptimizerNames.LION.value == "lion_32bit"  # transformers' bitsandbytes member stays as it is
    for value in ("lion_32bit", "lion_8bit", "paged_lion_32bit", "paged_lion_8bit"):
        assert OptimizerNames(value).name != "LION_INTEGRATIONS"


def test_handler_table_routes_our_names_only():
    trainer_optimizer = pytest.importorskip("transformers.trainer_optimizer")
    handlers = getattr(trainer_optimizer, "_OPTIMIZER_HANDLERS", None)
    if handlers is None:
        pytest.skip("transformers < 5: no handler table (legacy route tested below)")
    assert handlers[OptimizerNames("lion")] is hf.registration.optimizer_handler
    for member in (OptimizerNames.LION, OptimizerNames.LION_8BIT, OptimizerNames.PAGED_LION):
        assert handlers[member] is trainer_optimizer._get_bitsandbytes_optimizer


def test_bitsandbytes_lion_32bit_unchanged():
    pytest.importorskip("bitsandbytes")
    args = TrainingArguments(output_dir="unused", optim="lion_32bit", report_to="none")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls.__module__.startswith("bitsandbytes")
    assert kwargs["betas"] == (args.adam_beta1, args.adam_beta2) == (0.9, 0.999)


def test_legacy_route_wraps_and_delegates():
    """The transformers < 5 path, run here on a stand-in Trainer class."""

    class OldTrainer:
        @staticmethod
        def get_optimizer_cls_and_kwargs(args, model=None):
            return "original", {"optim": args.optim}

    original = OldTrainer.__dict__["get_optimizer_cls_and_kwargs"].__func__
    hf.registration.route_legacy_trainer(OldTrainer)
    hf.registration.route_legacy_trainer(OldTrainer)  # idempotent: wrapped once
    assert OldTrainer.get_optimizer_cls_and_kwargs.__wrapped__ is original

    args = TrainingArguments(output_dir="unused", optim="lion", optim_args="beta2=0.98", report_to="none")
    cls, kwargs = OldTrainer.get_optimizer_cls_and_kwargs(args)
    assert cls is Lion and kwargs["betas"] == (0.9, 0.98)
    sgd = TrainingArguments(output_dir="unused", optim="sgd", report_to="none")
    assert OldTrainer.get_optimizer_cls_and_kwargs(sgd) == ("original", {"optim": OptimizerNames.SGD})


def test_quantized_names_only_when_the_class_exists():
    for name in ("lion_q8", "lion_q4"):
        if hf.optimizer_class(name) is None:
            with pytest.raises(ValueError, match=hf.VARIANTS[name][1]):
                OptimizerNames(name)
            assert name not in [member.value for member in OptimizerNames]
        else:
            args = TrainingArguments(output_dir="unused", optim=name, optim_args="block_size=128", report_to="none")
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
            assert cls is hf.optimizer_class(name) and kwargs["betas"] == hf.DEFAULT_BETAS
            assert kwargs["block_size"] == 128
            args.optim_args = "block_sise=128"
            with pytest.raises(ValueError, match="Unknown optim_args key 'block_sise'.*block_size"):
                Trainer.get_optimizer_cls_and_kwargs(args)


def test_variant_without_its_class_is_left_out(monkeypatch):
    monkeypatch.setitem(hf.VARIANTS, "lion_q2", ("LION_INTEGRATIONS_Q2", "Lion2bit"))
    assert "lion_q2" not in hf.register()
    assert "lion_q2" not in [member.value for member in OptimizerNames]
    with pytest.raises(ValueError, match="lion_q2 is not a valid OptimizerNames.*Lion2bit"):
        TrainingArguments(output_dir="unused", optim="lion_q2", report_to="none")


def test_import_without_transformers_names_the_hf_extra(monkeypatch):
    for name in [name for name in sys.modules if name == "transformers" or name.startswith("transformers.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "lion_integrations.hf")
    monkeypatch.delattr(lion_integrations, "hf", raising=False)
    with pytest.raises(ImportError, match=r"lion-integrations\[hf\]"):
        importlib.import_module("lion_integrations.hf")


# --- HfArgumentParser -------------------------------------------------------------------------


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


# --- optim_args -------------------------------------------------------------------------------


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


# --- training ---------------------------------------------------------------------------------


def test_trainer_trains_tiny_gpt2_with_lion(tmp_path):
    """Default Lion options (fused=None: compiled when this machine can)."""
    examples, vocab = char_blocks()
    trainer = Trainer(model=tiny_gpt2(vocab), args=training_args(tmp_path), train_dataset=examples)
    trainer.train()

    optimizer = unwrapped(trainer.optimizer)
    assert type(optimizer) is Lion
    assert trainer.args.adam_beta2 == 0.999
    assert all(group["betas"] == (0.9, 0.99) and group["fused"] is None for group in optimizer.param_groups)
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


# --- runner -----------------------------------------------------------------------------------

STOCK_SCRIPT = """\
import atexit, json, os, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments
from stock_helper import EXAMPLES  # next to this script: sys.path[0] must be the script's folder

args, = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
torch.manual_seed(0)
config = GPT2Config(vocab_size=16, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)
trainer = Trainer(model=model, args=args, train_dataset=EXAMPLES)
if args.max_steps > 0:
    trainer.train()
optimizer = getattr(trainer.create_optimizer(), "optimizer", trainer.optimizer)
result = dict(
    name=__name__, optim=args.optim.value, cls=type(optimizer).__module__ + "." + type(optimizer).__name__,
    betas=optimizer.param_groups[0]["betas"], rank=args.process_index, world_size=args.world_size,
    checksum=sum(p.double().sum().item() for p in model.parameters()),
)
os.makedirs(args.output_dir, exist_ok=True)
with open(os.path.join(args.output_dir, f"result-{args.process_index}.json"), "w") as file:
    json.dump(result, file)
# An exit handler, as trackers and loggers register: it must still run when the process ends.
atexit.register(lambda: open(os.path.join(args.output_dir, f"exited-{args.process_index}"), "w").close())
"""

HELPER = """\
import torch
EXAMPLES = [{"input_ids": torch.arange(8) % 16, "labels": torch.arange(8) % 16} for _ in range(16)]
"""


@pytest.fixture
def stock_script(tmp_path):
    (tmp_path / "stock_helper.py").write_text(HELPER)
    script = tmp_path / "stock_train.py"
    script.write_text(STOCK_SCRIPT)
    return script


def script_args(tmp_path, max_steps=0):
    return ["--output_dir", str(tmp_path / "out"), "--optim", "lion", "--report_to", "none",
            "--max_steps", str(max_steps), "--use_cpu", "--optim_args", "fused=false", "--save_strategy", "no"]


def run_python(*command, cwd, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def script_results(tmp_path) -> list[dict]:
    """What each process of the stock script wrote, by rank."""
    return [json.loads(path.read_text()) for path in sorted((tmp_path / "out").glob("result-*.json"))]


def test_runner_registers_then_runs_stock_script(stock_script, tmp_path):
    direct = run_python(str(stock_script), *script_args(tmp_path), cwd=tmp_path)
    assert direct.returncode != 0 and "invalid choice: 'lion'" in direct.stderr

    result = run_python("-m", "lion_integrations.run", str(stock_script), *script_args(tmp_path, 2), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    [outcome] = script_results(tmp_path)
    assert outcome["name"] == "__main__" and outcome["optim"] == "lion"
    assert outcome["cls"] == "lion_integrations.optimizer.Lion" and outcome["betas"] == [0.9, 0.99]


def test_runner_runs_a_module_as_main(tmp_path, monkeypatch):
    (tmp_path / "argv_probe.py").write_text(
        "import json, sys\n"
        "from transformers import HfArgumentParser, TrainingArguments\n"
        "args, = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()\n"
        "json.dump([__name__, args.optim.value, sys.argv[1:]], open(args.output_dir + '.json', 'w'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    from lion_integrations.run import main

    argv = ["--output_dir", str(tmp_path / "probe"), "--optim", "lion", "--report_to", "none"]
    main(["-m", "argv_probe", *argv])
    assert json.loads((tmp_path / "probe.json").read_text()) == ["__main__", "lion", argv]


def test_runner_usage_errors(capsys):
    from lion_integrations.run import main

    for argv in ([], ["-m"], ["no_such_script.py", "--optim", "lion"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m lion_integrations.run" in err and "'no_such_script.py'" in err


def assert_two_replicas_trained_with_lion(tmp_path) -> None:
    outcomes = script_results(tmp_path)
    assert [(o["rank"], o["world_size"]) for o in outcomes] == [(0, 2), (1, 2)]
    expected = ("__main__", "lion", "lion_integrations.optimizer.Lion")
    assert {(o["name"], o["optim"], o["cls"]) for o in outcomes} == {expected}
    # DDP with Lion keeps the replicas identical.
    assert outcomes[0]["checksum"] == outcomes[1]["checksum"]
    assert sorted(path.name for path in (tmp_path / "out").glob("exited-*")) == ["exited-0", "exited-1"]


@pytest.mark.multiprocess
def test_runner_under_torchrun(stock_script, tmp_path, torchrun):
    torchrun("-m", "lion_integrations.run", stock_script, *script_args(tmp_path, 3))
    assert_two_replicas_trained_with_lion(tmp_path)


@pytest.mark.multiprocess
def test_runner_under_accelerate_launch(stock_script, tmp_path):
    pytest.importorskip("accelerate")
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = run_python(*launch, "-m", "lion_integrations.run", str(stock_script), *script_args(tmp_path, 3),
                        cwd=REPO, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_two_replicas_trained_with_lion(tmp_path)


# --- recipe -----------------------------------------------------------------------------------


def test_hf_finetune_recipe_compares_lion_and_adamw(tmp_path, capsys):
    recipe = runpy.run_path(str(REPO / "recipes" / "hf_finetune.py"), run_name="recipe")
    rows = recipe["main"]([
        "--output_dir", str(tmp_path), "--max_steps", "6", "--logging_steps", "3", "--block_size", "16",
        "--n_embd", "16", "--max_train_blocks", "64", "--max_eval_blocks", "8", "--optim_args", "fused=false",
    ])
    lion, adamw = rows
    assert (lion["optim"], lion["class"], adamw["optim"], adamw["class"]) == ("lion", "Lion", "adamw_torch", "AdamW")
    # --learning_rate/--weight_decay are the AdamW setting; Lion's come from from_adamw (ratio 3).
    assert adamw["lr"] == 3e-3 and adamw["weight_decay"] == 0.1
    assert lion["lr"] == pytest.approx(1e-3) and lion["weight_decay"] == pytest.approx(0.3)
    assert all(math.isfinite(row["eval_loss"]) and math.isfinite(row["train_loss"]) for row in rows)
    table = capsys.readouterr().out
    assert "eval loss" in table and "\nlion " in table and "\nadamw_torch " in table
