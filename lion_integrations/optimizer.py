"""`Lion`, a `torch.optim.Optimizer` over the rule in `rule.py`, with per-tensor, foreach and fused paths."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from .fused import fusable, fused_step_, fused_unavailable_reason
from .rule import LionCoefficients, lion_step_foreach_, lion_step_tensor_

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()

DEFAULT_LR = 1e-4
DEFAULT_BETAS = (0.9, 0.99)
PATHS = ("fused", "foreach", "for-loop")
_warned_fallback: set[str] = set()


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: a tensor {name} must hold one value, got shape {tuple(value.shape)}")
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: {value!r} is not a number") from None
    if math.isnan(number):
        raise ValueError(f"Invalid {name}: {value!r}")
    return number


def as_momentum_dtype(value: Any) -> torch.dtype | None:
    """None (keep the parameter's dtype) or a floating torch dtype, also given by name ('float32')."""
    if value is None or isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype):
        return as_momentum_dtype(getattr(torch, value.removeprefix("torch.")))
    raise ValueError(f"Invalid momentum_dtype: {value!r} (expected None or a floating dtype such as torch.float32)")


def validate_hyperparameters(lr: Any, betas: Any, weight_decay: Any) -> None:
    """Raise ValueError naming the first argument that Lion cannot use."""
    if not 0.0 <= _as_float(lr, "lr") < math.inf:
        raise ValueError(f"Invalid lr: {lr!r} (must be finite and >= 0)")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    for index, beta in enumerate(betas):
        if not 0.0 <= _as_float(beta, f"betas[{index}]") < 1.0:
            raise ValueError(f"Invalid betas[{index}]: {beta!r} (must be in [0, 1))")
    if not 0.0 <= _as_float(weight_decay, "weight_decay") < math.inf:
        raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be finite and >= 0)")


def validate_flags(group: dict[str, Any]) -> None:
    """Raise ValueError for a path flag that is not a bool (or None, for foreach and fused)."""
    for name, allowed in (("maximize", (False, True)), ("foreach", (None, False, True)), ("fused", (None, False, True))):
        value = group.get(name)
        if name in group and not any(value is choice for choice in allowed):
            raise ValueError(f"Invalid {name}: {value!r} (expected {' or '.join(map(str, allowed))})")


def fallback_path(owner: str, kernel: str, group: dict[str, Any], device_type: str, reason: str, unfused: str,
                  warned: set[str]) -> str:
    """`unfused`, when `owner`'s compiled `kernel` cannot run on `device_type` (for `reason`): raises
    for ``fused=True``; for ``fused=None`` warns once per device type (recorded in `warned`)."""
    if group["fused"]:
        raise RuntimeError(f"{owner}(fused=True) cannot run on {device_type}: {reason}")
    if device_type not in warned:
        warned.add(device_type)
        warnings.warn(
            f"lion_integrations.{owner}: {kernel} unavailable on {device_type} ({reason}); using the {unfused} path",
            RuntimeWarning,
            stacklevel=4,
        )
    return unfused


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The shard a DTensor holds on this rank; the rule is elementwise, so it runs on shards."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


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
    """

    _codec_state = False  # True in subclasses that keep some momenta quantized (Lion8bit, Lion4bit)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        momentum_dtype: torch.dtype | str | None = None,
    ) -> None:
        validate_flags(dict(maximize=maximize, foreach=foreach, fused=fused))
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
        return _local(grad)

    def _gather(self, group: dict[str, Any]):
        params, grads, exp_avgs = [], [], []
        for param in group["params"]:
            grad = self._local_grad(param, group)
            if grad is None:
                continue
            state = self._init_state(param, group)
            if self._codec_state and "exp_avg" not in state:
                continue  # momentum stored by a codec (Lion8bit, Lion4bit), stepped by its own path
            params.append(_local(param))
            grads.append(grad)
            exp_avgs.append(_local(state["exp_avg"]))
        return params, grads, exp_avgs

    def execution_path(self, group: dict[str, Any], device: torch.device, *, any_fusable: bool = True) -> str:
        """The path ('fused', 'foreach' or 'for-loop') a step of `group` takes on `device`.

        `any_fusable`: whether some tensor is large enough for the fused kernel; when none is,
        `fused=None` takes the unfused path without compiling anything.
        """
        if torch.compiler.is_compiling():
            return "foreach"  # the caller's own torch.compile fuses the traced step
        foreach = group["foreach"]
        unfused = "foreach" if (foreach or foreach is None and device.type == "cuda") else "for-loop"
        if group["fused"] is False or group["fused"] is None and not any_fusable:
            return unfused
        reason = fused_unavailable_reason(device.type)
        if reason is None:
            return "fused"
        return fallback_path("Lion", "fused path", group, device.type, reason, unfused, _warned_fallback)

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
        params, grads, exp_avgs = self._gather(group)
        if not params:
            return
        coefficients = LionCoefficients.from_group(group["lr"], group["betas"], group["weight_decay"])
        buckets = defaultdict(list)
        for index, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
            buckets[(param.device, param.dtype, grad.dtype, exp_avg.dtype)].append(index)
        for (device, *_), indices in buckets.items():
            bucket = [[tensors[i] for i in indices] for tensors in (params, grads, exp_avgs)]
            any_fusable = any(fusable(param, exp_avg) for param, _, exp_avg in zip(*bucket))
            path = self.execution_path(group, device, any_fusable=any_fusable)
            if path == "fused":
                fused_step_(*bucket, coefficients)
            elif path == "foreach":
                lion_step_foreach_(*bucket, *vars(coefficients).values())
            else:
                for param, grad, exp_avg in zip(*bucket):
                    lion_step_tensor_(param, grad, exp_avg, *vars(coefficients).values())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict after checking it fits; on any error the optimizer is left unchanged."""
        saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if saved_groups is None or "state" not in state_dict:
            raise ValueError("Invalid state_dict: expected a dict with 'state' and 'param_groups'")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict: it has {len(saved_groups)} param groups, the optimizer {len(self.param_groups)}"
            )
        from .quantization.convert import param_label

        converted, kept = {}, {}
        for group_index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"Invalid state_dict: param group {group_index} has no 'params' list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"Invalid state_dict: param group {group_index} has {len(saved['params'])} params, "
                    f"the optimizer's has {len(group['params'])}"
                )
            validate_hyperparameters(
                saved.get("lr", group["lr"]), saved.get("betas", group["betas"]),
                saved.get("weight_decay", group["weight_decay"]),
            )
            for index, (param, param_id) in enumerate(zip(group["params"], saved["params"])):
                entry = state_dict["state"].get(param_id)
                if entry is None:
                    continue
                label = param_label(param_id, saved, index)
                entry, keep = self._load_state_entry(param, param_id, entry, group, saved, label)
                converted[param_id] = {key: value for key, value in entry.items() if key not in keep}
                kept[param] = keep
        super().load_state_dict({**state_dict, "state": {**state_dict["state"], **converted}})
        # torch casts floating state to the parameter's dtype; put back the tensors whose dtype must stay.
        for param, tensors in kept.items():
            for key, value in tensors.items():
                self.state[param][key] = value.to(device=param.device)

    def _load_state_entry(self, param, param_id, entry, group, saved_group, label):
        """Check the saved state `entry` of `param` and return (entry as this optimizer keeps it,
        {key: tensor} to keep in its own dtype); ValueError naming the parameter (`label`) if it does not fit.

        The hook through which Lion8bit/Lion4bit keep momentum in a codec. Quantized momentum (theirs,
        or bitsandbytes' state1/qmap1/absmax1) is decoded here, so Lion loads their checkpoints too.
        """
        from .quantization.convert import dequantized_entry

        entry = dequantized_entry(param, param_id, entry, saved_group, label)
        exp_avg = entry.get("exp_avg") if isinstance(entry, dict) else None
        if not isinstance(exp_avg, torch.Tensor):
            raise ValueError(f"Invalid state_dict: state of {label} has no 'exp_avg' tensor")
        if exp_avg.shape != param.shape:
            raise ValueError(
                f"Invalid state_dict: 'exp_avg' of {label} has shape {tuple(exp_avg.shape)}, "
                f"the parameter has shape {tuple(param.shape)}"
            )
        momentum_dtype = as_momentum_dtype(saved_group.get("momentum_dtype"))
        return entry, ({"exp_avg": exp_avg.to(dtype=momentum_dtype)} if momentum_dtype is not None else {})
