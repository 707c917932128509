"""`Lion`, a `torch.optim.Optimizer` over the rule in `rule.py`, with per-tensor, foreach and fused paths."""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from .cautious import cautious_step_sizes
from .checks import check_bool, check_real
from .fused import fusable, fused_step_, fused_unavailable_reason
from .rule import LionCoefficients, kept_count, lion_step_unfused_, uses_foreach
from .sharding import DTensor, local_shard
from .state import check_saved_groups, checked_exp_avg, decoded_entry, param_label

DEFAULT_LR = 1e-4
DEFAULT_BETAS = (0.9, 0.99)
# (kernel, device type) pairs whose fallback `fallback_path` has warned about.
_warned_fallback: set[tuple[str, str]] = set()


def as_momentum_dtype(value: Any) -> torch.dtype | None:
    """None (keep the parameter's dtype) or a floating torch dtype, also given by name ('float32')."""
    if value is None or isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype):
        return as_momentum_dtype(getattr(torch, value.removeprefix("torch.")))
    expected = "expected None or a floating dtype such as torch.float32"
    if not isinstance(value, (str, torch.dtype)):
        raise TypeError(f"Invalid momentum_dtype: {value!r} ({expected}, got {type(value).__name__})")
    raise ValueError(f"Invalid momentum_dtype: {value!r} ({expected})")


def validate_hyperparameters(lr: Any, betas: Any, weight_decay: Any) -> None:
    """Raise for the first argument that Lion cannot use: TypeError for a wrong type, ValueError for
    a value out of range. lr and weight_decay are finite and >= 0, each beta in [0, 1); a one-element
    tensor is accepted for each (a tensor lr)."""
    check_real(lr, "lr", minimum=0.0, allow_tensor=True)
    if not isinstance(betas, (tuple, list)):
        raise TypeError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2), got {type(betas).__name__})")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    for index, beta in enumerate(betas):
        check_real(beta, f"betas[{index}]", minimum=0.0, maximum=1.0, below_maximum=True, allow_tensor=True)
    check_real(weight_decay, "weight_decay", minimum=0.0, allow_tensor=True)


def validate_flags(group: dict[str, Any]) -> None:
    """Raise TypeError for a flag of `group` that is not a bool (or None, for foreach and fused)."""
    for name, allow_none in (("maximize", False), ("foreach", True), ("fused", True), ("cautious", False)):
        if name in group:
            check_bool(group[name], name, allow_none=allow_none)


def fallback_path(
    group: dict[str, Any], device_type: str, *, owner: str, kernel: str, reason: str, unfused: str
) -> str:
    """`unfused`, the path to take when `owner`'s compiled `kernel` cannot run on `device_type` (for
    `reason`): raises RuntimeError for ``fused=True``; for ``fused=None`` warns once per kernel and
    device type."""
    if group["fused"]:
        raise RuntimeError(f"{owner}(fused=True) cannot run on {device_type}: {reason}")
    if (kernel, device_type) not in _warned_fallback:
        _warned_fallback.add((kernel, device_type))
        warnings.warn(
            f"lion_integrations.{owner}: {kernel} unavailable on {device_type} ({reason}); using the {unfused} path",
            RuntimeWarning,
            stacklevel=4,
        )
    return unfused


class Lion(Optimizer):
    r"""Lion (EvoLved Sign Momentum), Chen et al. 2023, Algorithm 2.

    For each parameter p with gradient g and momentum m (state ``exp_avg``):

    .. math::
        c = \beta_1 m + (1-\beta_1) g, \quad
        p \leftarrow p - \mathrm{lr}\,(\mathrm{sign}(c) + \lambda p), \quad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    Weight decay ``λ`` is decoupled and multiplied by lr; there is no eps and no bias correction.
    Every update element is ±lr (plus decay), so use an lr 3-10x smaller than AdamW's and a weight
    decay 3-10x larger (see `lion_integrations.hparams.from_adamw`).

    Args:
        params: parameters or param groups, as for any torch optimizer.
        lr: step size, in parameter units per step (default 1e-4).
        betas: (beta1, beta2), each in [0, 1): interpolation for the update sign, and momentum decay.
        weight_decay: decoupled decay coefficient λ (default 0).
        maximize: ascend instead of descend.
        foreach: use the multi-tensor ``torch._foreach_*`` path when not fused (None: on CUDA only;
            on CPU the per-tensor loop is faster).
        fused: use the single-pass ``torch.compile`` kernel (None: when it compiles on this machine,
            falling back with one warning; True: required, raising if it cannot compile).
        momentum_dtype: dtype of ``exp_avg`` (None: the parameter's dtype; e.g. torch.float32 for
            bf16 parameters). The arithmetic is fp32 on every path.
        cautious: mask the update where sign(c) differs from sign(g) and divide lr by the kept
            fraction of the whole parameter (Liang et al. 2024; see `rule.py`). Each step then
            reads a parameter's gradient and momentum once more, to count what it keeps.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = DEFAULT_LR,
        betas: tuple[float, float] = DEFAULT_BETAS,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        momentum_dtype: torch.dtype | str | None = None,
        cautious: bool = False,
    ) -> None:
        validate_flags(dict(maximize=maximize, foreach=foreach, fused=fused, cautious=cautious))
        if fused and foreach:
            raise ValueError("Invalid fused=True with foreach=True: choose one execution path")
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            momentum_dtype=as_momentum_dtype(momentum_dtype),
            cautious=cautious,
        )
        validate_hyperparameters(lr, betas, weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key in ("lr", "betas", "weight_decay"):
            param_group.setdefault(key, self.defaults[key])
        validate_hyperparameters(param_group["lr"], param_group["betas"], param_group["weight_decay"])
        validate_flags(param_group)
        if "momentum_dtype" in param_group:
            param_group["momentum_dtype"] = as_momentum_dtype(param_group["momentum_dtype"])
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("momentum_dtype", None)
            group.setdefault("cautious", False)

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            dtype = group["momentum_dtype"] or param.dtype
            state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        return state

    def _local_grad(self, param: torch.Tensor, group: dict[str, Any]) -> torch.Tensor | None:
        """The gradient to apply to `param` (negated when maximizing) on this rank's shard; None if none."""
        if param.grad is None:
            return None
        if param.grad.is_sparse:
            raise ValueError(
                f"Invalid gradient: Lion does not support sparse gradients "
                f"(parameter of shape {tuple(param.shape)}); use a dense gradient"
            )
        grad = param.grad if not group["maximize"] else -param.grad
        if isinstance(param, DTensor) and isinstance(grad, DTensor) and grad.placements != param.placements:
            grad = grad.redistribute(param.device_mesh, param.placements)
        return local_shard(grad)

    def _params_to_step(self, group: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
        """(param, its gradient on this rank's shard, its state) for each param of `group` that has a
        gradient, creating the state on first use."""
        items = []
        for param in group["params"]:
            grad = self._local_grad(param, group)
            if grad is not None:
                items.append((param, grad, self._init_state(param, group)))
        return items

    def execution_path(self, group: dict[str, Any], device: torch.device, *, any_fusable: bool = True) -> str:
        """The path ('fused', 'foreach' or 'for-loop') a step of `group` takes on `device`.

        `any_fusable`: whether some tensor is large enough for the fused kernel; when none is,
        `fused=None` takes the unfused path without compiling anything.
        """
        if torch.compiler.is_compiling():
            return "foreach"  # the caller's own torch.compile fuses the traced step
        unfused = "foreach" if uses_foreach(group["foreach"], device.type) else "for-loop"
        if group["fused"] is False or group["fused"] is None and not any_fusable:
            return unfused
        reason = fused_unavailable_reason(device.type)
        if reason is None:
            return "fused"
        return fallback_path(group, device.type, owner="Lion", kernel="fused path", reason=reason, unfused=unfused)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        """One step of the params of `group` that have a gradient, each with its full-precision ``exp_avg``."""
        params, grads, exp_avgs, sources = [], [], [], []
        for param, grad, state in self._params_to_step(group):
            params.append(local_shard(param))
            grads.append(grad)
            exp_avgs.append(local_shard(state["exp_avg"]))
            sources.append(param)
        self._step_full_precision(group, params, grads, exp_avgs, sources)

    def _step_full_precision(self, group: dict[str, Any], params, grads, exp_avgs, sources) -> None:
        """Step `params` (shards of the parameters `sources`) of `group` with their `grads` and
        full-precision `exp_avgs`, bucketed by device and dtypes, each bucket on the path
        `execution_path` picks."""
        if not params:
            return
        coefficients = LionCoefficients.from_group(group["lr"], group["betas"], group["weight_decay"])
        cautious, step_sizes = group["cautious"], None
        if cautious:
            counts = [kept_count(grad, exp_avg, coefficients.update_weight) for grad, exp_avg in zip(grads, exp_avgs)]
            step_sizes = cautious_step_sizes(sources, counts, coefficients.step_size)
        buckets = defaultdict(list)
        for index, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
            buckets[(param.device, param.dtype, grad.dtype, exp_avg.dtype)].append(index)
        for (device, *_), indices in buckets.items():
            bucket = [[tensors[i] for i in indices] for tensors in (params, grads, exp_avgs)]
            any_fusable = any(fusable(param, exp_avg) for param, _, exp_avg in zip(*bucket))
            path = self.execution_path(group, device, any_fusable=any_fusable)
            own = None if step_sizes is None else [step_sizes[i] for i in indices]
            if path == "fused" and own is None:
                fused_step_(*bucket, coefficients)
            elif path == "fused":  # one compiled call per parameter, each with its step size
                for param, grad, exp_avg, step_size in zip(*bucket, own):
                    fused_step_([param], [grad], [exp_avg], dataclasses.replace(coefficients, step_size=step_size),
                                cautious=True)
            else:
                lion_step_unfused_(*bucket, coefficients, foreach=path == "foreach", cautious=cautious, step_sizes=own)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict after checking it fits; on any error the optimizer is left unchanged."""
        saved_groups = check_saved_groups(state_dict, self.param_groups)
        converted, kept = {}, {}
        for group, saved in zip(self.param_groups, saved_groups):
            validate_hyperparameters(
                saved.get("lr", group["lr"]), saved.get("betas", group["betas"]),
                saved.get("weight_decay", group["weight_decay"]),
            )
            for index, (param, param_id) in enumerate(zip(group["params"], saved["params"])):
                entry = state_dict["state"].get(param_id)
                if entry is None:
                    continue
                entry, keep = self._load_state_entry(param, entry, group, saved, param_label(param_id, saved, index))
                converted[param_id] = {key: value for key, value in entry.items() if key not in keep}
                kept[param] = keep
        super().load_state_dict({**state_dict, "state": {**state_dict["state"], **converted}})
        # torch casts floating state to the parameter's dtype; put back the tensors whose dtype must stay.
        for param, tensors in kept.items():
            for key, value in tensors.items():
                self.state[param][key] = value.to(device=param.device)

    def _load_state_entry(self, param, entry, group, saved_group, label):
        """Check the saved state `entry` of `param` and return (entry as this optimizer keeps it,
        {key: tensor} to keep in its own dtype); ValueError naming the parameter (`label`) if it does not fit.

        Momentum saved in another form (quantized codes, bitsandbytes' states: the decoders registered
        with `state.register_momentum_decoder`) is decoded to full precision first.
        """
        entry = decoded_entry(param, entry, saved_group, label)
        exp_avg = checked_exp_avg(entry, param, label)
        momentum_dtype = as_momentum_dtype(saved_group.get("momentum_dtype"))
        return entry, ({"exp_avg": exp_avg.to(dtype=momentum_dtype)} if momentum_dtype is not None else {})
