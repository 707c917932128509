"""lion_integrations.run: registers the optim names, then runs an unmodified training script or
module as __main__ (also under torchrun and accelerate launch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers")

from tests.helpers import REPO  # noqa: E402


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
