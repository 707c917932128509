"""configure_lion: the grouped optimizer and scheduler config, its schedule in a Trainer, the
Trainer-sized schedule length, optimizer classes by name, and input checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

from lion_integrations import Lion  # noqa: E402
from lion_integrations.lightning import configure_lion, resolve_optimizer_class  # noqa: E402
from lion_integrations.schedules import WarmupSchedule  # noqa: E402
from tests.helpers.lightning import BATCHES_PER_EPOCH, LrRecorder, Net, trainer, weights  # noqa: E402


def test_configure_lion_returns_grouped_optimizer_and_scheduler_config():
    model = Net()
    config = configure_lion(model, lr=3e-4, weight_decay=0.2, scheduler="cosine", warmup_steps=2, total_steps=10,
                            interval="step", frequency=2, fused=False)
    assert set(config) == {"optimizer", "lr_scheduler"}
    optimizer = config["optimizer"]
    assert type(optimizer) is Lion and optimizer.defaults["fused"] is False
    decayed, plain = optimizer.param_groups
    body = model.body
    assert [id(p) for p in decayed["params"]] == [id(body[0].weight), id(body[3].weight)]
    assert {id(p) for p in plain["params"]} == {id(body[0].bias), id(body[1].weight), id(body[1].bias), id(body[3].bias)}
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.2, 0.0)
    assert decayed["betas"] == plain["betas"] == (0.9, 0.99)
    scheduler_config = config["lr_scheduler"]
    assert scheduler_config["interval"] == "step" and scheduler_config["frequency"] == 2
    assert scheduler_config["scheduler"].optimizer is optimizer
    assert scheduler_config["scheduler"].lr_lambdas[0].total_steps == 10
    assert configure_lion(model, lr=1e-4, fused=False).keys() == {"optimizer"}


def test_configure_lion_default_lion_in_trainer_follows_warmup_cosine(tmp_path):
    """Default Lion (fused=None: compiled, or its foreach fallback) in a Trainer; the lr each step
    follows the warmup+cosine schedule sized from trainer.estimated_stepping_batches."""
    model = Net("lion", lr=1e-2, weight_decay=0.0, scheduler="cosine", warmup_steps=2, fused=None)
    recorder = LrRecorder()
    before = weights(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fused fallback notice, where it cannot compile
        trainer(tmp_path, [recorder], max_steps=2 * BATCHES_PER_EPOCH).fit(model)
    schedule = WarmupSchedule(2, 2 * BATCHES_PER_EPOCH, "cosine")
    expected = [1e-2 * schedule(step) for step in range(2 * BATCHES_PER_EPOCH) for _ in range(2)]
    assert [lr for lrs in recorder.lrs for lr in lrs] == pytest.approx(expected, abs=1e-15)
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_configure_lion_total_steps_from_the_trainer():
    from types import SimpleNamespace

    module = nn.Linear(2, 2)  # any nn.Module with a `trainer` works
    module.trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=3)
    length = lambda **kw: configure_lion(module, scheduler="linear", fused=False, **kw)["lr_scheduler"]["scheduler"].lr_lambdas[0].total_steps  # noqa: E731
    assert length() == 10
    assert length(frequency=3) == 4  # scheduler steps: every 3rd optimizer step, rounded up
    assert length(interval="epoch") == 3
    module.trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), max_epochs=-1)
    with pytest.raises(ValueError, match="Invalid total_steps: None, and the Trainer gives no finite length"):
        length()


def test_configure_lion_optimizer_class_and_callable_scheduler():
    model = Net()
    config = configure_lion(
        model, lr=1e-3, optimizer_class="Lion", fused=False, momentum_dtype=torch.float64,
        scheduler=lambda opt: {"scheduler": sched.StepLR(opt, 3), "interval": "epoch", "name": "step"},
    )
    assert config["optimizer"].param_groups[0]["momentum_dtype"] is torch.float64
    assert config["lr_scheduler"]["interval"] == "epoch" and config["lr_scheduler"]["name"] == "step"
    assert config["lr_scheduler"]["frequency"] == 1
    assert resolve_optimizer_class("torch.optim.AdamW") is torch.optim.AdamW
    from lion_integrations import Lion4bit, Lion8bit
    from lion_integrations.discovery import DiscoveredOptimizer

    short_names = {"lion": Lion, "lion_q8": Lion8bit, "lion_q4": Lion4bit, "lion_discovered": DiscoveredOptimizer}
    assert {name: resolve_optimizer_class(name) for name in short_names} == short_names  # HF's optim names


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1.0}, ValueError, "Invalid lr: -1.0"),
        ({"weight_decay": -0.1}, ValueError, "Invalid weight_decay: -0.1"),
        ({"betas": (0.9, 1.0)}, ValueError, r"Invalid betas\[1\]: 1.0"),
        ({"scheduler": "cosin"}, ValueError, "Invalid scheduler: 'cosin'"),
        ({"scheduler": 3}, ValueError, "Invalid scheduler: 3"),
        ({"scheduler": "cosine", "interval": "batch"}, ValueError, "Invalid interval: 'batch'"),
        ({"scheduler": "cosine", "frequency": 0}, ValueError, "Invalid frequency: 0"),
        ({"warmup_steps": 10}, ValueError, "Invalid warmup_steps: 10 with scheduler=None"),
        ({"min_lr_ratio": 0.1}, ValueError, "Invalid min_lr_ratio: 0.1 with scheduler=None"),
        ({"frequency": 2}, ValueError, "Invalid frequency: 2 with scheduler=None"),
        ({"scheduler": lambda optimizer: sched.StepLR(optimizer, 1), "total_steps": 3}, ValueError,
         r"Invalid total_steps: 3 with scheduler=<function"),
        ({"scheduler": "cosine"}, ValueError, "Invalid total_steps: None needs the module attached to a Trainer"),
        ({"scheduler": "linear", "total_steps": 5, "warmup_steps": 6}, ValueError, "Invalid warmup_steps: 6"),
        ({"optimizer_class": "NoSuchLion"}, ValueError, "Invalid optimizer_class: 'NoSuchLion'"),
        ({"optimizer_class": "no_such_module.Lion"}, ValueError, "Invalid optimizer_class: 'no_such_module.Lion'"),
        ({"optimizer_class": nn.Linear}, ValueError, "Invalid optimizer_class"),
    ],
)
def test_configure_lion_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        configure_lion(Net(), **{"fused": False, **kwargs})
