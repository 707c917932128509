"""A program's score on a suite of tasks: the mean over tasks of its loss / tuned AdamW's (AdamW = 1)."""

from __future__ import annotations

from dataclasses import dataclass

from .baseline import ADAMW_WEIGHT_DECAYS, tuned_adamw
from .program import Program
from .tasks import TaskSpec
from .training import Task, TaskResult


@dataclass
class SuiteResult:
    """A program on each task of a suite; `loss` = mean of loss / tuned AdamW's loss (AdamW = 1)."""

    parts: dict[str, TaskResult]
    loss: float

    @property
    def accuracy(self) -> float:
        return sum(r.accuracy for r in self.parts.values()) / len(self.parts)


class Suite:
    """Several tasks scored together, each relative to AdamW tuned on it (computed on first use)."""

    def __init__(self, specs) -> None:
        specs = (specs,) if isinstance(specs, TaskSpec) else tuple(specs)
        if not specs:
            raise ValueError("a suite needs at least one task")
        self.tasks = {spec.name: Task(spec) for spec in specs}
        self.references: dict[str, TaskResult] | None = None
        self.reference_decays: dict[str, float] = {}

    def __repr__(self) -> str:
        return "Suite(" + "; ".join(map(repr, self.tasks.values())) + ")"

    def adamw(self, weight_decays=ADAMW_WEIGHT_DECAYS) -> SuiteResult:
        """Tuned AdamW on each task (the references; relative loss 1)."""
        if self.references is None:
            self.references = {}
            for name, task in self.tasks.items():
                self.references[name], self.reference_decays[name] = tuned_adamw(task, weight_decays)
        return SuiteResult(dict(self.references), 1.0)

    def evaluate(self, program: Program | str) -> SuiteResult:
        references = self.adamw().parts
        parts = {name: task.evaluate(program) for name, task in self.tasks.items()}
        relative = [parts[name].loss / references[name].loss for name in parts]
        return SuiteResult(parts, sum(relative) / len(relative))
