"""What the framework adapters (`lion_integrations.hf`, `lion_integrations.lightning`) share: finding an
optimizer class from a name, and passing Lion's betas only to classes that take them."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch.optim import Optimizer

from .names import OPTIMIZER_NAMES

__all__ = ["accepts_betas", "betas_kwargs", "class_path", "import_attribute", "resolve_optimizer_class"]


def class_path(name: str) -> str:
    """The dotted import path of optimizer `name`: a short name of `names.OPTIMIZER_NAMES` ('lion_q8')
    or a name without a dot ('Lion8bit') is looked up in `lion_integrations`; a dotted path is kept."""
    if name in OPTIMIZER_NAMES:
        return f"lion_integrations.{OPTIMIZER_NAMES[name]}"
    return name if "." in name else f"lion_integrations.{name}"


def import_attribute(path: str) -> Any:
    """The object at dotted `path` ('torch.optim.AdamW'); ImportError, as ``from module import name``
    raises, when its module cannot be imported or does not define it."""
    module_name, _, attribute = path.rpartition(".")
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise ImportError(f"{module_name} has no {attribute!r}")
    return getattr(module, attribute)


def resolve_optimizer_class(optimizer_class: type[Optimizer] | str) -> type[Optimizer]:
    """An optimizer class, given as a class, a dotted path ('torch.optim.AdamW'), a name exported by
    `lion_integrations` ('Lion', 'Lion8bit') or one of its short names ('lion', 'lion_q8', as for HF's `optim`).

    Raises ValueError naming `optimizer_class` when it cannot be imported or is not an Optimizer subclass.
    """
    resolved: Any = optimizer_class
    if isinstance(optimizer_class, str):
        try:
            resolved = import_attribute(class_path(optimizer_class))
        except ImportError as error:
            raise ValueError(f"Invalid optimizer_class: {optimizer_class!r} ({error})") from None
    if not (isinstance(resolved, type) and issubclass(resolved, Optimizer)):
        raise ValueError(f"Invalid optimizer_class: {optimizer_class!r} (expected a torch.optim.Optimizer subclass)")
    return resolved


def accepts_betas(optimizer_class: type) -> bool:
    """Whether `optimizer_class` takes a ``betas`` argument: Lion and its quantized variants do; a
    discovered program (`discovery.DiscoveredOptimizer`) defines its own interpolation constants."""
    return "betas" in inspect.signature(optimizer_class.__init__).parameters


def betas_kwargs(optimizer_class: type, betas: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """``{"betas": betas}`` for a class that `accepts_betas`, else ``{}``."""
    return {"betas": betas} if accepts_betas(optimizer_class) else {}
