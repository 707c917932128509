"""Checks of the Lightning strategy a Lion optimizer is built under."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.optim import Optimizer

from ..deepspeed import check_deepspeed_config


def check_strategy(module: torch.nn.Module, optimizer_class: type[Optimizer]) -> None:
    """Under Lightning's DeepSpeedStrategy, refuse a DeepSpeed config that would not run `optimizer_class`
    as configured (`lion_integrations.deepspeed.check_deepspeed_config`); nothing for other strategies."""
    strategy = getattr(getattr(module, "_trainer", None), "strategy", None)
    if isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict):
        check_deepspeed_config(strategy.config, optimizer_class)
