"""What a stock Trainer script shows its user: which optimizer was built (at transformers' --log_level
info), whether the first step compiles or the run is too short for it, and ranks that train alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lion_integrations.hf as hf  # noqa: E402
from lion_integrations import avx512  # noqa: E402
from lion_integrations.hf import launch, run_length  # noqa: E402
from transformers import TrainingArguments  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402
from tests.helpers import REPO  # noqa: E402

CHOICE = "optim=lion: Lion with betas=(0.9, 0.99)"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture
def transformers_records():
    """Records reaching transformers' library logger (as its default handler sees them); its
    verbosity and our loggers' levels are restored afterwards."""
    handler = Records()
    library = logging.getLogger("transformers")
    verbosity = transformers_logging.get_verbosity()
    ours = {name: logging.getLogger(name).level for name in ("lion_integrations", "lion_integrations.hf")}
    library.addHandler(handler)
    yield handler
    library.removeHandler(handler)
    transformers_logging.set_verbosity(verbosity)
    for name, level in ours.items():
        logging.getLogger(name).setLevel(level)


def args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path), optim="lion", report_to="none", use_cpu=True, max_steps=10)
    return TrainingArguments(**{**options, **overrides})


def model_with(numel: int) -> torch.nn.Module:
    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.zeros(numel))
    model.frozen = torch.nn.Parameter(torch.zeros(10**6), requires_grad=False)
    return model


# --- where the line saying which optimizer was built goes --------------------------------------


def test_choice_shows_through_transformers_logging_at_its_info_verbosity(tmp_path, transformers_records, caplog):
    """run_clm.py --log_level info: transformers at INFO, our logger left at the root's WARNING."""
    logging.getLogger("lion_integrations").setLevel(logging.NOTSET)
    caplog.set_level(logging.WARNING)
    transformers_logging.set_verbosity_info()
    hf.lion_cls_and_kwargs("lion", args(tmp_path), {})
    [record] = [r for r in transformers_records.records if CHOICE in r.getMessage()]
    assert record.name == "transformers.lion_integrations.hf.options" and record.levelno == logging.INFO


def test_choice_stays_on_our_logger_when_it_shows_info(tmp_path, transformers_records, caplog):
    caplog.set_level(logging.INFO, logger="lion_integrations.hf")
    transformers_logging.set_verbosity_info()
    hf.lion_cls_and_kwargs("lion", args(tmp_path), {})
    assert [r.name for r in caplog.records if CHOICE in r.getMessage()] == ["lion_integrations.hf.options"]
    assert not [m for m in transformers_records.messages() if CHOICE in m]  # said once, not twice


def test_choice_is_quiet_when_nobody_asked_for_info(tmp_path, transformers_records, caplog):
    logging.getLogger("lion_integrations").setLevel(logging.NOTSET)
    caplog.set_level(logging.WARNING)
    transformers_logging.set_verbosity_warning()
    hf.lion_cls_and_kwargs("lion", args(tmp_path), {})
    assert not [m for m in [*transformers_records.messages(), *caplog.messages] if CHOICE in m]


STOCK_SCRIPT = """\
import logging, sys
import torch, transformers
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments

# The logging set-up of transformers' examples (run_clm.py).
logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
args, = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
transformers.utils.logging.set_verbosity(args.get_process_log_level())
transformers.utils.logging.enable_default_handler()
transformers.utils.logging.enable_explicit_format()
model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=16, n_layer=1, n_head=2))
Trainer(model=model, args=args, train_dataset=[]).create_optimizer()
"""


@pytest.mark.parametrize(("log_level", "shown"), [("info", True), ("warning", False)])
def test_stock_script_through_the_runner_shows_the_choice_at_log_level_info(tmp_path, log_level, shown):
    script = tmp_path / "stock_clm.py"
    script.write_text(STOCK_SCRIPT)
    command = [sys.executable, "-m", "lion_integrations.run", str(script), "--output_dir", str(tmp_path / "out"),
               "--optim", "lion", "--use_cpu", "--report_to", "none", "--max_steps", "40", "--log_level", log_level]
    # LION_INTEGRATIONS_SIMD=0: torch.compile's fused step, the one with a compile to repay.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "LION_INTEGRATIONS_SIMD": "0"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert (CHOICE in output) is shown, output[-3000:]
    # 40 steps of a 4k-parameter model: no compile, and at INFO the user is told why.
    assert ("optim=lion: unfused path (fused=False)" in output) is shown


# --- the fused path for the run's length -------------------------------------------------------


def test_fused_pays_off_from_the_threshold_on():
    threshold = run_length.FUSED_MIN_PARAMETER_STEPS
    assert run_length.fused_pays_off(threshold // 100, 100)
    assert not run_length.fused_pays_off(threshold // 100 - 1, 100)
    assert not run_length.fused_pays_off(110_000, 120)  # the tiny GPT-2 of the recipes
    assert run_length.fused_pays_off(124_000_000, 20)  # GPT-2 small, 20 steps


@pytest.fixture
def fresh_announcement(monkeypatch, caplog):
    monkeypatch.setattr(run_length, "_compile_announced", False)
    caplog.set_level(logging.INFO, logger="lion_integrations.hf")
    return caplog


@pytest.mark.usefixtures("without_avx512_kernels")  # torch.compile's fused step
def test_short_run_takes_the_unfused_path_and_says_why(fresh_announcement):
    options = run_length.choose_fused("lion", 120, model_with(110_000), {})
    assert options == {"fused": False}
    [message] = fresh_announcement.messages
    assert "unfused path" in message and "120 steps x 110000 parameters" in message and "fused=true" in message


@pytest.mark.usefixtures("without_avx512_kernels")  # torch.compile's fused step
def test_long_run_keeps_fused_none_and_says_once_that_it_compiles(fresh_announcement):
    model = model_with(100_000)  # the frozen million does not count
    steps = run_length.FUSED_MIN_PARAMETER_STEPS // 100_000
    assert run_length.choose_fused("lion", steps, model, {}) == {}
    assert run_length.choose_fused("lion", steps, model, {}) == {}
    assert [m for m in fresh_announcement.messages if "compiles the fused Lion kernel" in m] == [
        f"optim=lion: {run_length.COMPILE_NOTE}"]
    assert not run_length.fused_pays_off(100_000 - 1, steps)  # just below, the same model would not compile


@pytest.mark.parametrize(
    ("name", "max_steps", "options"),
    [
        ("lion", 10, {"fused": True}),  # asked for: compiles however short
        ("lion", 10, {"fused": None}),  # fused=none given explicitly
        ("lion", -1, {}),  # length set by epochs: unknown when the optimizer is built
        ("lion_q8", 10, {}),  # the quantized variants keep their fused path
    ],
)
def test_rule_leaves_explicit_choices_epoch_runs_and_quantized_variants(fresh_announcement, name, max_steps, options):
    assert run_length.choose_fused(name, max_steps, model_with(100_000), dict(options)) == options


@pytest.mark.skipif(avx512.unavailable_reason() is not None, reason=f"{avx512.unavailable_reason()}")
def test_fp32_on_the_avx512_kernel_has_nothing_to_compile_so_short_runs_stay_fused(fresh_announcement):
    model = model_with(110_000)
    assert run_length.compiled_parameters(run_length.trainable_parameters(model), {}) == []
    assert run_length.choose_fused("lion", 120, model, {}) == {}
    bf16 = model_with(110_000).to(torch.bfloat16)  # bf16 weights take torch.compile's step
    assert run_length.choose_fused("lion", 120, bf16, {}) == {"fused": False}
    assert run_length.choose_fused("lion", 10**5, bf16, {}) == {}
    assert [m for m in fresh_announcement.messages if "compiles the fused Lion kernel" in m] == [
        f"optim=lion: {run_length.COMPILE_NOTE}"]


@pytest.mark.usefixtures("without_avx512_kernels")  # torch.compile's fused step
def test_explicit_fused_false_and_small_tensors_announce_no_compile(fresh_announcement):
    assert run_length.choose_fused("lion", -1, model_with(100_000), {"fused": False}) == {"fused": False}
    assert run_length.choose_fused("lion", -1, model_with(1000), {}) == {}  # below MIN_FUSED_NUMEL: never compiled
    assert not fresh_announcement.messages


@pytest.mark.usefixtures("without_avx512_kernels")  # torch.compile's fused step
def test_trainer_builds_lion_on_the_path_the_rule_picks(tmp_path, monkeypatch):
    monkeypatch.setattr(run_length, "_compile_announced", True)
    model = model_with(100_000)
    _, short = hf.lion_cls_and_kwargs("lion", args(tmp_path, max_steps=10), {}, model)
    _, asked = hf.lion_cls_and_kwargs("lion", args(tmp_path, max_steps=10), {"fused": "true"}, model)
    _, epochs = hf.lion_cls_and_kwargs("lion", args(tmp_path, max_steps=-1), {}, model)
    assert short["fused"] is False and asked["fused"] is True and "fused" not in epochs


# --- processes that do not form one Trainer world -----------------------------------------------


def test_ranks_that_train_alone_are_warned(tmp_path, monkeypatch):
    training_args = args(tmp_path)
    assert training_args.world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(RuntimeWarning, match=r"WORLD_SIZE=2.*world_size=1.*--use_cpu"):
        hf.lion_cls_and_kwargs("lion", training_args, {})
    for value in ("1", "", "not a number"):
        monkeypatch.setenv("WORLD_SIZE", value)
        assert launch.launched_processes() == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            launch.warn_if_ranks_train_alone(training_args)
    monkeypatch.delenv("WORLD_SIZE")
    assert launch.launched_processes() == 1
