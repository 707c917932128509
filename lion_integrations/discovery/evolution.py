"""Regularized evolution (Real et al. 2019) over programs, as in the paper's search.

Each cycle: sample `tournament` members of the population, mutate the best (the one with the lowest
loss), reject the child if abstract execution finds it invalid, look its hash (the fingerprint of
its updates, `abstract`) up in the fitness cache (evaluate only on a miss), add it, and remove the
oldest member. The population starts as copies of the warm-start program (AdamW); after
`restart_after` children without a new best of the round it restarts (a new round) as copies of the
program that did best on the larger task: the best accepted by the funnel, else the best the funnel
scored, else the best proxy program. (A proxy best that fails the funnel is often over-fitted to
the small task; growing from it again stalls.)

Funnel: a child that is the best of its round (since the start or the last restart), beats the
AdamW proxy loss by `funnel_margin` and improves by `funnel_step` on the round's last entrant is
evaluated on the larger task (once per hash); it is accepted only if it beats AdamW there too.

Statistics: redundancy = statements of valid children that abstract execution removes, over all
their statements; cache-hit rate = valid children whose hash was already cached, over valid children.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .abstract import analyze
from .mutate import mutate
from .program import Program


@dataclass
class SearchConfig:
    population: int = 32
    tournament: int = 8
    max_statements: int = 16
    restart_after: int = 400  # children without a new best before a restart
    funnel_margin: float = 0.01  # relative: proxy loss < (1 - margin) * AdamW's to enter the funnel
    funnel_step: float = 0.005  # relative improvement over the last funnel entrant
    funnel_share: float = 0.4  # at most this share of the elapsed time goes to the funnel

    def __post_init__(self) -> None:
        for name in ("population", "tournament", "max_statements", "restart_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (expected an int >= 1)")
        if self.tournament > self.population:
            raise ValueError(f"Invalid tournament: {self.tournament!r} (at most population={self.population})")
        for name in ("funnel_margin", "funnel_step", "funnel_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Invalid {name}: {value!r} (expected a number in [0, 1])")


@dataclass
class Member:
    program: Program
    loss: float
    key: str


@dataclass
class Accepted:
    """A program that passed the funnel: its losses on the proxy and on the funnel task."""

    program: Program
    proxy_loss: float
    funnel_loss: float


@dataclass
class SearchStats:
    children: int = 0
    invalid: int = 0
    valid: int = 0
    statements: int = 0
    redundant: int = 0
    cache_hits: int = 0
    evaluations: int = 0
    funnel_evaluations: int = 0
    restarts: int = 0
    evaluation_seconds: float = 0.0
    funnel_seconds: float = 0.0

    @property
    def redundancy(self) -> float:
        return self.redundant / self.statements if self.statements else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.valid if self.valid else 0.0

    def summary(self) -> str:
        return (f"{self.children} children: {self.invalid} invalid, {self.valid} valid; redundant statements "
                f"{100 * self.redundancy:.1f}%, cache hits {100 * self.cache_hit_rate:.1f}%, "
                f"{self.evaluations} proxy and {self.funnel_evaluations} funnel evaluations, {self.restarts} restarts")


@dataclass
class SearchResult:
    best: Member  # lowest proxy loss seen
    accepted: list[Accepted]
    stats: SearchStats
    cache: dict[str, float] = field(repr=False, default_factory=dict)
    programs: dict[str, Program] = field(repr=False, default_factory=dict)  # hash -> first program seen

    def top(self, count: int) -> list[Member]:
        """The `count` best distinct programs by proxy loss."""
        ranked = sorted(self.cache.items(), key=lambda item: item[1])[:count]
        return [Member(self.programs[key], loss, key) for key, loss in ranked]


class Search:
    """Regularized evolution with a hash-keyed fitness cache, restarts and funnel selection.

    Args:
        evaluate: program -> proxy loss (lower is better).
        baseline: AdamW's proxy loss.
        funnel: program -> (funnel loss, beats AdamW on the funnel task), or None for no funnel.
    """

    def __init__(
        self,
        evaluate: Callable[[Program], float],
        baseline: float,
        config: SearchConfig | None = None,
        seed: int = 0,
        funnel: Callable[[Program], tuple[float, bool]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.evaluate = evaluate
        self.baseline = baseline
        self.config = config or SearchConfig()
        self.rng = random.Random(seed)
        self.funnel = funnel
        self.log = log or (lambda message: None)
        self.cache: dict[str, float] = {}
        self.programs: dict[str, Program] = {}
        self.stats = SearchStats()
        self.accepted: list[Accepted] = []
        self.funneled: dict[str, tuple[float, bool]] = {}  # hash -> funnel result

    def fitness(self, program: Program, key: str) -> float:
        """Cached loss of `program` (whose hash is `key`)."""
        if key in self.cache:
            self.stats.cache_hits += 1
            return self.cache[key]
        start = time.perf_counter()
        loss = float(self.evaluate(program))
        self.stats.evaluation_seconds += time.perf_counter() - start
        self.stats.evaluations += 1
        self.cache[key] = loss
        self.programs[key] = program
        return loss

    def _seed_population(self, program: Program, loss: float, key: str) -> deque:
        return deque(Member(program, loss, key) for _ in range(self.config.population))

    def _child(self, population: deque) -> Member | None:
        config = self.config
        contenders = self.rng.sample(list(population), min(config.tournament, len(population)))
        parent = min(contenders, key=lambda member: member.loss)
        child = mutate(parent.program, self.rng, config.max_statements)
        self.stats.children += 1
        analysis = analyze(child)
        if not analysis.valid:
            self.stats.invalid += 1
            return None
        self.stats.valid += 1
        self.stats.statements += len(child)
        self.stats.redundant += analysis.redundant
        return Member(child, self.fitness(child, analysis.hash), analysis.hash)

    def _maybe_funnel(self, member: Member, last_entrant: float, started: float) -> float:
        config = self.config
        if self.funnel is None or not member.loss < (1 - config.funnel_margin) * self.baseline:
            return last_entrant
        if not member.loss < (1 - config.funnel_step) * last_entrant:
            return last_entrant
        if member.key in self.funneled:
            return member.loss
        if self.stats.funnel_seconds > config.funnel_share * (time.perf_counter() - started):
            return last_entrant
        begin = time.perf_counter()
        funnel_loss, passed = self.funneled[member.key] = self.funnel(member.program)
        self.stats.funnel_seconds += time.perf_counter() - begin
        self.stats.funnel_evaluations += 1
        self.log(f"  funnel: proxy {member.loss:.4f} -> funnel {funnel_loss:.4f} ({'accepted' if passed else 'rejected'})")
        if passed:
            self.accepted.append(Accepted(member.program, member.loss, funnel_loss))
        return member.loss

    def run(self, start: Program, budget_seconds: float | None = None, max_children: int | None = None) -> SearchResult:
        """Evolve from `start` until `budget_seconds` pass or `max_children` children were made."""
        if budget_seconds is None and max_children is None:
            raise ValueError("Invalid budget: budget_seconds=None and max_children=None (give at least one)")
        for name, value in (("budget_seconds", budget_seconds), ("max_children", max_children)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"Invalid {name}: {value!r} (expected a number >= 0)")
        analysis = analyze(start)
        if not analysis.valid:
            raise ValueError(f"Invalid start program: {analysis.reason}")
        if len(start) > self.config.max_statements:
            raise ValueError(
                f"Invalid max_statements: {self.config.max_statements} is below the start program's "
                f"{len(start)} statements"
            )
        started = time.perf_counter()
        best = Member(start, self.fitness(start, analysis.hash), analysis.hash)
        population = self._seed_population(best.program, best.loss, best.key)
        round_best, since_best, last_entrant = best.loss, 0, float("inf")
        while True:
            if max_children is not None and self.stats.children >= max_children:
                break
            if budget_seconds is not None and time.perf_counter() - started >= budget_seconds:
                break
            member = self._child(population)
            if member is None:
                continue
            population.append(member)
            population.popleft()
            since_best += 1
            if member.loss < best.loss:
                best = member
                self.log(f"[{time.perf_counter() - started:6.0f}s] child {self.stats.children}: proxy "
                         f"{best.loss:.4f} (AdamW {self.baseline:.4f}), {len(best.program)} statements")
            if member.loss < round_best:
                round_best, since_best = member.loss, 0
                last_entrant = self._maybe_funnel(member, last_entrant, started)
            if since_best >= self.config.restart_after:
                program, source = self._restart_program(best)
                key = analyze(program).hash
                population = self._seed_population(program, self.cache[key], key)
                round_best, since_best, last_entrant = self.cache[key], 0, float("inf")
                self.stats.restarts += 1
                self.log(f"  restart {self.stats.restarts} from the {source} program")
        return SearchResult(best, list(self.accepted), self.stats, self.cache, self.programs)

    def _restart_program(self, best: Member) -> tuple[Program, str]:
        """What a restart grows from: the program that did best on the larger task (accepted by the
        funnel if any, else the best the funnel scored), else the best proxy program."""
        if self.accepted:
            return min(self.accepted, key=lambda a: a.funnel_loss).program, "best accepted"
        if self.funneled:
            key = min(self.funneled, key=lambda k: self.funneled[k][0])
            return self.programs[key], "best funnel-scored"
        return best.program, "best proxy"
