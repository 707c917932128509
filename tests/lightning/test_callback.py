"""LionCallback: every form configure_optimizers returns, schedulers rebound with the schedule kept,
explicit settings, quantized variants, schedulers of other libraries, mixed precision, manual
optimization, YAML configuration, and input checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

pytest.importorskip("lightning")
pytest.importorskip("jsonargparse")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lion_integrations import Lion  # noqa: E402
from lion_integrations.lightning import LionCallback, configure_lion  # noqa: E402
from lion_integrations.schedules import warmup_cosine  # noqa: E402
from tests.helpers.lightning import BATCHES_PER_EPOCH, LrRecorder, Net, dataset, trainer, weights  # noqa: E402


@pytest.mark.parametrize("form", ["adamw", "list", "tuple", "lists", "dict", "dict_config", "list_of_dicts"])
def test_callback_converts_every_return_form(tmp_path, form):
    model = Net(form)
    before = weights(model)
    callback = LionCallback(optimizer_kwargs={"fused": False})
    recorder = LrRecorder()
    run = trainer(tmp_path, [callback, recorder], max_steps=2 * BATCHES_PER_EPOCH)
    run.fit(model)

    (optimizer,) = run.optimizers
    assert type(optimizer) is Lion
    assert optimizer.defaults["fused"] is False
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == pytest.approx(0.05 * 3) and group["betas"] == (0.9, 0.99)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    assert all(torch.is_tensor(optimizer.state[p]["exp_avg"]) for p in model.parameters())
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "configure_optimizers" not in vars(model)  # restored after fit
    assert type(model.configure_optimizers()) in (torch.optim.AdamW, list, tuple, dict)

    # lr of each step: AdamW's 1e-3 / 3, halved every 2 scheduler steps (per step or per epoch)
    if form in ("adamw", "list", "tuple"):
        expected = [1e-3 / 3] * 8
    else:
        (config,) = run.lr_scheduler_configs
        assert config.scheduler.optimizer is optimizer
        per_step = config.interval == "step"
        expected = [1e-3 / 3 * 0.5 ** ((step if per_step else step // BATCHES_PER_EPOCH) // 2) for step in range(8)]
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx(expected, rel=1e-12)


def _two_group_adamw(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": 2e-3, "weight_decay": 0.1},
         {"params": model[1].parameters(), "lr": 1e-3, "weight_decay": 0.0, "name": "head"}],
        lr=2e-3, betas=(0.8, 0.95),
    )
    return model, optimizer


SCHEDULERS = {
    "LambdaLR": lambda opt: warmup_cosine(opt, 3, 10, min_lr_ratio=0.1),
    "StepLR": lambda opt: sched.StepLR(opt, step_size=3, gamma=0.5),
    "MultiStepLR": lambda opt: sched.MultiStepLR(opt, [2, 5], gamma=0.3),
    "ExponentialLR": lambda opt: sched.ExponentialLR(opt, 0.8),
    "LinearLR": lambda opt: sched.LinearLR(opt, 0.1, 1.0, total_iters=4),
    "PolynomialLR": lambda opt: sched.PolynomialLR(opt, total_iters=8, power=2.0),
    "CosineAnnealingLR": lambda opt: sched.CosineAnnealingLR(opt, T_max=6, eta_min=3e-4),
    "CosineAnnealingWarmRestarts": lambda opt: sched.CosineAnnealingWarmRestarts(opt, T_0=4, eta_min=3e-4),
    "OneCycleLR": lambda opt: sched.OneCycleLR(opt, max_lr=[4e-3, 3e-3], total_steps=20),
    "CyclicLR": lambda opt: sched.CyclicLR(opt, base_lr=1e-4, max_lr=[3e-3, 2e-3], step_size_up=3),
    "SequentialLR": lambda opt: sched.SequentialLR(
        opt, [sched.LinearLR(opt, 0.2, total_iters=3), sched.CosineAnnealingLR(opt, 6, eta_min=1e-4)], milestones=[3]),
    "ChainedScheduler": lambda opt: sched.ChainedScheduler([sched.ConstantLR(opt, 0.5, 3), sched.ExponentialLR(opt, 0.9)]),
    "ReduceLROnPlateau": lambda opt: sched.ReduceLROnPlateau(opt, patience=1, factor=0.5, min_lr=[5e-4, 1e-4]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps_before", [0, 2])
def test_callback_rebinds_scheduler_and_keeps_the_schedule(name, steps_before):
    """After conversion (at construction or mid-schedule) the schedule drives Lion's groups with
    exactly the AdamW schedule's lrs divided by the ratio."""
    model, reference = _two_group_adamw()
    _, victim = _two_group_adamw()
    ref_scheduler, scheduler = SCHEDULERS[name](reference), SCHEDULERS[name](victim)

    def step(opt, s):
        opt.step()
        s.step(1.0) if isinstance(s, sched.ReduceLROnPlateau) else s.step()

    for _ in range(steps_before):
        step(reference, ref_scheduler)
        step(victim, scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "optimizer.step() has been overridden" notice
        callback = LionCallback(ratio=4.0, optimizer_kwargs={"fused": False})
        converted = callback.convert({"optimizer": victim, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}})
        lion = converted["optimizer"]
        assert type(lion) is Lion and converted["lr_scheduler"]["scheduler"] is scheduler
        assert scheduler.optimizer is lion
        assert lion.param_groups[1]["name"] == "head"
        assert [g["weight_decay"] for g in lion.param_groups] == pytest.approx([0.4, 0.0])
        for _ in range(12):
            expected = [group["lr"] / 4.0 for group in reference.param_groups]
            assert [group["lr"] for group in lion.param_groups] == pytest.approx(expected, rel=1e-9, abs=1e-15)
            step(reference, ref_scheduler)
            step(lion, scheduler)
        assert scheduler.get_last_lr() == pytest.approx([lr / 4.0 for lr in ref_scheduler.get_last_lr()], rel=1e-9)
        assert victim.param_groups[0]["lr"] != lion.param_groups[0]["lr"]  # the AdamW was left alone


def test_callback_explicit_lr_and_weight_decay():
    _, adamw = _two_group_adamw()
    lion = LionCallback(lr=5e-4, weight_decay=0.5, betas=(0.95, 0.98), optimizer_kwargs={"fused": False}).convert(adamw)
    assert [g["lr"] for g in lion.param_groups] == pytest.approx([5e-4, 2.5e-4])  # the peak group gets lr
    assert [g["weight_decay"] for g in lion.param_groups] == [0.5, 0.0]  # undecayed groups stay undecayed
    assert all(g["betas"] == (0.95, 0.98) for g in lion.param_groups)
    # an optimizer without decaying groups: the explicit decay applies to all of them
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    lion = LionCallback(lr=1e-4, weight_decay=0.1).convert([sgd])[0]
    assert (lion.param_groups[0]["lr"], lion.param_groups[0]["weight_decay"]) == (pytest.approx(1e-4), 0.1)
    # another Lion-family class: kept by default; converted when a class is asked for, and then in the
    # same units, so lr and weight decay carry over unscaled
    class OtherLion(Lion):
        pass

    _, adamw = _two_group_adamw()
    source = OtherLion(adamw.param_groups, lr=1e-4, weight_decay=0.2, fused=False)
    assert LionCallback().convert(source) is source
    lion = LionCallback(optimizer_class="Lion", optimizer_kwargs={"fused": False}).convert(source)
    assert type(lion) is Lion and [g["lr"] for g in lion.param_groups] == [2e-3, 1e-3]
    assert [g["weight_decay"] for g in lion.param_groups] == [0.1, 0.0]
    # already Lion: left as it is
    same = Lion(nn.Linear(2, 2).parameters(), fused=False)
    assert LionCallback().convert(same) is same


def test_callback_keeps_a_quantized_lion_the_module_returns(tmp_path):
    """A module that already returns Lion8bit keeps its quantized momentum under the default callback."""
    from lion_integrations import Lion8bit

    model = Net("lion", optimizer_class="Lion8bit", min_quantized_size=16)
    run = trainer(tmp_path, [LionCallback()])
    run.fit(model)
    (optimizer,) = run.optimizers
    assert type(optimizer) is Lion8bit
    assert any("exp_avg_codes" in optimizer.state[p] for p in model.parameters())


class TimmStyleScheduler:
    """A scheduler outside torch that keeps its peak lrs in `base_values` (as timm's do)."""

    def __init__(self, optimizer, decay=0.5):
        self.optimizer, self.decay, self.count = optimizer, decay, 0
        self.base_values = [group["lr"] for group in optimizer.param_groups]

    def step(self):
        self.count += 1
        for group, base in zip(self.optimizer.param_groups, self.base_values):
            group["lr"] = base * self.decay**self.count


def test_callback_scales_or_refuses_schedulers_from_other_libraries():
    _, adamw = _two_group_adamw()
    scheduler = TimmStyleScheduler(adamw)
    with pytest.warns(UserWarning, match="scaled base_values of TimmStyleScheduler by 0.25"):
        converted = LionCallback(ratio=4.0, optimizer_kwargs={"fused": False}).convert([[adamw], [scheduler]])
    lion = converted[0][0]
    scheduler.step()
    assert scheduler.optimizer is lion
    assert [group["lr"] for group in lion.param_groups] == pytest.approx([2e-3 / 4 * 0.5, 1e-3 / 4 * 0.5])

    class Opaque:  # bound to an optimizer, but its learning rates are nowhere we can see
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def step(self):
            pass

    _, adamw = _two_group_adamw()
    with pytest.raises(ValueError, match="cannot translate Opaque"):
        LionCallback(optimizer_kwargs={"fused": False}).convert([[adamw], [Opaque(adamw)]])


def test_callback_under_bf16_mixed_precision(tmp_path):
    """The precision plugin wraps the Lion optimizer the callback built: bf16 autocast, fp32 weights."""
    model = Net("adamw")
    before = weights(model)
    run = trainer(tmp_path, [LionCallback(optimizer_kwargs={"fused": False})], precision="bf16-mixed")
    run.fit(model)
    (optimizer,) = run.optimizers
    assert type(optimizer) is Lion and type(run.precision_plugin).__name__ == "MixedPrecision"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_callback_bad_input_and_unmappable_optimizers():
    with pytest.raises(ValueError, match="Invalid ratio: 0"):
        LionCallback(ratio=0)
    with pytest.raises(ValueError, match="Invalid lr: -1"):
        LionCallback(lr=-1)
    with pytest.raises(ValueError, match=r"Invalid betas\[0\]: 1.5"):
        LionCallback(betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="Invalid optimizer_class: 'lion_integrations.Lion9bit'"):
        LionCallback(optimizer_class="lion_integrations.Lion9bit")
    with pytest.raises(ValueError, match="Invalid optimizer_kwargs"):
        LionCallback(optimizer_kwargs=["fused", False])
    with pytest.raises(ValueError, match="Invalid optimizer_kwargs: 'lr' is set by the callback"):
        LionCallback(optimizer_kwargs={"lr": 1e-4})
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="cannot translate the learning rate of SGD.*pass lr="):
        LionCallback().convert(sgd)
    with pytest.raises(ValueError, match="cannot translate the weight decay of SGD"):
        LionCallback(lr=1e-4).convert(sgd)

    class Custom:  # a duck-typed optimizer Lightning would accept
        param_groups = []

        def step(self, closure=None): ...

        def zero_grad(self): ...

    with pytest.raises(TypeError, match="cannot convert Custom: it is not a torch.optim.Optimizer"):
        LionCallback().convert([Custom()])


@pytest.mark.parametrize("name", ["Lion8bit", "Lion4bit"])
def test_callback_and_configure_lion_take_quantized_variants(tmp_path, name):
    """optimizer_class by name reaches the quantized variants lion_integrations exports."""
    import lion_integrations

    variant = getattr(lion_integrations, name)
    config = configure_lion(Net(), lr=1e-4, optimizer_class=name, fused=False)
    assert type(config["optimizer"]) is variant
    model = Net("dict_config")
    before = weights(model)
    run = trainer(tmp_path, [LionCallback(optimizer_class=name, optimizer_kwargs={"fused": False})])
    run.fit(model)
    (optimizer,) = run.optimizers
    assert type(optimizer) is variant and run.lr_scheduler_configs[0].scheduler.optimizer is optimizer
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3 / 3)
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items())


class ManualGan(pl.LightningModule):
    """Manual optimization with two optimizers; `keep_reference` steps one it kept on itself."""

    def __init__(self, keep_reference=False):
        super().__init__()
        self.automatic_optimization = False
        self.keep_reference = keep_reference
        torch.manual_seed(0)
        self.generator, self.critic = nn.Linear(8, 8), nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_g, opt_c = (self.opt_g, self.opt_c) if self.keep_reference else self.optimizers()
        for opt, loss in ((opt_c, lambda: (self.critic(x) - 1).pow(2).mean() + self.critic(self.generator(x).detach()).pow(2).mean()),
                          (opt_g, lambda: self.critic(self.generator(x)).mean())):
            opt.zero_grad()
            self.manual_backward(loss())
            opt.step()

    def train_dataloader(self):
        return DataLoader(dataset(), batch_size=8)

    def configure_optimizers(self):
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=2e-3)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=1e-3)
        return self.opt_g, self.opt_c


@pytest.mark.parametrize("keep_reference", [False, True])
def test_callback_manual_optimization(tmp_path, keep_reference):
    """Two optimizers under manual optimization, stepped via self.optimizers() or via attributes
    the module kept (which the callback points at the replacements)."""
    model = ManualGan(keep_reference)
    before = weights(model)
    # stepping raw optimizers does not advance global_step, so bound the run by epochs
    run = trainer(tmp_path, [LionCallback(optimizer_kwargs={"fused": False})], max_steps=-1, max_epochs=1)
    run.fit(model)
    assert [type(o) for o in run.optimizers] == [Lion, Lion]
    assert model.opt_g is run.optimizers[0] and model.opt_c is run.optimizers[1]
    assert [o.param_groups[0]["lr"] for o in run.optimizers] == pytest.approx([2e-3 / 3, 1e-3 / 3])
    assert all(len(o.state) == 2 for o in run.optimizers)  # both stepped their two tensors
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_callback_from_yaml_config(tmp_path):
    config = tmp_path / "input.yaml"
    config.write_text(
        "trainer:\n"
        "  max_steps: 3\n  logger: false\n  enable_checkpointing: false\n  enable_progress_bar: false\n"
        "  enable_model_summary: false\n  accelerator: cpu\n"
        "  callbacks:\n"
        "    - class_path: lion_integrations.lightning.LionCallback\n"
        "      init_args:\n"
        "        ratio: 5\n"
        "        betas: [0.95, 0.98]\n"
        "        optimizer_class: Lion\n"
        "        optimizer_kwargs: {fused: false}\n"
        "model:\n  optim: dict_config\n"
    )
    cli = LightningCLI(Net, args=["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}"])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, LionCallback)]
    assert (callback.ratio, callback.betas, callback.optimizer_class) == (5.0, (0.95, 0.98), Lion)
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is Lion and optimizer.defaults["fused"] is False
    assert optimizer.param_groups[0]["betas"] == (0.95, 0.98)
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3 / 5)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.05 * 5)
    assert cli.trainer.global_step == 3


def test_callback_refuses_a_checkpoint_of_another_optimizer(tmp_path):
    run = trainer(tmp_path)
    run.fit(Net("dict"))
    run.save_checkpoint(tmp_path / "adamw.ckpt")
    resumed = trainer(tmp_path, [LionCallback(optimizer_kwargs={"fused": False})], max_steps=2 * BATCHES_PER_EPOCH)
    with pytest.raises(RuntimeError, match="optimizer state 0 in the checkpoint was not saved by Lion"):
        resumed.fit(Net("dict"), ckpt_path=tmp_path / "adamw.ckpt")
