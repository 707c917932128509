"""Symbolic discovery of optimizers (Chen et al. 2023, Sec. 2), small enough for a CPU.

Programs over ``train(w, g, m, v, lr)`` (`program`), their function set (`ops`), abstract
execution with a canonical hash (`abstract`), mutations (`mutate`), regularized evolution with a
fitness cache, restarts and funnel selection (`evolution`), proxy tasks (`tasks`), simplification
(`simplify`), and `DiscoveredOptimizer`, which runs any program as a ``torch.optim.Optimizer``.
The search itself: ``python recipes/discover.py``.
"""

from .abstract import Analysis, analyze, program_hash, prune
from .evolution import Search, SearchConfig, SearchResult
from .execute import compile_program
from .mutate import mutate
from .optimizer import BUILTIN, DiscoveredOptimizer, resolve_program
from .program import Program, Statement, parse
from .form import is_lion_form
from .simplify import shortest_text, simplify

__all__ = [
    "Analysis", "BUILTIN", "DiscoveredOptimizer", "Program", "Search", "SearchConfig", "SearchResult", "Statement",
    "analyze", "compile_program", "is_lion_form", "mutate", "parse", "program_hash", "prune", "resolve_program",
    "shortest_text", "simplify",
]
