"""Learning-rate schedules with linear warmup, as `torch.optim.lr_scheduler.LambdaLR` factories.

The factor multiplying each group's initial lr at scheduler step ``t`` (``W`` warmup steps, ``T``
total steps, floor ``r = min_lr_ratio``) is, as in Hugging Face's ``get_*_schedule_with_warmup``:

* warmup, ``t < W``: ``t / W`` (0 at the first step, reaching 1 at ``t = W``);
* afterwards, with progress ``p = clamp((t - W) / (T - W), 0, 1)``:
  cosine ``r + (1 - r) * (1 + cos(pi * p)) / 2``, linear ``r + (1 - r) * (1 - p)``, constant ``1``.

Past ``T`` the factor stays at ``r`` (cosine, linear). Plain torch: usable with any optimizer/loop.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .checks import check_choice, check_int, check_real

SHAPES = ("cosine", "linear", "constant")


class WarmupSchedule:
    """The lr factor at step ``t``: linear warmup over `warmup_steps`, then `shape` decay to
    `min_lr_ratio` at `total_steps`. A callable object, so `LambdaLR.state_dict` saves it."""

    def __init__(self, warmup_steps: int, total_steps: int, shape: str = "cosine", min_lr_ratio: float = 0.0):
        self.shape = check_choice(shape, "shape", SHAPES)
        self.total_steps = check_int(total_steps, "total_steps", minimum=1)
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
        if warmup_steps > total_steps:
            raise ValueError(f"Invalid warmup_steps: {warmup_steps!r} (must be <= total_steps={total_steps!r})")
        self.min_lr_ratio = check_real(min_lr_ratio, "min_lr_ratio", minimum=0.0, maximum=1.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.shape == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.shape == "cosine" else 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
            f"shape={self.shape!r}, min_lr_ratio={self.min_lr_ratio})"
        )


def warmup_schedule(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    shape: str = "cosine",
    min_lr_ratio: float = 0.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """A `LambdaLR` over `optimizer` applying `WarmupSchedule` to every param group."""
    return LambdaLR(optimizer, WarmupSchedule(warmup_steps, total_steps, shape, min_lr_ratio), last_epoch=last_epoch)


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0, last_epoch: int = -1
) -> LambdaLR:
    """Linear warmup for `warmup_steps`, then cosine decay to `min_lr_ratio` x lr at `total_steps`."""
    return warmup_schedule(optimizer, warmup_steps, total_steps, "cosine", min_lr_ratio, last_epoch)
