"""An independent reference Lion, written from the paper and not from the package.

Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2, for a parameter p
with gradient g and momentum m, learning rate lr, betas (b1, b2) and weight decay wd:

    c = b1*m + (1-b1)*g
    p = p - lr*(sign(c) + wd*p)
    m = b2*m + (1-b2)*g

in float64, term by term as printed (no lerp, no precomputed decay factor). ``maximize=True`` steps
on -g, as torch.optim's optimizers do. This module imports nothing from lion_integrations, so the
tests that compare against it check the package's rule rather than one of its paths against another.
"""

from __future__ import annotations

import torch


def reference_lion_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    maximize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Algorithm 2 in float64: (new param, new momentum, c). The inputs are not changed."""
    p, g, m = (tensor.detach().to(torch.float64) for tensor in (param, grad, exp_avg))
    if maximize:
        g = -g
    beta1, beta2 = betas
    c = beta1 * m + (1 - beta1) * g
    new_p = p - lr * (torch.sign(c) + weight_decay * p)
    new_m = beta2 * m + (1 - beta2) * g
    return new_p, new_m, c

