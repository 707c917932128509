"""Hyperparameters for Lion: translating AdamW settings, and weight-decay parameter groups.

Lion's update has magnitude lr in every coordinate, larger than AdamW's, so the paper (Sec. 4)
uses lr_lion = lr_adamw / ratio and wd_lion = wd_adamw * ratio with ratio in [3, 10]: the product
lr*wd, the strength of decoupled decay, stays the same.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .checks import check_real

DEFAULT_RATIO = 3.0

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def from_adamw(lr: float, weight_decay: float = 0.0, ratio: float = DEFAULT_RATIO) -> dict[str, float]:
    """Lion's {'lr', 'weight_decay'} for an AdamW setting: lr/ratio and weight_decay*ratio.

    `ratio` must be > 0 (the paper uses 3 to 10); `lr` and `weight_decay` finite and >= 0.
    """
    ratio = check_real(ratio, "ratio", minimum=0.0, above_minimum=True)
    lr = check_real(lr, "lr", minimum=0.0)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    return {"lr": lr / ratio, "weight_decay": weight_decay * ratio}


def is_norm_or_bias(module: nn.Module, name: str) -> bool:
    """True for biases and normalization weights, which are conventionally not decayed."""
    return name == "bias" or name.endswith("_bias") or isinstance(module, NORM_LAYERS) or "norm" in type(module).__name__.lower()


def param_groups(model: nn.Module, weight_decay: float, **group_options: Any) -> list[dict[str, Any]]:
    """Two param groups for `model`: decayed weights, and biases/norm weights with weight_decay=0.

    Shared parameters are listed once; parameters with requires_grad=False are left out.
    Extra keyword arguments (e.g. lr) go into both groups.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if is_norm_or_bias(module, name) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, **group_options},
        {"params": no_decay, "weight_decay": 0.0, **group_options},
    ]
    return [group for group in groups if group["params"]]
