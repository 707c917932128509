"""recipes/discover.py: the funnel tasks cost a multiple of the proxy, and the search runs end to end on
tiny tasks."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from types import SimpleNamespace

import pytest

from lion_integrations.discovery import DiscoveredOptimizer, is_lion_form, parse
from lion_integrations.discovery.tasks import TINY
from lion_integrations.discovery.training import Task
from tests.helpers import REPO
from tests.helpers.discovery import small_params

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe():
    spec = importlib.util.spec_from_file_location("discover_recipe", REPO / "recipes" / "discover.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def _compute(spec) -> int:
    """Parameters x examples seen: a task's training compute, up to a constant."""
    return Task(spec).size * spec.steps * spec.batch_size


@pytest.mark.parametrize("tasks, factor", [("mlp", 10), ("transformer", 2)])
@pytest.mark.parametrize("quick", [False, True])
def test_funnel_costs_a_multiple_of_the_proxy(quick, tasks, factor):
    """Each funnel task costs >= `factor` x its proxy task on the same data, in both modes; the held-out
    task differs from every proxy and funnel task, and uses seeds none of them does."""
    stages = _recipe().stage_specs(quick, tasks)
    proxy = {spec.data: spec for spec in stages["proxy"]}
    for spec in stages["funnel"]:
        assert _compute(spec) >= factor * _compute(proxy[spec.data]), spec
    searched = stages["proxy"] + stages["funnel"]
    for spec in stages["heldout"]:
        assert all(replace(spec, name=other.name) != other for other in searched)
        assert not set(spec.seeds) & {seed for other in searched for seed in other.seeds}


def test_transformer_stages_train_transformers():
    stages = _recipe().stage_specs(tasks="transformer")
    assert {spec.model for specs in stages.values() for spec in specs} == {"transformer"}
    assert _recipe().arguments(["--tasks", "transformer"]).tasks == "transformer"
    with pytest.raises(SystemExit):
        _recipe().arguments(["--tasks", "rnn"])


def test_recipe_runs_end_to_end_on_tiny_tasks(tmp_path, monkeypatch, capsys):
    recipe = _recipe()
    monkeypatch.setitem(recipe.SUITES, "mlp", {"proxy": (replace(TINY, steps=20),),
                                               "funnel": (replace(TINY, name="funnel", steps=30, seeds=(5,)),),
                                               "heldout": (replace(TINY, name="heldout", steps=30, seeds=(9,)),)})
    report = recipe.main(["--budget-minutes", "0.1", "--population", "8", "--tournament", "3", "--top", "2",
                          "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    for needle in ("Tuned AdamW", "redundancy", "cache-hit rate", "Lion-form program", "warm start", "held-out task"):
        assert needle in printed
    assert 1 <= len(report["programs"]) <= 2
    assert 0 <= report["search"]["redundancy"] <= 1 and report["search"]["children"] > 0
    assert set(report["references"]) == {"warm start", "lion"}
    assert report["found"] == sum(p["accepted"] and p["heldout"]["beats_adamw"] for p in report["programs"])
    assert len(report["accepted"]) == report["search"]["accepted"]
    for accepted in report["accepted"]:
        assert accepted["funnel"] < 1.0 and accepted["lion_form"] == is_lion_form(parse(accepted["text"]))
    for entry in report["programs"]:
        assert set(entry) >= {"proxy", "funnel", "heldout", "text", "short", "lion_form", "accepted"}
        assert entry["lion_form"] == is_lion_form(parse(entry["text"]))
        for stage in ("proxy", "funnel", "heldout"):
            assert entry[stage]["beats_adamw"] == (entry[stage]["score"] < 1.0)
            (task, result), = entry[stage]["tasks"].items()
            assert entry[stage]["score"] == pytest.approx(result["loss"] / report["adamw"][stage][task]["loss"])
    saved = tmp_path / "program_1.txt"
    assert (tmp_path / "results.json").exists() and saved.exists()
    DiscoveredOptimizer(small_params(), program=str(saved), lr=1e-3)
    with pytest.raises(SystemExit):
        recipe.arguments(["--budget-minutes", "0"])


class _FixedScores:
    """A stage whose score of a program is looked up by its statement count."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores

    def evaluate(self, program):
        return SimpleNamespace(loss=self.scores[len(program)])


@pytest.mark.parametrize("funnel_cost, kept", [(0.005, True), (0.05, False)])
def test_low_effect_simplification_is_kept_only_when_the_funnel_agrees(funnel_cost, kept, capsys):
    """The near-equivalent program (a low-effect term dropped, proxy score unchanged) replaces the
    exact simplification only if it costs the funnel at most the tolerance."""
    recipe = _recipe()
    program = parse("m = interp(g, m, 0.9); update = sign(m); t1 = g * 0.001; update = update + t1; update = update * lr")
    exact, near = recipe.simplify(program), recipe.simplify(program, lambda p: 1.0, tolerance=0.01)
    assert len(near) < len(exact)
    stages = {"funnel": _FixedScores({len(exact): 0.9, len(near): 0.9 * (1 + funnel_cost)})}
    chosen = recipe.near_equivalent(program, stages, lambda p: 1.0)
    assert str(chosen) == str(near if kept else exact)
    assert ("keeping the exact simplification" in capsys.readouterr().out) != kept


def test_low_effect_simplification_stops_at_the_deadline(capsys):
    """Past the final stage's deadline no proxy evaluation runs: each program keeps its exact
    simplification, and the recipe says so."""
    recipe = _recipe()
    program = parse("m = interp(g, m, 0.9); update = sign(m); t1 = g * 0.001; update = update + t1; update = update * lr")
    stages = {"proxy": _FixedScores({}), "funnel": _FixedScores({})}  # any evaluation would raise KeyError
    found = SimpleNamespace(accepted=[], top=lambda count: [SimpleNamespace(program=program)])
    finals = recipe.final_programs(SimpleNamespace(top=1), stages, found, deadline=float("-inf"))
    assert [str(p) for p in finals] == [str(recipe.simplify(program))]
    assert "the budget ran out during the low-effect edits" in capsys.readouterr().out
