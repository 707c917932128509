"""The search (lion_integrations.discovery.evolution): reproducible with consistent statistics,
selection pressure, restarts and the funnel, and input checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lion_integrations.discovery import BUILTIN, Search, SearchConfig, analyze, parse, program_hash, prune
from lion_integrations.discovery.evolution import SearchStats
from lion_integrations.discovery.tasks import TINY
from lion_integrations.discovery.baseline import tuned_adamw
from lion_integrations.discovery.training import Task
from tests.helpers.discovery import ADAMW

pytestmark = pytest.mark.usefixtures("one_thread")


def test_short_seeded_search_is_reproducible_and_keeps_consistent_statistics():
    task = Task(replace(TINY, steps=25))
    baseline = tuned_adamw(task, weight_decays=(0.01,))[0].loss
    def funnel(program):
        return 0.0, True

    def run():
        search = Search(lambda p: task.evaluate(p).loss, baseline, SearchConfig(population=8, tournament=3, restart_after=15),
                        seed=7, funnel=funnel)
        return search.run(ADAMW, max_children=50)

    first, second = run(), run()
    stats = first.stats
    assert stats.children == 50 and stats.valid + stats.invalid == 50
    assert stats.cache_hits + stats.evaluations == stats.valid + 1  # +1: the warm start
    assert 0 < stats.redundancy < 1 and 0 < stats.cache_hit_rate < 1
    assert len(first.cache) == stats.evaluations
    assert first.best.loss <= first.cache[program_hash(ADAMW)]
    assert first.best.loss == min(first.cache.values())
    assert (first.best.key, vars(first.stats) | {"evaluation_seconds": 0, "funnel_seconds": 0}) == (
        second.best.key, vars(second.stats) | {"evaluation_seconds": 0, "funnel_seconds": 0})
    assert all(analyze(member.program).hash == member.key for member in first.top(5))


def test_selection_pressure_restarts_and_funnel_with_a_synthetic_fitness():
    """Fitness = live statements + 10 if the update has no sign: the search must find a short sign program."""
    def fitness(program):
        pruned = prune(program)
        return len(pruned) + (0 if any(s.op == "sign" for s in pruned.statements) else 10)

    accepted_when = lambda program: (fitness(program) - 1.0, fitness(program) <= 4)  # noqa: E731
    search = Search(fitness, baseline=19.0, config=SearchConfig(population=16, tournament=4, restart_after=60,
                                                                funnel_margin=0.0, funnel_step=0.0, funnel_share=1.0),
                    seed=3, funnel=accepted_when)
    result = search.run(ADAMW, max_children=1500)
    assert fitness(ADAMW) == 19 and result.best.loss <= 3
    assert result.accepted and all(a.funnel_loss <= 3 for a in result.accepted)
    assert result.stats.restarts >= 1 and result.stats.funnel_evaluations >= len(result.accepted)
    assert isinstance(result.stats, SearchStats) and "children" in result.stats.summary()
    with pytest.raises(ValueError, match="Invalid start program"):
        search.run(parse("update = w * lr"), max_children=1)


def test_search_config_and_run_reject_bad_input():
    for kwargs, message in [({"population": 0}, "Invalid population: 0"), ({"tournament": 0}, "Invalid tournament: 0"),
                            ({"population": 4, "tournament": 8}, "Invalid tournament: 8"),
                            ({"funnel_share": 2.0}, "Invalid funnel_share: 2.0")]:
        with pytest.raises(ValueError, match=message):
            SearchConfig(**kwargs)
    search = Search(lambda p: 1.0, 1.0, SearchConfig(max_statements=4))
    with pytest.raises(ValueError, match="Invalid max_statements: 4 is below the start program's 9 statements"):
        search.run(ADAMW, max_children=1)
    with pytest.raises(ValueError, match="Invalid budget"):
        search.run(parse(BUILTIN["lion"]))
    with pytest.raises(ValueError, match="Invalid max_children: -1"):
        search.run(parse(BUILTIN["lion"]), max_children=-1)


def test_funnel_sees_the_best_of_each_round_once():
    """After a restart from an accepted program, the round's bests reach the funnel even when they do
    not beat the global best; no program is funneled twice."""
    losses = iter([1.0, 0.85, 0.7, 0.9, 0.9, 0.9, 0.8] + [0.95] * 100)
    proxy = {}

    def evaluate(program):
        proxy[program_hash(program)] = loss = next(losses)
        return loss

    funneled = []

    def funnel(program):
        loss = proxy[program_hash(program)]
        funneled.append(loss)
        return loss, loss != 0.7  # the global proxy best fails the funnel

    config = SearchConfig(population=4, tournament=2, restart_after=3, funnel_margin=0.0, funnel_step=0.0, funnel_share=1.0)
    result = Search(evaluate, 1.0, config, seed=0, funnel=funnel).run(ADAMW, max_children=30)
    assert result.stats.restarts >= 1 and result.best.loss == 0.7
    assert funneled[:3] == [0.85, 0.7, 0.8]
    assert [a.proxy_loss for a in result.accepted][:2] == [0.85, 0.8]


def test_restarts_grow_from_the_program_that_did_best_on_the_funnel():
    """With nothing accepted, a restart seeds the population with the funnel's best-scored program,
    not the proxy best (which failed the funnel, as over-fitted proxy winners do)."""
    proxy, funnel_losses = {}, {0.85: 1.02, 0.7: 1.2}
    losses = iter([1.0, 0.85, 0.7] + [0.9] * 200)

    def evaluate(program):
        proxy[program_hash(program)] = loss = next(losses)
        return loss

    def funnel(program):
        loss = proxy[program_hash(program)]
        return funnel_losses.get(loss, 1.5), False

    messages = []
    config = SearchConfig(population=4, tournament=2, restart_after=5, funnel_margin=0.0, funnel_step=0.0, funnel_share=1.0)
    search = Search(evaluate, 1.0, config, seed=0, funnel=funnel, log=messages.append)
    result = search.run(ADAMW, max_children=40)
    restarts = [m for m in messages if "restart" in m]
    assert restarts and all("best funnel-scored" in m for m in restarts)
    assert result.best.loss == 0.7 and not result.accepted
    funnel_best = min(search.funneled, key=lambda key: search.funneled[key][0])
    assert proxy[funnel_best] == 0.85
