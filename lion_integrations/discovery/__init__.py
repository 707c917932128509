"""Symbolic discovery of optimizers (Chen et al. 2023, Sec. 2), small enough for a CPU.

Programs over ``train(w, g, m, v, lr)`` (`program`), their function set (`ops`), abstract
execution (`abstract`) with a hash that fingerprints the updates on a fixed random probe
(`equivalence`), mutations (`mutate`), regularized evolution with a fitness cache, restarts and
funnel selection (`evolution`), simplification (`simplify`), and `DiscoveredOptimizer`, which
runs any program as a ``torch.optim.Optimizer``. Fitness comes from proxy tasks: their
specifications (`tasks`), data (`data`), models (`models`: MLPs, and small transformers for
measuring tasks), the batched trainer (`training`), the tuned AdamW baseline
(`baseline`) and the score relative to it (`scoring`). The search itself: ``python recipes/discover.py``.
"""

from .abstract import Analysis, analyze, program_hash, prune
from .baseline import AdamWStep, tuned_adamw
from .equivalence import Fingerprint, fingerprint
from .evolution import Search, SearchConfig, SearchResult
from .execute import compile_program
from .form import is_lion_form
from .mutate import mutate
from .optimizer import BUILTIN, DiscoveredOptimizer, resolve_program
from .program import Program, Statement, parse
from .scoring import Suite, SuiteResult
from .simplify import shortest_text, simplify
from .tasks import TaskSpec
from .training import Task, TaskResult

__all__ = [
    "AdamWStep", "Analysis", "BUILTIN", "DiscoveredOptimizer", "Fingerprint", "Program", "Search", "SearchConfig",
    "SearchResult", "Statement", "Suite", "SuiteResult", "Task", "TaskResult", "TaskSpec", "analyze",
    "compile_program", "fingerprint", "is_lion_form", "mutate", "parse", "program_hash", "prune", "resolve_program",
    "shortest_text", "simplify", "tuned_adamw",
]
