"""Programs and runs shared by the discovery tests: the built-in Lion and AdamW programs, a program's
weight trajectory on a fixed gradient stream, and two small parameters."""

from __future__ import annotations

import torch

from lion_integrations.discovery import BUILTIN, Program, compile_program, parse
from lion_integrations.discovery.execute import as_tensor_like


LION = parse(BUILTIN["lion"])


ADAMW = parse(BUILTIN["adamw"])


def run_steps(program: Program | str, steps: int = 4, seed: int = 0, shape=(3, 5)) -> list[torch.Tensor]:
    """Weights after each of `steps` steps of `program` on a fixed random gradient stream (float64)."""
    step = compile_program(program)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    lr = torch.tensor(0.01, dtype=torch.float64)
    history = []
    for _ in range(steps):
        g = torch.randn(shape, generator=gen, dtype=torch.float64) + 0.1 * w
        update, m, v = step(w, g, m, v, lr)
        w = w - as_tensor_like(update, w)
        m, v = as_tensor_like(m, w), as_tensor_like(v, w)
        history.append(w.clone())
    return history


def same_trajectory(a, b, **steps) -> bool:
    """Equal weights wherever both runs are finite (inf - inf = nan can differ from an identity's result)."""
    for x, y in zip(run_steps(a, **steps), run_steps(b, **steps)):
        finite = torch.isfinite(x) & torch.isfinite(y)
        if not torch.allclose(x[finite], y[finite], rtol=1e-9, atol=1e-12):
            return False
    return True


def small_params(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))]
