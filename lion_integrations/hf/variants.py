"""Our names for ``TrainingArguments(optim=...)``: each one's `OptimizerNames` member and the class it builds."""

from __future__ import annotations

from ..adapters import import_attribute
from ..names import OPTIMIZER_NAMES

# optim name -> (OptimizerNames member name, class path inside lion_integrations)
VARIANTS: dict[str, tuple[str, str]] = {
    name: (f"LION_INTEGRATIONS{suffix}", OPTIMIZER_NAMES[name])
    for name, suffix in (
        ("lion", ""), ("lion_q8", "_Q8"), ("lion_q4", "_Q4"), ("lion_discovered", "_DISCOVERED"), ("lion_vote", "_VOTE"),
    )
}


def optimizer_class(name: str) -> type | None:
    """The class behind optim `name`, or None when this version of lion_integrations lacks it."""
    try:
        return import_attribute(f"lion_integrations.{VARIANTS[name][1]}")
    except ImportError:
        return None


def available_names() -> list[str]:
    """The optim names this installation can register (``lion``, plus the variants whose class exists)."""
    return [name for name in VARIANTS if optimizer_class(name) is not None]
