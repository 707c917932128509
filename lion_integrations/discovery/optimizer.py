"""`DiscoveredOptimizer`: any program of this package as a `torch.optim.Optimizer`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from ..optimizer import closure_loss
from .abstract import analyze
from .execute import as_tensor_like, compile_program
from .program import Program, parse

# Programs by name. lr is the optimizer's lr; the update is subtracted from the weights.
BUILTIN = {
    "adamw": (
        "g2 = square(g); m = interp(g, m, 0.9); v = interp(g2, v, 0.999); sqrt_v = sqrt(v); "
        "sqrt_v = sqrt_v + 1e-08; update = m / sqrt_v; wd = w * 0.01; update = update + wd; update = update * lr"
    ),
    "lion": (
        "update = interp(g, m, 0.9); update = sign(update); m = interp(g, m, 0.99); "
        "update = update * lr"
    ),
    "sgd_momentum": "m = interp(g, m, 0.9); update = m * lr",
}


def resolve_program(program: Program | str) -> Program:
    """A Program from a Program, a builtin name ('lion', 'adamw', 'sgd_momentum'), program text, or
    the path of a file holding program text."""
    if isinstance(program, Program):
        return program
    if not isinstance(program, str):
        raise ValueError(f"Invalid program: {program!r} (expected program text, a builtin name or a file path)")
    if program in BUILTIN:
        return parse(BUILTIN[program])
    if "=" not in program and os.path.isfile(program):
        with open(program, encoding="utf-8") as handle:
            return parse(handle.read())
    if "=" not in program:
        raise ValueError(
            f"Invalid program: {program!r} is not program text, a builtin name ({', '.join(BUILTIN)}) or a file"
        )
    return parse(program)


class DiscoveredOptimizer(Optimizer):
    r"""Runs a discovered program per parameter: ``update, m, v = train(w, g, m, v, lr)``, then

    .. math:: w \leftarrow w - \mathrm{update} - \mathrm{lr}\,\lambda\, w

    with m, v (state ``m``, ``v``) starting at 0 and the arithmetic in fp32. λ (``weight_decay``) is
    decoupled and optional, on top of any decay the program has.

    Args:
        params: parameters or param groups.
        program: program text (one statement a line or ``;``-separated, see `program.parse`), a
            `Program`, a builtin name ('lion', 'adamw', 'sgd_momentum') or a path to a file with the
            text. It is stored as text in the param groups, so state dicts and pickles carry it.
        lr: the program's ``lr`` input.
        weight_decay: extra decoupled decay λ (default 0).
        maximize: ascend instead of descend.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        program: str = "lion",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(program=self._checked_text(program), lr=lr, weight_decay=weight_decay, maximize=maximize)
        self._check_numbers(lr, weight_decay)
        super().__init__(params, defaults)

    @staticmethod
    def _checked_text(program: Program | str) -> str:
        resolved = resolve_program(program)
        analysis = analyze(resolved)
        if not analysis.valid:
            raise ValueError(f"Invalid program: {analysis.reason}")
        return str(resolved)

    @staticmethod
    def _check_numbers(lr: Any, weight_decay: Any) -> None:
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        if not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"Invalid lr: {lr!r} (must be a number >= 0)")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be a number >= 0)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "program" in param_group:
            param_group["program"] = self._checked_text(param_group["program"])
        self._check_numbers(
            param_group.get("lr", self.defaults["lr"]), param_group.get("weight_decay", self.defaults["weight_decay"])
        )
        super().add_param_group(param_group)

    @property
    def program(self) -> Program:
        """The first param group's program."""
        return parse(self.param_groups[0]["program"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One step of every group's program; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            run = compile_program(group["program"])
            lr, decay = float(group["lr"]), float(group["weight_decay"])
            lr_tensors: dict[torch.device, torch.Tensor] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("Invalid gradient: DiscoveredOptimizer does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["m"] = torch.zeros_like(param, dtype=torch.float32)
                    state["v"] = torch.zeros_like(param, dtype=torch.float32)
                if param.device not in lr_tensors:
                    lr_tensors[param.device] = torch.tensor(lr, dtype=torch.float32, device=param.device)
                w = param.float()
                g = param.grad.float()
                if group["maximize"]:
                    g = -g
                update, m, v = run(w, g, state["m"], state["v"], lr_tensors[param.device])
                inputs = (w, g, param, param.grad)
                # outputs must not alias tensors that change below (the weights) or that others own (grads)
                m, v = (x.clone() if any(x is t for t in inputs) else x for x in (as_tensor_like(m, w), as_tensor_like(v, w)))
                update = as_tensor_like(update, w)
                if decay:
                    w = w * (1.0 - lr * decay) if w is not param else w.mul_(1.0 - lr * decay)
                new_w = w - update if w is not param else w.sub_(update)
                if new_w is not param:
                    param.copy_(new_w)
                state["m"], state["v"] = m.contiguous(), v.contiguous()
        return loss
