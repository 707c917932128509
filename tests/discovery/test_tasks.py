"""Proxy tasks (lion_integrations.discovery.tasks): the AdamW baseline, the batched trainer against an
ordinary loop, deterministic fitness, suites scored against tuned AdamW, and the text tasks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lion_integrations.discovery import DiscoveredOptimizer, compile_program
from lion_integrations.discovery.baseline import AdamWStep
from lion_integrations.discovery.data import stdlib_text
from lion_integrations.discovery.scoring import Suite
from lion_integrations.discovery.tasks import FUNNEL, HELDOUT, PROXY, TINY, lr_grid
from lion_integrations.discovery.training import Task
from tests.helpers.discovery import LION

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_step_matches_torch_adamw():
    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64)
    param = torch.nn.Parameter(w.clone())
    reference = torch.optim.AdamW([param], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    step, m, v = AdamWStep((0.9, 0.999), 1e-8, 0.1), torch.zeros_like(w), torch.zeros_like(w)
    for _ in range(5):
        g = torch.randn_like(w)
        param.grad = g.clone()
        reference.step()
        update, m, v = step(w, g, m, v, 0.01)
        w = w - update
    assert torch.allclose(w, param.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_batched_training_matches_an_ordinary_loop_with_discovered_optimizer(model):
    """One row of the batched trainer is exactly a model trained by DiscoveredOptimizer on its
    own parameter tensors (norm is per parameter tensor in both)."""
    spec = replace(TINY, steps=12, seeds=(3,), model=model, hidden=(16,))
    task = Task(spec)
    program = "n = norm(g); update = g / (n + 1.0); update = update + sign(interp(g, m, 0.8)); " \
              "update = update * lr; m = interp(g, m, 0.95)"
    lr = 0.003
    batched = task.train(compile_program(program), lrs=(0.001, lr, 0.01))
    alone = task.train(compile_program(program), lrs=(lr,))
    assert alone.losses[lr] == pytest.approx(batched.losses[lr], rel=1e-5)

    theta = task._init(3).unsqueeze(0)
    params = [t[0].clone().requires_grad_(True) for t in task._layers(theta)]
    optimizer = DiscoveredOptimizer(params, program=program, lr=lr)
    generator = torch.Generator().manual_seed(1003)
    data = task.data
    for _ in range(spec.steps):
        rows = torch.randint(len(data.train_y), (spec.batch_size,), generator=generator)
        logits = task._forward(torch.cat([p.reshape(1, -1) for p in params], 1), data.features(data.train[rows]).unsqueeze(0))
        loss = torch.nn.functional.cross_entropy(logits[0], data.train_y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = task._forward(torch.cat([p.reshape(1, -1) for p in params], 1), data.val)
        val = torch.nn.functional.cross_entropy(logits[0], data.val_y).item()
    assert val == pytest.approx(alone.losses[lr], rel=1e-4)


def test_task_fitness_is_deterministic_and_penalises_divergence():
    task = Task(TINY)
    first, second = task.evaluate(LION), task.evaluate(LION)
    assert first.losses == second.losses and first.lr in TINY.lrs
    assert first.loss == min(first.losses.values()) < math.log(10)
    diverging = task.evaluate("update = exp(g) * 1e30")
    assert diverging.loss == pytest.approx(task.penalty, rel=1e-6) and task.penalty == pytest.approx(2 * math.log(10))
    assert lr_grid(-3, -2) == (0.001, 0.00316228, 0.01)


def test_suite_scores_relative_to_tuned_adamw():
    suite = Suite((replace(TINY, name="a", steps=20), replace(TINY, name="b", steps=20, hidden=(8,), seeds=(4,))))
    reference = suite.adamw(weight_decays=(0.0, 0.1))
    assert reference.loss == 1.0 and set(reference.parts) == {"a", "b"} and set(suite.reference_decays.values()) <= {0.0, 0.1}
    result = suite.evaluate(LION)
    expected = sum(result.parts[n].loss / reference.parts[n].loss for n in "ab") / 2
    assert result.loss == pytest.approx(expected)
    assert result.parts["a"].losses == Task(replace(TINY, name="a", steps=20)).evaluate(LION).losses
    with pytest.raises(ValueError, match="at least one task"):
        Suite(())
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        Task(replace(TINY, data="mnist"))


def test_text_tasks_use_disjoint_standard_library_text():
    forward, backward = stdlib_text(20_000), stdlib_text(20_000, reverse=True)
    assert len(forward) == len(backward) == 20_000 and forward[:2000] not in backward
    task = Task(replace(TINY, data="text2", context=3, steps=5))
    assert task.data.dim == 3 * 48 and task.data.classes == 48
    assert task.evaluate(LION).loss < task.penalty


def test_heldout_task_is_unseen_by_the_search_and_the_funnel_uses_other_seeds():
    searched = PROXY + FUNNEL
    assert HELDOUT.data not in {spec.data for spec in searched}
    assert not set(HELDOUT.seeds) & {seed for spec in searched for seed in spec.seeds}
    assert not {seed for spec in FUNNEL for seed in spec.seeds} & {seed for spec in PROXY for seed in spec.seeds}


def test_cosine_schedule_scales_every_lr_of_the_grid_each_step():
    def sgd_recording_lrs(seen):
        def step(w, g, m, v, lr, norm):
            seen.append(lr.clone())
            return lr * g, m, v
        return step

    spec = replace(TINY, steps=8, schedule="cosine")
    cosine, constant = [], []
    Task(spec).train(sgd_recording_lrs(cosine), lrs=(0.001, 0.01))
    expected = [0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert [float(lr[1, 0] / 0.01) for lr in cosine] == pytest.approx(expected, rel=1e-6)
    assert all(torch.allclose(lr[0] * 10, lr[1]) for lr in cosine)
    Task(replace(spec, schedule="constant")).train(sgd_recording_lrs(constant), lrs=(0.01,))
    assert all(float(lr) == pytest.approx(0.01) for lr in constant) and len(constant) == 8
    with pytest.raises(ValueError, match="schedule must be one of .* got 'linear'"):
        replace(TINY, schedule="linear")


def test_layer_norm_normalizes_each_hidden_layer_before_its_relu():
    task = Task(replace(TINY, hidden=(16, 8), layer_norm=True))
    theta = task._init(0).unsqueeze(0)
    x = task.data.val[:5]
    w1, b1, w2, b2, w3, b3 = (t[0] for t in task._layers(theta))
    h = torch.relu(torch.nn.functional.layer_norm(x @ w1 + b1, (16,)))
    h = torch.relu(torch.nn.functional.layer_norm(h @ w2 + b2, (8,)))
    assert torch.allclose(task._forward(theta, x.unsqueeze(0))[0], h @ w3 + b3, atol=1e-6)
    plain = Task(replace(TINY, hidden=(16, 8)))
    assert not torch.allclose(plain._forward(theta, x.unsqueeze(0))[0], h @ w3 + b3, atol=1e-3)
    assert "layer norm" in repr(task) and "cosine lr" in repr(Task(replace(TINY, schedule="cosine")))
