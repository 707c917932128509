"""LightningCLI: the short optimizer name once the package is imported, optimizer flags, and a YAML
class path that trains."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lion_integrations import Lion  # noqa: E402
from tests.helpers.lightning import Net  # noqa: E402


CLI_SCRIPT = """
import sys
import torch
from lightning.pytorch.cli import LightningCLI
import lightning.pytorch as pl
assert "lion_integrations" not in sys.modules

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

def optimizer(name):
    try:
        cli = LightningCLI(Net, args=["--optimizer", name, "--optimizer.lr", "3e-4"], run=False,
                           trainer_defaults={"logger": False})
    except SystemExit:
        return "rejected"
    opt = cli.model.configure_optimizers()
    return f"{type(opt).__module__}.{type(opt).__name__} lr={opt.param_groups[0]['lr']}"

print("RESULT", optimizer("Lion"), "|", optimizer("lion_integrations.Lion"), "|", optimizer("Lion"))
"""


def test_cli_short_name_resolves_once_the_package_is_imported(tmp_path):
    """In a fresh interpreter: 'Lion' is unknown until lion_integrations is imported (here by the
    class-path form), after which the short name works."""
    script = tmp_path / "cli_names.py"
    script.write_text(CLI_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    lion = "lion_integrations.optimizer.Lion lr=0.0003"
    assert line == f"RESULT rejected | {lion} | {lion}"


@pytest.mark.parametrize(
    "args",
    [
        ["--optimizer", "lion_integrations.Lion", "--optimizer.lr", "3e-4"],
        # The short name `Lion` is tested in a fresh interpreter above: here other tests may have
        # imported bitsandbytes, whose `bitsandbytes.optim.Lion` makes jsonargparse ask for a full path.
        ["--optimizer=lion_integrations.Lion", "--optimizer.lr=3e-4", "--optimizer.betas=[0.95, 0.98]",
         "--optimizer.fused=false"],
    ],
)
def test_cli_optimizer_flags(args):
    cli = LightningCLI(Net, args=args, run=False, trainer_defaults={"logger": False})
    optimizer = cli.model.configure_optimizers()
    assert type(optimizer) is Lion
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    if "--optimizer.fused=false" in args:
        assert optimizer.defaults["fused"] is False and optimizer.defaults["betas"] == (0.95, 0.98)


def test_cli_yaml_class_path_trains(tmp_path):
    config = tmp_path / "input.yaml"
    config.write_text(
        "optimizer:\n"
        "  class_path: lion_integrations.Lion\n"
        "  init_args:\n    lr: 3e-4\n    weight_decay: 0.1\n    fused: false\n"
        "lr_scheduler:\n"
        "  class_path: torch.optim.lr_scheduler.StepLR\n"
        "  init_args:\n    step_size: 1\n    gamma: 0.5\n"
        "trainer:\n  max_steps: 2\n  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n"
    )
    model_before = Net()
    cli = LightningCLI(Net, args=["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is Lion
    group = optimizer.param_groups[0]
    assert (group["initial_lr"], group["weight_decay"], group["fused"]) == (pytest.approx(3e-4), 0.1, False)
    assert cli.trainer.lr_scheduler_configs[0].scheduler.optimizer is optimizer
    assert cli.trainer.global_step == 2
    assert not torch.equal(cli.model.body[0].weight, model_before.body[0].weight)
