"""Proxy tasks: small MLPs trained by a program, many copies at once, on bundled data only.

* ``digits``: scikit-learn's 8x8 digits (1797 images, 10 classes), a fixed 1200/597 split.
* ``text``: next-character prediction from the `context` previous characters of the Python standard
  library's own source text (one-hot context, 48-symbol vocabulary), split by position: 400k
  characters of its top-level modules in name order (a..z).
* ``text2``: the same from the modules in reverse name order (z..a): disjoint text, for the search,
  so that ``text`` stays held out.

One evaluation trains ``len(lrs) * len(seeds)`` MLPs together: their weights are rows of one
``[B, P]`` tensor, layers run as batched matmuls, and the program updates all rows in one call
(lr is a ``[B, 1]`` column; `norm` reduces per model and per parameter tensor). Models with the same
seed share their initialisation and minibatches across the lr grid. Fitness is the final validation
cross-entropy, averaged over seeds, at the best lr of the grid (lower is better); a run that
diverges scores `penalty` (2 ln C). A `Suite` scores a program on several tasks as the mean of
loss / (tuned AdamW's loss). Run with ``torch.set_num_threads(1)``: these sizes gain nothing from
intra-op threads, and lose much to them on a busy machine.
"""

from __future__ import annotations

import functools
import math
import sysconfig
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .execute import as_tensor_like, compile_program
from .program import Program


def lr_grid(low: float, high: float, per_decade: int = 2) -> tuple[float, ...]:
    """Log-spaced lrs from 10**low to 10**high, `per_decade` a decade."""
    count = round((high - low) * per_decade) + 1
    return tuple(round(10 ** (low + i / per_decade), 8) for i in range(count))


# The baseline gets more tuning than any candidate: decoupled weight decays over two decades and an
# lr grid twice as dense as the tasks' own (a win over it is not a win over an under-tuned AdamW).
ADAMW_WEIGHT_DECAYS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
ADAMW_LRS_PER_DECADE = 4


def denser(lrs: tuple[float, ...], per_decade: int = ADAMW_LRS_PER_DECADE) -> tuple[float, ...]:
    """A log grid over the same range as `lrs`, `per_decade` a decade (at least `lrs` itself)."""
    if len(lrs) < 2:
        return tuple(lrs)
    low, high = math.log10(min(lrs)), math.log10(max(lrs))
    return tuple(sorted(set(lrs) | set(lr_grid(low, high, per_decade))))


@dataclass(frozen=True)
class TaskSpec:
    """A training setup: data set, hidden widths, steps, batch size, the lr grid and the seeds."""

    name: str
    data: str  # 'digits', 'text' or 'text2'
    hidden: tuple[int, ...]
    steps: int
    batch_size: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    context: int = 8  # characters of context, for text

    def with_lrs(self, lrs: tuple[float, ...]) -> "TaskSpec":
        return replace(self, lrs=tuple(lrs))


# The proxy suite: ~0.2 s per task and program on one CPU thread.
PROXY_DIGITS = TaskSpec("digits", "digits", (32,), steps=150, batch_size=64, lrs=lr_grid(-3.5, -1.0), seeds=(0, 1))
PROXY_TEXT = TaskSpec("text2", "text2", (32,), steps=120, batch_size=64, lrs=lr_grid(-3.5, -1.0), seeds=(0, 1), context=4)
# The funnel suite: >=10x the proxy's compute (~10x the parameters, 2x the steps), other seeds.
FUNNEL_DIGITS = TaskSpec("digits", "digits", (128, 128), steps=300, batch_size=64, lrs=lr_grid(-4.0, -1.5), seeds=(10, 11))
FUNNEL_TEXT = TaskSpec("text2", "text2", (128,), steps=300, batch_size=64, lrs=lr_grid(-4.0, -1.5), seeds=(10, 11))
# Held out: text the search never sees (other modules), a deeper MLP, other seeds.
HELDOUT = TaskSpec("heldout", "text", (192, 192), steps=400, batch_size=128, lrs=lr_grid(-4.0, -1.5), seeds=(20, 21))
PROXY, FUNNEL = (PROXY_DIGITS, PROXY_TEXT), (FUNNEL_DIGITS, FUNNEL_TEXT)
TINY = TaskSpec("tiny", "digits", (16,), steps=40, batch_size=32, lrs=lr_grid(-3.0, -2.0), seeds=(0,))


@dataclass
class Data:
    train: torch.Tensor  # features, or symbol ids for 'text'
    train_y: torch.Tensor
    val: torch.Tensor  # dense features
    val_y: torch.Tensor
    classes: int
    features: Callable[[torch.Tensor], torch.Tensor]  # rows of `train` -> dense features

    @property
    def dim(self) -> int:
        return self.val.shape[1]


@functools.lru_cache(maxsize=None)
def load_digits_data() -> Data:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:1200], order[1200:]
    return Data(x[train], y[train], x[val], y[val], 10, lambda rows: rows)


VOCAB, TEXT_CHARS, VAL_SAMPLES = 48, 400_000, 4096


def stdlib_text(chars: int = TEXT_CHARS, reverse: bool = False) -> str:
    """The first `chars` characters of the standard library's top-level modules, in name order
    (reverse name order with `reverse`)."""
    directory = Path(sysconfig.get_paths()["stdlib"])
    pieces, total = [], 0
    for path in sorted(directory.glob("*.py"), reverse=reverse):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        pieces.append(text)
        total += len(text)
        if total >= chars:
            break
    text = "".join(pieces)[:chars]
    if len(text) < chars // 4:
        raise RuntimeError(f"the standard library source under {directory} is missing (found {len(text)} characters)")
    return text


@functools.lru_cache(maxsize=None)
def load_text_data(context: int = 8, reverse: bool = False) -> Data:
    text = stdlib_text(reverse=reverse)
    common = [c for c, _ in Counter(text).most_common(VOCAB - 1)]
    index = {c: i for i, c in enumerate(common)}
    ids = torch.tensor([index.get(c, VOCAB - 1) for c in text], dtype=torch.long)
    windows = ids.unfold(0, context + 1, 1)  # [N, context + 1]
    split = int(0.9 * len(windows))
    train, val = windows[:split], windows[split:]
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:VAL_SAMPLES]
    val = val[pick]

    def features(rows: torch.Tensor) -> torch.Tensor:
        return F.one_hot(rows, VOCAB).flatten(-2).float()

    return Data(train[:, :context], train[:, context], features(val[:, :context]), val[:, context], VOCAB, features)


def load_data(name: str, context: int = 8) -> Data:
    loaders = {
        "digits": load_digits_data,
        "text": lambda: load_text_data(context),
        "text2": lambda: load_text_data(context, reverse=True),
    }
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r} (known: {', '.join(loaders)})")
    return loaders[name]()


class AdamWStep:
    """Reference AdamW (bias-corrected, eps outside the sqrt, decoupled decay lr*wd*w) as a step function."""

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


@dataclass
class TaskResult:
    """Validation loss (mean over seeds) and accuracy at each lr; `loss` is the best, at `lr`."""

    losses: dict[float, float]
    accuracies: dict[float, float]
    seconds: float = 0.0
    loss: float = field(init=False)
    lr: float = field(init=False)

    def __post_init__(self) -> None:
        self.lr = min(self.losses, key=self.losses.get)
        self.loss = self.losses[self.lr]

    @property
    def accuracy(self) -> float:
        return self.accuracies[self.lr]


class Task:
    """A `TaskSpec` ready to run: data loaded, parameter layout fixed."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.data = load_data(spec.data, spec.context)
        widths = [self.data.dim, *spec.hidden, self.data.classes]
        self.shapes: list[tuple[int, ...]] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.shapes += [(fan_in, fan_out), (fan_out,)]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)
        self.penalty = 2 * math.log(self.data.classes)

    def __repr__(self) -> str:
        s = self.spec
        return (f"Task({s.name}: {s.data}, MLP {self.data.dim}-{'-'.join(map(str, s.hidden))}-{self.data.classes} "
                f"({self.size} params), {s.steps} steps x {s.batch_size}, {len(s.lrs)} lrs x {len(s.seeds)} seeds)")

    def _layers(self, theta: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append(theta[:, start:start + size].view(theta.shape[0], *shape))
            start += size
        return out

    def _forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layers = self._layers(theta)
        h = x
        for index in range(0, len(layers), 2):
            weight, bias = layers[index], layers[index + 1]
            h = torch.matmul(h, weight) + bias.unsqueeze(1)
            if index + 2 < len(layers):
                h = torch.relu(h)
        return h

    def _init(self, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        parts = []
        for shape in self.shapes:
            if len(shape) == 2:
                parts.append(torch.randn(shape, generator=generator).flatten() * math.sqrt(2.0 / shape[0]))
            else:
                parts.append(torch.zeros(shape))
        return torch.cat(parts)

    def _segment_norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.size:
            return torch.linalg.vector_norm(x)  # a per-model scalar already
        sums = torch.stack([chunk.square().sum(-1) for chunk in x.split(self.sizes, dim=-1)], -1).sqrt()
        return sums.repeat_interleave(torch.tensor(self.sizes), dim=-1)

    def train(self, step: Callable, lrs: tuple[float, ...] | None = None) -> TaskResult:
        """Train one MLP per (seed, lr) with `step(w, g, m, v, lr, norm) -> (update, m, v)`."""
        import time

        start = time.perf_counter()
        spec, data = self.spec, self.data
        lrs = tuple(lrs or spec.lrs)
        n_lr, n_seed = len(lrs), len(spec.seeds)
        batch = n_lr * n_seed
        theta = torch.stack([self._init(seed) for seed in spec.seeds]).repeat_interleave(n_lr, 0)
        lr = torch.tensor(lrs, dtype=torch.float32).repeat(n_seed).unsqueeze(1)
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        generators = [torch.Generator().manual_seed(1000 + seed) for seed in spec.seeds]
        n_train = len(data.train_y)
        with torch.no_grad():
            for index in range(spec.steps):
                rows = torch.stack([torch.randint(n_train, (spec.batch_size,), generator=gen) for gen in generators])
                x = data.features(data.train[rows]).repeat_interleave(n_lr, 0)  # [batch, bs, dim]
                y = data.train_y[rows].repeat_interleave(n_lr, 0)
                with torch.enable_grad():
                    leaf = theta.requires_grad_(True)
                    logits = self._forward(leaf, x)
                    loss = F.cross_entropy(logits.reshape(-1, data.classes), y.reshape(-1), reduction="sum")
                    (grad,) = torch.autograd.grad(loss / spec.batch_size, leaf)
                theta = theta.detach()
                update, m, v = step(theta, grad, m, v, lr, self._segment_norm)
                theta = theta - as_tensor_like(update, theta)
                m, v = as_tensor_like(m, theta), as_tensor_like(v, theta)
                if index % 25 == 24 and not torch.isfinite(theta).any(1).any():
                    break
            logits = self._forward(theta, data.val)  # [batch, n_val, classes]
            losses = F.cross_entropy(logits.transpose(1, 2), data.val_y.expand(batch, -1), reduction="none").mean(1)
            accuracies = (logits.argmax(-1) == data.val_y).float().mean(1)
        losses = torch.nan_to_num(losses, nan=self.penalty, posinf=self.penalty).clamp(max=self.penalty)
        losses = losses.view(n_seed, n_lr).mean(0)
        accuracies = accuracies.view(n_seed, n_lr).mean(0)
        return TaskResult(
            {lr_: float(l) for lr_, l in zip(lrs, losses)},
            {lr_: float(a) for lr_, a in zip(lrs, accuracies)},
            time.perf_counter() - start,
        )

    def evaluate(self, program: Program | str, lrs: tuple[float, ...] | None = None) -> TaskResult:
        """Fitness of `program` on this task (best lr of the grid)."""
        return self.train(compile_program(program), lrs)

    def adamw(self, weight_decays=ADAMW_WEIGHT_DECAYS, betas=(0.9, 0.999)) -> tuple[TaskResult, float]:
        """Tuned AdamW: the best over a denser lr grid than the task's and `weight_decays`; (result,
        weight decay)."""
        lrs = denser(self.spec.lrs)
        results = {wd: self.train(AdamWStep(betas, 1e-8, wd), lrs) for wd in weight_decays}
        best = min(results, key=lambda wd: results[wd].loss)
        return results[best], best


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
                self.references[name], self.reference_decays[name] = task.adamw(weight_decays)
        return SuiteResult(dict(self.references), 1.0)

    def evaluate(self, program: Program | str) -> SuiteResult:
        references = self.adamw().parts
        parts = {name: task.evaluate(program) for name, task in self.tasks.items()}
        relative = [parts[name].loss / references[name].loss for name in parts]
        return SuiteResult(parts, sum(relative) / len(relative))
