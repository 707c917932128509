"""benchmarks/discovery_tasks.py: Lion's decoupled weight decay, its lr grid, the tuning protocol and
the verdict of a row."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from lion_integrations.discovery import DiscoveredOptimizer, analyze, parse
from lion_integrations.discovery.baseline import ADAMW_WEIGHT_DECAYS
from lion_integrations.discovery.tasks import TINY
from lion_integrations.discovery.training import Task
from tests.helpers import REPO
from tests.helpers.discovery import LION

sys.path.insert(0, str(REPO / "benchmarks"))
import discovery_tasks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lion_step_applies_decoupled_weight_decay_like_discovered_optimizer():
    torch.manual_seed(0)
    w, lr, decay = torch.randn(3, 4), 0.01, 3.0
    param = torch.nn.Parameter(w.clone())
    optimizer = DiscoveredOptimizer([param], program="lion", lr=lr, weight_decay=decay)
    step, m, v = discovery_tasks.lion_step(decay), torch.zeros_like(w), torch.zeros_like(w)
    for _ in range(3):
        g = torch.randn_like(w)
        param.grad = g.clone()
        optimizer.step()
        update, m, v = step(w, g, m, v, torch.tensor(lr), None)
        w = w - update
    assert torch.allclose(w, param.detach(), atol=1e-6)


def test_lion_program_is_the_builtin_lion_at_its_betas():
    assert analyze(parse(discovery_tasks.lion_program())).hash == analyze(LION).hash
    assert analyze(parse(discovery_tasks.lion_program((0.95, 0.98)))).hash != analyze(LION).hash


def test_lion_grid_has_adamw_density_and_reaches_a_decade_lower():
    spec = replace(TINY, lrs=(1e-3, 1e-2))
    lrs = discovery_tasks.lion_lrs(spec)
    assert min(lrs) == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-2) and len(lrs) == 9
    assert discovery_tasks.LION_WEIGHT_DECAYS == tuple(10 * wd for wd in ADAMW_WEIGHT_DECAYS)


def test_tune_picks_the_lowest_mean_loss_and_reports_each_seed_there():
    spec = replace(TINY, steps=15, seeds=(0, 1))
    lrs, decays = (0.001, 0.01), (0.0, 1.0)
    tuned = discovery_tasks.tune(spec, discovery_tasks.lion_step, lrs, decays)
    task = Task(spec)
    means = {(wd, lr): task.train(discovery_tasks.lion_step(wd), lrs).losses[lr] for wd in decays for lr in lrs}
    assert min(means, key=means.get) == (tuned.weight_decay, tuned.lr)
    assert len(tuned.seed_losses) == 2
    assert sum(tuned.seed_losses) / 2 == pytest.approx(means[(tuned.weight_decay, tuned.lr)], rel=1e-4)
    assert tuned.lr_at_edge == (tuned.lr in lrs) and tuned.decay_at_edge == (tuned.weight_decay == 1.0)


def test_tune_over_beta2_picks_the_best_beta2_and_names_it():
    spec = replace(TINY, steps=15, seeds=(0, 1))
    lrs, beta2s = (0.003, 0.03), (0.999, 0.5)
    tuned = discovery_tasks.tune(spec, discovery_tasks.adamw_step, lrs, (0.0,), beta2s)
    task = Task(spec)
    means = {beta2: task.train(discovery_tasks.adamw_step(0.0, beta2), lrs).loss for beta2 in beta2s}
    assert tuned.beta2 == min(means, key=means.get) and f"beta2 {tuned.beta2:g}" in tuned.cell()
    assert sum(tuned.seed_losses) / 2 == pytest.approx(means[tuned.beta2], rel=1e-4)
    assert discovery_tasks.tune(spec, discovery_tasks.adamw_step, lrs, (0.0,), (0.999,)).beta2 is None


@pytest.mark.parametrize(
    ("adamw", "lion", "verdict"),
    [
        ([1.0, 1.1, 1.2], [0.8, 0.9, 1.0], "Lion's regime"),  # margin 2 sd, ahead on every seed
        ([1.0, 1.1, 1.2], [1.05, 1.06, 1.07], "Lion ahead, within spread"),
        ([1.0, 1.1, 1.2], [0.5, 0.9, 1.3], "Lion ahead, within spread"),  # behind on one seed
        ([1.0, 1.1, 1.2], [1.2, 1.3, 1.4], "AdamW ahead"),
    ],
)
def test_row_verdict_needs_a_margin_beyond_the_seed_spread_and_every_seed(adamw, lion, verdict):
    def tuned(losses):
        return discovery_tasks.Tuned(0.01, 0.1, False, False, losses)

    row = discovery_tasks.row(replace(TINY, seeds=(0, 1, 2)), tuned(adamw), tuned(lion), 0.5)
    assert dict(zip(discovery_tasks.HEADER, row))["verdict"] == verdict
    assert float(dict(zip(discovery_tasks.HEADER, row))["Lion/AdamW"]) == pytest.approx(
        sum(lion) / sum(adamw), abs=1e-3)
    assert math.isfinite(float(dict(zip(discovery_tasks.HEADER, row))["margin/spread"]))


def test_candidate_names_are_unique_so_only_selects_each_one():
    names = [spec.name for model in ("mlp", "transformer") for spec in discovery_tasks.candidates(model)]
    assert len(names) == len(set(names))
    assert all(name == name.strip() and name for name in names)


def test_report_names_what_differs_from_the_search_setup():
    assert discovery_tasks.report_stem(discovery_tasks.LION_BETAS, "constant", False) == "discovery_tasks"
    assert discovery_tasks.report_stem((0.95, 0.98), "cosine", True) == "discovery_tasks_lion_0.95_0.98_cosine_layernorm"
    assert discovery_tasks.report_stem(discovery_tasks.LION_BETAS, "cosine", False, "transformer") == \
        "discovery_tasks_transformer_cosine"
    args = SimpleNamespace(quick=False, only=["text2 b512"], lion_betas=[0.9, 0.99], schedule="cosine", layer_norm=True,
                           model="mlp", adamw_beta2=[0.999], adamw_weight_decays=list(ADAMW_WEIGHT_DECAYS))
    assert discovery_tasks.command(args) == 'python benchmarks/discovery_tasks.py --only "text2 b512" --schedule cosine --layer-norm'
    assert discovery_tasks.command(SimpleNamespace(quick=True, only=None, lion_betas=[0.9, 0.99], schedule="constant",
                                                   layer_norm=False, model="transformer", adamw_beta2=[0.999, 0.95],
                                                   adamw_weight_decays=[0, 1, 3])) == \
        "python benchmarks/discovery_tasks.py --quick --model transformer --adamw-beta2 0.999 0.95 --adamw-weight-decays 0 1 3"
    assert discovery_tasks.report_stem(discovery_tasks.LION_BETAS, "constant", False, "transformer", (0.999, 0.95)) == \
        "discovery_tasks_transformer_adamw_beta2_0.999_0.95"
    assert discovery_tasks.report_stem(discovery_tasks.LION_BETAS, "constant", False, "transformer", (0.999, 0.95),
                                       (0, 1, 3)) == "discovery_tasks_transformer_adamw_beta2_0.999_0.95_adamw_wd_0_1_3"
    assert all(spec.model == "transformer" for spec in discovery_tasks.candidates("transformer"))


@pytest.mark.parametrize("argv, message", [
    (["--adamw-beta2", "1.0"], "--adamw-beta2: each value must be in [0, 1), got 1"),
    (["--model", "transformer", "--layer-norm"], "--layer-norm is for MLPs"),
    (["--adamw-weight-decays", "0", "-1"], "--adamw-weight-decays: each value must be a finite number >= 0, got -1"),
    (["--adamw-weight-decays", "inf"], "--adamw-weight-decays: each value must be a finite number >= 0, got inf"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        discovery_tasks.main([*argv, "--output-dir", str(tmp_path)])
    assert message in capsys.readouterr().err and not list(tmp_path.iterdir())
