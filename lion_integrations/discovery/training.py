"""The batched trainer: many copies of a task's model trained by one program at once.

One evaluation trains ``len(lrs) * len(seeds)`` models together: their weights are rows of one
``[B, P]`` tensor, layers run as batched matmuls (`models`), and the program updates all rows in one call
(lr is a ``[B, 1]`` column; `norm` reduces per model and per parameter tensor). Models with the same
seed share their initialisation and minibatches across the lr grid. Fitness is the final validation
cross-entropy, averaged over seeds, at the best lr of the grid (lower is better); a run that
diverges scores `penalty` (2 ln C). Run with ``torch.set_num_threads(1)``: these sizes gain nothing
from intra-op threads, and lose much to them on a busy machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .data import load_data
from .execute import as_tensor_like, compile_program
from .models import MLP, Transformer
from .program import Program
from .tasks import TaskSpec


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


VAL_CHUNK = 1024  # validation examples per forward pass (bounds a transformer's activations)


class Task:
    """A `TaskSpec` ready to run: data loaded, parameter layout fixed."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.data = load_data(spec.data, spec.context)
        data = self.data
        if spec.model == "transformer":
            self.model = Transformer(data.dim, data.tokens, spec.hidden[0], len(spec.hidden), data.classes)
        else:
            self.model = MLP(data.dim, spec.hidden, data.classes, spec.layer_norm)
        self.shapes = self.model.shapes
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)
        self.penalty = 2 * math.log(data.classes)

    def __repr__(self) -> str:
        s = self.spec
        extras = "".join(f", {what}" for what, on in ((f"{s.schedule} lr", s.schedule != "constant"),
                                                      ("layer norm", s.layer_norm)) if on)
        return (f"Task({s.name}: {s.data}, {self.model.description} ({self.size} params), {s.steps} steps x "
                f"{s.batch_size}, {len(s.lrs)} lrs x {len(s.seeds)} seeds{extras})")

    def _layers(self, theta: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append(theta[:, start:start + size].view(theta.shape[0], *shape))
            start += size
        return out

    def _forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward(self._layers(theta), x)

    def _init(self, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        parts = []
        for shape, std in zip(self.shapes, self.model.stds):
            if std:
                parts.append(torch.randn(shape, generator=generator).flatten() * std)
            else:
                parts.append(torch.zeros(shape).flatten())
        return torch.cat(parts)

    def _segment_norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.size:
            return torch.linalg.vector_norm(x)  # a per-model scalar already
        sums = torch.stack([chunk.square().sum(-1) for chunk in x.split(self.sizes, dim=-1)], -1).sqrt()
        return sums.repeat_interleave(torch.tensor(self.sizes), dim=-1)

    def train(self, step: Callable, lrs: tuple[float, ...] | None = None) -> TaskResult:
        """Train one model per (seed, lr) with `step(w, g, m, v, lr, norm) -> (update, m, v)`."""
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
        lr_schedule = spec.lr_schedule()
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
                factor = lr_schedule(index)
                update, m, v = step(theta, grad, m, v, lr if factor == 1.0 else lr * factor, self._segment_norm)
                theta = theta - as_tensor_like(update, theta)
                m, v = as_tensor_like(m, theta), as_tensor_like(v, theta)
                if index % 25 == 24 and not torch.isfinite(theta).any(1).any():
                    break
            logits = torch.cat([self._forward(theta, chunk) for chunk in data.val.split(VAL_CHUNK)], 1)
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
