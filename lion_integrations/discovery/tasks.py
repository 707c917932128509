"""The search's tasks: small MLPs or transformers, their data, training length, lr grids and seeds.

An evaluation trains one model per (seed, lr) of a `TaskSpec` on its data set (`data`) with the batched
trainer (`training`); fitness is the final validation cross-entropy at the best lr of the grid. The
search scores programs on a proxy stage, checks its best ones on a funnel stage (more compute, other
seeds) and reports on a held-out stage, each relative to tuned AdamW (`baseline`, `scoring`).
`SUITES` holds two setups of the three stages:

* "mlp" (`PROXY`, `FUNNEL`, `HELDOUT`): MLPs on the digits and on standard-library text; the funnel
  has >= 10x the proxy's compute, the held-out task is text the search never sees in a deeper MLP.
  None of these is in Lion's regime: tuned AdamW beats tuned Lion on each of them and on
  larger-batch, longer, wider and deeper variants, with a constant lr or a cosine decay, with or
  without layer norm (`benchmarks/discovery_tasks.py`, docs/discovery.md).
* "transformer": one-block transformers on the digits at a constant lr, where tuned Lion beats the
  search's AdamW baseline (and at batch 128 also AdamW with its beta2 tuned).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..schedules import WarmupSchedule
from .models import MODELS

SCHEDULES = ("constant", "cosine")


def lr_grid(low: float, high: float, per_decade: int = 2) -> tuple[float, ...]:
    """Log-spaced lrs from 10**low to 10**high, `per_decade` a decade."""
    count = round((high - low) * per_decade) + 1
    return tuple(round(10 ** (low + i / per_decade), 8) for i in range(count))


@dataclass(frozen=True)
class TaskSpec:
    """A training setup: data set, hidden widths, steps, batch size, the lr grid, the seeds, and the lr
    schedule every program is trained under: "constant", or "cosine" (lr * (1 + cos(pi * t / steps)) / 2
    at step t = 0 .. steps - 1, decaying towards 0). With `layer_norm`, each hidden layer's
    pre-activations are normalized to zero mean and unit variance over its units (no affine
    parameters) before the ReLU. `model` "transformer" trains `models.Transformer` instead of an MLP:
    ``len(hidden)`` blocks of width ``hidden[0]`` (all widths equal), over the input's tokens (the
    text's context characters, a digit's 8 pixel rows); it normalizes every block's input already, so
    `layer_norm` is for MLPs only."""

    name: str
    data: str  # 'digits', 'text' or 'text2'
    hidden: tuple[int, ...]
    steps: int
    batch_size: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    context: int = 8  # characters of context, for text
    schedule: str = "constant"
    layer_norm: bool = False
    model: str = "mlp"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TaskSpec {self.name!r}: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.model not in MODELS:
            raise ValueError(f"TaskSpec {self.name!r}: model must be one of {MODELS}, got {self.model!r}")
        if self.model == "transformer" and len(set(self.hidden)) != 1:
            raise ValueError(f"TaskSpec {self.name!r}: a transformer's hidden widths must be equal and at least one, "
                             f"got {self.hidden!r}")
        if self.model == "transformer" and self.layer_norm:
            raise ValueError(f"TaskSpec {self.name!r}: layer_norm=True is for MLPs; a transformer normalizes every "
                             f"block's input already")

    def lr_schedule(self) -> WarmupSchedule:
        """The multiplier of every lr at step t (0-based): `schedule`'s shape without warmup, decaying
        to 0 at `steps` (`lion_integrations.schedules`)."""
        return WarmupSchedule(0, self.steps, self.schedule)


# The proxy suite: ~0.2 s per task and program on one CPU thread.
PROXY_DIGITS = TaskSpec("digits", "digits", (32,), steps=150, batch_size=64, lrs=lr_grid(-3.5, -1.0), seeds=(0, 1))
PROXY_TEXT = TaskSpec("text2", "text2", (32,), steps=120, batch_size=64, lrs=lr_grid(-3.5, -1.0), seeds=(0, 1), context=4)
# The funnel suite: >=10x the proxy's compute (~10x the parameters, 2x the steps), other seeds.
FUNNEL_DIGITS = TaskSpec("digits", "digits", (128, 128), steps=300, batch_size=64, lrs=lr_grid(-4.0, -1.5), seeds=(10, 11))
FUNNEL_TEXT = TaskSpec("text2", "text2", (128,), steps=300, batch_size=64, lrs=lr_grid(-4.0, -1.5), seeds=(10, 11))
# Held out: text the search never sees (other modules), a deeper MLP, other seeds.
HELDOUT = TaskSpec("heldout", "text", (192, 192), steps=400, batch_size=128, lrs=lr_grid(-4.0, -1.5), seeds=(20, 21))
PROXY, FUNNEL = (PROXY_DIGITS, PROXY_TEXT), (FUNNEL_DIGITS, FUNNEL_TEXT)

# Stages in Lion's regime by the search's own baseline (AdamW, betas 0.9, 0.999, tuned over lr and
# weight decay): one-block transformers on the digits at a constant lr. The proxy takes ~4 s per program
# on one thread, the funnel twice the proxy's compute (twice the batch), the held-out task a second
# block; each has its own seeds. The held-out task shares the digits' data with the others.
PROXY_DIGITS_TRANSFORMER = TaskSpec("digits transformer", "digits", (32,), steps=150, batch_size=128,
                                    lrs=lr_grid(-3.5, -1.0), seeds=(0, 1), model="transformer")
FUNNEL_DIGITS_TRANSFORMER = replace(PROXY_DIGITS_TRANSFORMER, name="digits transformer b256", batch_size=256,
                                    seeds=(10, 11))
HELDOUT_DIGITS_TRANSFORMER = replace(PROXY_DIGITS_TRANSFORMER, name="heldout transformer 2x32", hidden=(32, 32),
                                     seeds=(20, 21))

SUITES = {
    "mlp": {"proxy": PROXY, "funnel": FUNNEL, "heldout": (HELDOUT,)},
    "transformer": {"proxy": (PROXY_DIGITS_TRANSFORMER,), "funnel": (FUNNEL_DIGITS_TRANSFORMER,),
                    "heldout": (HELDOUT_DIGITS_TRANSFORMER,)},
}
"""Each search setup's stages: {setup: {"proxy" | "funnel" | "heldout": task specs}}."""

TINY = TaskSpec("tiny", "digits", (16,), steps=40, batch_size=32, lrs=lr_grid(-3.0, -2.0), seeds=(0,))
