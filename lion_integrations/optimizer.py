"""`Lion`, a `torch.optim.Optimizer` over the rule in `rule.py`, with per-tensor, foreach and fused paths."""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from . import avx512
from .cautious import cautious_step_sizes
from .checks import check_bool, check_choice, check_real
from .fused import fusable, fused_step_, fused_unavailable_reason
from .nonfinite import CompiledSkipTally
from .rule import (
    LOW_PRECISION_DTYPES,
    LionCoefficients,
    kept_count,
    lion_step_tensor_,
    lion_step_unfused_,
    random_bits_like,
    uses_foreach,
)
from .sharding import DTensor, local_shard
from .state import (
    COMPENSATION,
    check_momentum,
    check_saved_compensation,
    check_saved_groups,
    check_state_keys,
    decoded_entry,
    param_label,
)

DEFAULT_LR = 1e-4
DEFAULT_BETAS = (0.9, 0.99)
NONFINITE_POLICIES = ("skip", "raise")
# Group keys that checkpoints of earlier versions lack; loading one keeps the optimizer's own value.
LATE_GROUP_KEYS = ("nonfinite", "kahan_sum", "stochastic_rounding")
COMPLEX_OF = {torch.float16: torch.complex32, torch.float32: torch.complex64, torch.float64: torch.complex128}
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


def momentum_dtype_for(param: torch.Tensor, momentum_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of `param`'s momentum: `momentum_dtype` (its complex counterpart for a complex
    parameter), or the parameter's own."""
    if momentum_dtype is None:
        return param.dtype
    if not param.is_complex():
        return momentum_dtype
    if momentum_dtype not in COMPLEX_OF:
        raise ValueError(
            f"Invalid momentum_dtype: {momentum_dtype} for a complex parameter of shape {tuple(param.shape)} "
            f"(no complex dtype has {momentum_dtype} parts; use one of {', '.join(map(str, COMPLEX_OF))})"
        )
    return COMPLEX_OF[momentum_dtype]


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


def check_weight_store_options(kahan_sum: Any, stochastic_rounding: Any) -> None:
    """TypeError unless kahan_sum is a bool or None and stochastic_rounding a bool; ValueError for both on."""
    check_bool(kahan_sum, "kahan_sum", allow_none=True)
    check_bool(stochastic_rounding, "stochastic_rounding")
    if kahan_sum is True and stochastic_rounding is True:
        raise ValueError(
            "Invalid kahan_sum=True with stochastic_rounding=True: choose one way to keep updates "
            "smaller than the weights' rounding (Kahan keeps a buffer, stochastic rounding does not)"
        )


def weight_store(dtype: torch.dtype, kahan_sum: bool | None, stochastic_rounding: bool) -> str:
    """How a parameter of `dtype` stores its fp32 step (rule.store_weight_): 'kahan', 'stochastic' or
    'nearest'. Only bf16/fp16 lose updates to rounding; kahan_sum=None means on for them unless
    stochastic_rounding is on."""
    if dtype not in LOW_PRECISION_DTYPES:
        return "nearest"
    if stochastic_rounding:
        return "stochastic"
    return "kahan" if kahan_sum is not False else "nearest"


def warn_high_precision_params(owner: str, group: dict[str, Any]) -> None:
    """Warn when kahan_sum=True or stochastic_rounding=True is asked for parameters it cannot help."""
    for name in ("kahan_sum", "stochastic_rounding"):
        if group.get(name) is not True:
            continue
        others = [param for param in group["params"] if param.dtype not in LOW_PRECISION_DTYPES]
        if others:
            dtypes = sorted({str(param.dtype).removeprefix("torch.") for param in others})
            warnings.warn(
                f"{owner}: {name}=True does nothing for {len(others)} parameter(s) of dtype "
                f"{'/'.join(dtypes)} in this param group (first of shape {tuple(others[0].shape)}): only "
                "bfloat16/float16 weights lose updates to rounding; these are stepped and stored in their own precision",
                UserWarning,
                stacklevel=4,
            )


def validate_flags(group: dict[str, Any]) -> None:
    """Raise TypeError for a flag of `group` that is not a bool (or None, for foreach and fused),
    ValueError for an unknown `nonfinite` policy."""
    for name, allow_none in (("maximize", False), ("foreach", True), ("fused", True), ("cautious", False)):
        if name in group:
            check_bool(group[name], name, allow_none=allow_none)
    if "nonfinite" in group:
        check_choice(group["nonfinite"], "nonfinite", NONFINITE_POLICIES)
    if "kahan_sum" in group or "stochastic_rounding" in group:
        check_weight_store_options(group.get("kahan_sum"), group.get("stochastic_rounding", False))


def as_real(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor as real pairs (`torch.view_as_real`, as torch's optimizers step them); others as they are."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss `closure` returns, evaluated with gradients enabled (None without a closure), as
    `torch.optim` optimizers do at the start of `step`."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def param_description(group: dict[str, Any], group_index: int, index: int) -> str:
    """"'fc.weight'" when the group carries torch's param_names, else 'param 3 of group 0 (shape (4, 5))'."""
    names = group.get("param_names")
    if names is not None and index < len(names):
        return repr(names[index])
    return f"param {index} of group {group_index} (shape {tuple(group['params'][index].shape)})"


def finite_flags(grads: list[torch.Tensor]) -> list[bool]:
    """Whether each gradient is free of NaN and inf, by one reduction over it that NaN and inf
    propagate to (a sum on CPU, torch's fastest there; a 2-norm on other devices, one foreach kernel
    per dtype), and one host synchronization per device.

    Finite elements whose sum or squares overflow (beyond ~1e19 for the norm) read as non-finite
    too: such a tensor then only takes the masked rule, which finds nothing to skip.
    """
    groups: dict[torch.device, dict[torch.dtype, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, grad in enumerate(grads):
        groups[grad.device][grad.dtype].append(index)
    result = [True] * len(grads)
    for device, by_dtype in groups.items():
        order = [index for indices in by_dtype.values() for index in indices]
        finite = []
        for dtype, indices in by_dtype.items():
            wide = torch.float32 if dtype.itemsize < 4 else None  # fp16's range would overflow
            tensors = [grads[i] for i in indices]
            if device.type == "cpu":
                reductions = [tensor.sum(dtype=wide) for tensor in tensors]
            else:
                reductions = torch._foreach_norm(tensors, 2, dtype=wide)
            finite.append(torch.stack(reductions).isfinite())
        for index, flag in zip(order, torch.cat(finite).tolist()):
            result[index] = flag
    return result


def host_counts(counts: list) -> list[int]:
    """`counts` (ints, or 0-dim tensors) as ints: one host read per device."""
    counts = list(counts)
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for index, count in enumerate(counts):
        if isinstance(count, torch.Tensor):
            by_device[count.device].append(index)
    for indices in by_device.values():
        for index, value in zip(indices, torch.stack([counts[i] for i in indices]).tolist()):
            counts[index] = value
    return [int(count) for count in counts]


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
        fused: use a single-pass kernel: for fp32 on x86-64 CPUs with AVX-512, the one `avx512`
            generates from the rule; otherwise ``torch.compile``'s (None: when it builds on this
            machine, falling back with one warning; True: required, raising if it cannot build).
        momentum_dtype: dtype of ``exp_avg`` (None: the parameter's dtype; e.g. torch.float32 for
            bf16 parameters). The arithmetic is fp32 on every path.
        cautious: mask the update where sign(c) differs from sign(g) and divide lr by the kept
            fraction of the whole parameter (Liang et al. 2024; see `rule.py`). Each step then
            reads a parameter's gradient and momentum once more, to count what it keeps.
        nonfinite: what a NaN or inf gradient element does. ``"skip"`` (default): that element is
            not updated (its parameter and momentum keep their values), the others step as usual;
            a RuntimeWarning names the parameters and ``nonfinite_steps`` counts such steps.
            ``"raise"``: RuntimeError naming the parameters, before anything is changed.
        kahan_sum: for bf16/fp16 parameters, keep a compensation buffer ``kahan_comp`` (the
            parameter's dtype and shape: 2 bytes per parameter) holding what rounding the new weight
            dropped, so updates below half the weight's spacing add up instead of being lost (see
            `rule.store_weight_`). None (default): on for bf16/fp16 parameters unless
            stochastic_rounding is on; False: off. fp32/fp64 parameters never keep one (True warns).
        stochastic_rounding: store bf16/fp16 weights rounded up or down at random, with the
            probabilities that make the stored weight unbiased; no buffer. Draws come from
            `generator`, in parameter order, so every execution path rounds alike.
        generator: the `torch.Generator` stochastic rounding draws from (None: the default generator
            of each parameter's device, seeded by `torch.manual_seed`). It must be on the device of
            the parameters it rounds; it is not saved in the state dict (save ``generator.get_state()``
            to resume bit-exact, as for dropout).

    The arithmetic is float32 on every path, float64 for float64 parameters or momentum. Complex
    parameters are stepped as pairs of real numbers (`torch.view_as_real`), as torch's optimizers
    do: the sign is taken of the real and imaginary parts separately.

    Finding non-finite gradients costs one read of each full-precision parameter's gradient per
    step (`finite_flags`), and on CUDA one host synchronization per step; the AVX-512 kernels (fp32
    on the fused path, and quantized momentum) find them inside their loop, at no extra read. Inside
    a caller's ``torch.compile`` the counts stay on the device (`nonfinite.CompiledSkipTally`) and
    are reported at the next eager step, or when ``nonfinite_steps`` is read.
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
        nonfinite: str = "skip",
        kahan_sum: bool | None = None,
        stochastic_rounding: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        validate_flags(dict(
            maximize=maximize, foreach=foreach, fused=fused, cautious=cautious, nonfinite=nonfinite,
            kahan_sum=kahan_sum, stochastic_rounding=stochastic_rounding,
        ))
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"Invalid generator: {generator!r} (expected a torch.Generator or None)")
        self.generator = generator
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
            nonfinite=nonfinite,
            kahan_sum=kahan_sum,
            stochastic_rounding=stochastic_rounding,
        )
        validate_hyperparameters(lr, betas, weight_decay)
        self._nonfinite_steps = 0
        super().__init__(params, defaults)
        self._register_load_hooks()

    @property
    def nonfinite_steps(self) -> int:
        """Steps in which some gradient element was NaN or inf (and skipped), including those run
        inside a caller's ``torch.compile`` (reported on reading this, or at the next eager step)."""
        self._report_compiled_skips()
        return self._nonfinite_steps

    @nonfinite_steps.setter
    def nonfinite_steps(self, value: int) -> None:
        self._report_compiled_skips()  # skips counted before the new value are reported, not added to it
        self._nonfinite_steps = value

    def _new_compiled_tally(self) -> None:
        """A `CompiledSkipTally` with a slot for each parameter, on the first parameter's device
        (after reporting what the previous one holds)."""
        if getattr(self, "_compiled_skips", None) is not None:
            self._report_compiled_skips()
        first = next((param for group in self.param_groups for param in group["params"]), None)
        device = first.device if first is not None and first.device.type != "meta" else torch.device("cpu")
        self._compiled_skips = CompiledSkipTally({}, device)
        for group_index in range(len(self.param_groups)):
            self._add_tally_slots(group_index)

    def _add_tally_slots(self, group_index: int) -> None:
        """Slots in the tally for the parameters of param group `group_index`."""
        group = self.param_groups[group_index]
        self._compiled_skips.extend([param_description(group, group_index, index) for index in range(len(group["params"]))])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key in ("lr", "betas", "weight_decay"):
            param_group.setdefault(key, self.defaults[key])
        validate_hyperparameters(param_group["lr"], param_group["betas"], param_group["weight_decay"])
        validate_flags(param_group)
        if "momentum_dtype" in param_group:
            param_group["momentum_dtype"] = as_momentum_dtype(param_group["momentum_dtype"])
        check_weight_store_options(
            param_group.get("kahan_sum", self.defaults.get("kahan_sum")),
            param_group.get("stochastic_rounding", self.defaults.get("stochastic_rounding", False)),
        )
        super().add_param_group(param_group)
        warn_high_precision_params(type(self).__name__, self.param_groups[-1])
        if getattr(self, "_compiled_skips", None) is None:
            self._new_compiled_tally()
        else:
            self._add_tally_slots(len(self.param_groups) - 1)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("momentum_dtype", None)
            group.setdefault("cautious", False)
            group.setdefault("nonfinite", "skip")
            group.setdefault("kahan_sum", None)
            group.setdefault("stochastic_rounding", False)
        self.__dict__.setdefault("generator", None)
        self._nonfinite_steps = self.__dict__.pop("nonfinite_steps", self.__dict__.get("_nonfinite_steps", 0))
        if "_compiled_skips" not in self.__dict__:
            self._new_compiled_tally()
        self._register_load_hooks()

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            dtype = momentum_dtype_for(param, group["momentum_dtype"])
            state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        return state

    def init_compensation(self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create `param`'s Kahan buffer as zeros when it stores its weight with Kahan summation and has
        none (a new parameter, or a checkpoint saved without one); drop a buffer it no longer uses
        (Kahan turned off: the buffer held less than half a unit of the weight's last place)."""
        if weight_store(param.dtype, group["kahan_sum"], group["stochastic_rounding"]) != "kahan":
            state.pop(COMPENSATION, None)
        elif COMPENSATION not in state:
            state[COMPENSATION] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def draw_random_bits(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stochastic rounding's draws for `tensor` (a parameter's local shard) from `self.generator`."""
        generator = self.generator
        if generator is not None and (
            generator.device.type != tensor.device.type
            or generator.device.index is not None and generator.device.index != tensor.device.index
        ):
            raise ValueError(
                f"Invalid generator: it is on {generator.device}, a parameter of shape {tuple(tensor.shape)} "
                f"is on {tensor.device} (stochastic rounding draws on the parameter's device: pass a generator "
                "there, or None for that device's default generator)"
            )
        return random_bits_like(tensor, generator)

    def weight_store_of(self, param: torch.Tensor, group: dict[str, Any], state: dict[str, Any]):
        """(Kahan buffer's local shard or None, `draw_random_bits` or None): how `param` stores its weight."""
        store = weight_store(param.dtype, group["kahan_sum"], group["stochastic_rounding"])
        compensation = local_shard(state[COMPENSATION]) if store == "kahan" else None
        return compensation, (self.draw_random_bits if store == "stochastic" else None)

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

    def _params_to_step(self, group: dict[str, Any]) -> list[tuple[int, torch.Tensor, torch.Tensor, dict[str, Any]]]:
        """(index in the group, param, its gradient on this rank's shard, its state) for each param of
        `group` that has a gradient, creating the state on first use."""
        items = []
        for index, param in enumerate(group["params"]):
            grad = self._local_grad(param, group)
            if grad is not None:
                state = self._init_state(param, group)
                self.init_compensation(param, state, group)
                items.append((index, param, grad, state))
        return items

    @staticmethod
    def _full_precision_batch(items):
        """(indices, params, grads, exp_avgs, sources) of the `items` (`_params_to_step`) that have a
        full-precision ``exp_avg`` (others keep momentum in a codec, see `_step_codec_states`): local
        shards (complex ones as real pairs) of the parameters `sources`."""
        batch = ([], [], [], [], [])
        for index, param, grad, state in items:
            if "exp_avg" in state:
                shard, exp_avg = local_shard(param), local_shard(state["exp_avg"])
                for values, value in zip(batch, (index, as_real(shard), as_real(grad), as_real(exp_avg), param)):
                    values.append(value)
        return batch

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
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss.

        Non-finite gradient elements follow each group's ``nonfinite`` policy (see the class docstring).
        """
        loss = closure_loss(closure)
        items = [self._params_to_step(group) for group in self.param_groups]
        batches = [self._full_precision_batch(group_items) for group_items in items]
        if torch.compiler.is_compiling() and all(group["nonfinite"] == "skip" for group in self.param_groups):
            # Traced into the caller's graph, which a host read would break: the rule itself masks
            # every element, and the counts stay on the device until an eager moment reports them.
            skipped = []
            for group_index, (group, batch) in enumerate(zip(self.param_groups, batches)):
                skipped += self._step_full_precision(group, group_index, batch, None, [False] * len(batch[0]))
                skipped += self._step_codec_states(group, group_index, items[group_index])
            self._compiled_skips.add(skipped)
            return loss

        self._report_compiled_skips()
        self._raise_on_nonfinite()
        skipped: list[tuple[str, Any, int]] = []  # (parameter, skipped elements, elements)
        for group_index, group in enumerate(self.param_groups):
            skipped += self._step_codec_states(group, group_index, items[group_index])
        # The AVX-512 kernel finds non-finite elements in its own loop; "raise" groups were checked above.
        in_kernel = [self.steps_in_kernel(group, batch) for group, batch in zip(self.param_groups, batches)]
        screened = [
            [group["nonfinite"] == "skip" and not kernel for kernel in kernels]
            for group, kernels in zip(self.param_groups, in_kernel)
        ]
        flags = iter(finite_flags([
            grad for screens, batch in zip(screened, batches) for screen, grad in zip(screens, batch[2]) if screen
        ]))
        for group_index, (group, batch, screens) in enumerate(zip(self.param_groups, batches, screened)):
            finite = [next(flags) if screen else True for screen in screens]
            skipped += self._step_full_precision(group, group_index, batch, finite, in_kernel[group_index])
        self._report_nonfinite(skipped)
        return loss

    def steps_in_kernel(self, group: dict[str, Any], batch) -> list[bool]:
        """For each param of `batch` (`_full_precision_batch` of `group`), whether the AVX-512 kernel
        steps it (`avx512.fits`, on an x86-64 CPU with AVX-512), which it does on the fused path
        (``fused`` True or None) outside a caller's ``torch.compile``."""
        _, params, grads, exp_avgs, _ = batch
        if group["fused"] is False or torch.compiler.is_compiling() or avx512.unavailable_reason() is not None:
            return [False] * len(params)
        return [avx512.fits(param, grad, exp_avg) for param, grad, exp_avg in zip(params, grads, exp_avgs)]

    def _raise_on_nonfinite(self) -> None:
        """For groups with ``nonfinite="raise"``: RuntimeError naming every parameter whose gradient
        holds NaN or inf, before any parameter changes."""
        checked = []
        for group_index, group in enumerate(self.param_groups):
            if group["nonfinite"] != "raise":
                continue
            for index, param in enumerate(group["params"]):
                grad = self._local_grad(param, group)
                if grad is not None:
                    checked.append((param_description(group, group_index, index), grad))
        flags = finite_flags([grad for _, grad in checked])
        bad = [name for (name, _), finite in zip(checked, flags) if not finite]
        if bad:
            raise RuntimeError(
                f"{type(self).__name__}: non-finite gradient (NaN or inf) in {', '.join(bad)}; no parameter "
                "was updated (nonfinite='raise')"
            )

    def _step_codec_states(self, group: dict[str, Any], group_index: int, items) -> list[tuple[str, Any, int]]:
        """Step the `items` (`_params_to_step` of `group`) whose momentum a codec stores (none here; see
        Lion8bit); returns, for each, (parameter, skipped non-finite gradient elements, elements)."""
        return []

    def _step_full_precision(
        self, group: dict[str, Any], group_index: int, batch, finite: list[bool] | None, in_kernel: list[bool]
    ):
        """Step the params of `batch` (`_full_precision_batch`): those `in_kernel` (`steps_in_kernel`)
        in one call of the AVX-512 kernel, which counts non-finite elements itself; the others whose
        gradient is finite (`finite`) bucketed by device and dtypes, each bucket on the path
        `execution_path` picks; the rest (all of them when `finite` is None) with the masked rule.
        Returns the skipped, as `_step_codec_states`."""
        indices, params, grads, exp_avgs, sources = batch
        if not params:
            return []
        coefficients = LionCoefficients.from_group(group["lr"], group["betas"], group["weight_decay"])
        cautious = group["cautious"]
        step_sizes = [coefficients.step_size] * len(params)
        if cautious:
            counts = [kept_count(grad, exp_avg, coefficients.update_weight) for grad, exp_avg in zip(grads, exp_avgs)]
            step_sizes = cautious_step_sizes(sources, counts, coefficients.step_size)
        kernel = [position for position, steps in enumerate(in_kernel) if steps]
        counts = avx512.step_(
            [params[i] for i in kernel], [grads[i] for i in kernel], [exp_avgs[i] for i in kernel], coefficients,
            step_sizes=[step_sizes[i] for i in kernel], cautious=cautious,
        )
        skipped = [
            (param_description(group, group_index, indices[i]), count, params[i].numel())
            for i, count in zip(kernel, counts) if count
        ]
        buckets = defaultdict(list)
        stores = {
            position: self.weight_store_of(source, group, self.state[source])
            for position, source in enumerate(sources) if not in_kernel[position]
        }
        for position, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
            if in_kernel[position]:
                continue
            if finite is None or not finite[position]:
                own = dataclasses.replace(coefficients, step_size=step_sizes[position])
                compensation, draw = stores[position]
                mask = lion_step_tensor_(
                    param, grad, exp_avg, *own.scalars(), cautious=cautious, skip_nonfinite=True,
                    compensation=compensation, random_bits=draw(param) if draw is not None else None,
                )
                name = param_description(group, group_index, indices[position])
                skipped.append((name, mask.numel() - mask.sum(), mask.numel()))
                continue
            buckets[(param.device, param.dtype, grad.dtype, exp_avg.dtype)].append(position)
        for (device, *_), positions in buckets.items():
            bucket = [[tensors[i] for i in positions] for tensors in (params, grads, exp_avgs)]
            compensations = [stores[i][0] for i in positions]  # one dtype per bucket, hence one store
            compensations = compensations if compensations[0] is not None else None
            draw = stores[positions[0]][1]
            any_fusable = any(fusable(param, exp_avg) for param, _, exp_avg in zip(*bucket))
            path = self.execution_path(group, device, any_fusable=any_fusable)
            own = [step_sizes[i] for i in positions] if cautious else None
            if path == "fused" and own is None:
                fused_step_(*bucket, coefficients, compensations=compensations, draw=draw)
            elif path == "fused":  # one compiled call per parameter, each with its step size
                for index, (param, grad, exp_avg, step_size) in enumerate(zip(*bucket, own)):
                    fused_step_([param], [grad], [exp_avg], dataclasses.replace(coefficients, step_size=step_size),
                                cautious=True, compensations=compensations and [compensations[index]], draw=draw)
            else:
                lion_step_unfused_(
                    *bucket, coefficients, foreach=path == "foreach", cautious=cautious, step_sizes=own,
                    compensations=compensations, draw=draw,
                )
        return skipped

    def _report_nonfinite(self, skipped: list[tuple[str, Any, int]]) -> None:
        """Count the step and warn, naming the parameters, if some gradient element was skipped."""
        counts = host_counts([count for _, count, _ in skipped])
        skipped = [(name, count, total) for (name, _, total), count in zip(skipped, counts) if count]
        if not skipped:
            return
        self._nonfinite_steps += 1
        shown = ", ".join(f"{name} ({count} of {total} elements)" for name, count, total in skipped[:5])
        self._warn_nonfinite(shown, len(skipped), "this step")

    def _report_compiled_skips(self) -> None:
        """Count and report the skips that steps inside a caller's ``torch.compile`` tallied."""
        steps, skipped = self._compiled_skips.drain()
        if not steps:
            return
        self._nonfinite_steps += steps
        shown = ", ".join(f"{name} ({count} elements)" for name, count in skipped[:5])
        self._warn_nonfinite(shown, len(skipped), f"in {steps} steps run inside torch.compile")

    def _warn_nonfinite(self, shown: str, parameters: int, when: str) -> None:
        more = f" and {parameters - 5} more parameters" if parameters > 5 else ""
        warnings.warn(
            f"{type(self).__name__}: NaN or inf gradient elements in {shown}{more}; those elements were not "
            f"updated {when} (parameter and momentum unchanged). Steps with such gradients so far: "
            f"{self._nonfinite_steps} (optimizer.nonfinite_steps); nonfinite='raise' makes them an error",
            RuntimeWarning,
            stacklevel=4,
        )

    # --- State dicts. --------------------------------------------------------------------------

    def _register_load_hooks(self) -> None:
        """Our state-dict check as a load pre-hook and its completion as a post-hook (once each)."""
        if check_loaded_state_dict not in self._optimizer_load_state_dict_pre_hooks.values():
            self.register_load_state_dict_pre_hook(check_loaded_state_dict)
        if place_loaded_state not in self._optimizer_load_state_dict_post_hooks.values():
            self.register_load_state_dict_post_hook(place_loaded_state, prepend=True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict after checking it fits; on any error the optimizer is left unchanged.

        As torch's: registered pre-hooks run first (so one can adapt a foreign checkpoint), then
        the check (our own pre-hook, moved last), the load, and the post-hooks (ours first).
        """
        self._register_load_hooks()
        for hooks, ours, last in (
            (self._optimizer_load_state_dict_pre_hooks, check_loaded_state_dict, True),
            (self._optimizer_load_state_dict_post_hooks, place_loaded_state, False),
        ):
            for key, hook in list(hooks.items()):
                if hook is ours:
                    hooks.move_to_end(key, last=last)
        super().load_state_dict(state_dict)

    def _checked_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """`state_dict` checked against this optimizer and converted to its storage; keeps in
        `_loaded_extras` what `_place_loaded_state` puts in place after torch's load."""
        self._loaded_extras = None
        saved_groups = check_saved_groups(state_dict, self.param_groups)
        converted, kept, groups = {}, {}, []
        for group, saved in zip(self.param_groups, saved_groups):
            validate_hyperparameters(
                saved.get("lr", group["lr"]), saved.get("betas", group["betas"]),
                saved.get("weight_decay", group["weight_decay"]),
            )
            saved = {**{key: group[key] for key in LATE_GROUP_KEYS if key in group}, **saved}
            validate_flags(saved)
            groups.append(saved)
            named = saved if "param_names" in saved else group
            for index, (param, param_id) in enumerate(zip(group["params"], saved["params"])):
                entry = state_dict["state"].get(param_id)
                if entry is None:
                    continue
                entry, keep = self._load_state_entry(param, entry, group, saved, param_label(param_id, named, index))
                converted[param_id] = {key: value for key, value in entry.items() if key not in keep}
                kept[param] = keep
        self._loaded_extras = kept
        return {**state_dict, "param_groups": groups, "state": {**state_dict["state"], **converted}}

    def _place_loaded_state(self) -> None:
        """After torch's load: put back the state tensors whose dtype must stay (torch casts floating
        state to the parameter's dtype)."""
        kept, self._loaded_extras = getattr(self, "_loaded_extras", None) or {}, None
        for param, tensors in kept.items():
            for key, value in tensors.items():
                self.state[param][key] = value.to(device=param.device)

    def _load_state_entry(self, param, entry, group, saved_group, label):
        """Check the saved state `entry` of `param` and return (entry as this optimizer keeps it,
        {key: tensor} to keep in its own dtype); ValueError naming the parameter (`label`) if it does not fit.

        Momentum saved in another form (quantized codes, bitsandbytes' states: the decoders registered
        with `state.register_momentum_decoder`) is decoded to full precision first. State of another
        optimizer (AdamW's exp_avg_sq and step, SGD's momentum_buffer...) and NaN or inf momentum are refused.
        """
        entry = decoded_entry(param, entry, saved_group, label)
        check_state_keys(type(self).__name__, label, entry, (("exp_avg",),))
        exp_avg = check_momentum(entry["exp_avg"], param, label)
        check_saved_compensation(entry, param, label)
        momentum_dtype = as_momentum_dtype(saved_group.get("momentum_dtype"))
        if momentum_dtype is not None:
            return entry, {"exp_avg": exp_avg.to(dtype=momentum_dtype_for(param, momentum_dtype))}
        return entry, {}


def check_loaded_state_dict(optimizer: Lion, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Load pre-hook of every `Lion`: `Lion._checked_state_dict`."""
    return optimizer._checked_state_dict(state_dict)


def place_loaded_state(optimizer: Lion) -> None:
    """Load post-hook of every `Lion`: `Lion._place_loaded_state`."""
    optimizer._place_loaded_state()
