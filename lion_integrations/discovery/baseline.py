"""The AdamW baseline every program is scored against, tuned harder than any candidate.

The baseline gets decoupled weight decays over two decades and an lr grid twice as dense as the
task's own (a win over it is not a win over an under-tuned AdamW).
"""

from __future__ import annotations

import math

import torch

from .tasks import lr_grid
from .training import Task, TaskResult

ADAMW_WEIGHT_DECAYS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
ADAMW_LRS_PER_DECADE = 4


def denser(lrs: tuple[float, ...], per_decade: int = ADAMW_LRS_PER_DECADE) -> tuple[float, ...]:
    """A log grid over the same range as `lrs`, `per_decade` a decade (at least `lrs` itself)."""
    if len(lrs) < 2:
        return tuple(lrs)
    low, high = math.log10(min(lrs)), math.log10(max(lrs))
    return tuple(sorted(set(lrs) | set(lr_grid(low, high, per_decade))))


class AdamWStep:
    """Reference AdamW as a step function: bias-corrected moments m / (1 - b1^t), v / (1 - b2^t),
    update = lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w) (eps outside the sqrt, decay decoupled)."""

    def __init__(self, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> None:
        self.betas, self.eps, self.weight_decay, self.t = betas, eps, weight_decay, 0

    def __call__(self, w, g, m, v, lr, norm=None):
        self.t += 1
        b1, b2 = self.betas
        m = torch.lerp(m, g, 1 - b1)
        v = torch.lerp(v, g * g, 1 - b2)
        m_hat = m / (1 - b1**self.t)
        v_hat = v / (1 - b2**self.t)
        return lr * (m_hat / (v_hat.sqrt() + self.eps) + self.weight_decay * w), m, v


def tuned_adamw(task: Task, weight_decays=ADAMW_WEIGHT_DECAYS, betas=(0.9, 0.999)) -> tuple[TaskResult, float]:
    """AdamW tuned on `task`: the best over a denser lr grid than the task's (`denser`) and over
    `weight_decays`; (its result, its weight decay)."""
    lrs = denser(task.spec.lrs)
    results = {wd: task.train(AdamWStep(betas, 1e-8, wd), lrs) for wd in weight_decays}
    best = min(results, key=lambda wd: results[wd].loss)
    return results[best], best
