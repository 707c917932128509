"""Hugging Face Trainer integration: `TrainingArguments(optim="lion")` builds `lion_integrations.Lion`.

Importing this package registers the names (or call `register()`); both are idempotent.

Names (values of `transformers.training_args.OptimizerNames`):

- ``lion`` (member ``LION_INTEGRATIONS``): `lion_integrations.Lion`, full-precision momentum.
- ``lion_q8`` / ``lion_q4`` (``LION_INTEGRATIONS_Q8`` / ``_Q4``): the quantized-momentum classes
  `Lion8bit` / `Lion4bit`, registered only when this version of lion_integrations provides them.
- ``lion_discovered`` (``LION_INTEGRATIONS_DISCOVERED``): `lion_integrations.discovery.DiscoveredOptimizer`
  running a program found by the search, named in ``optim_args`` (``program=PATH`` or a builtin name).
- ``lion_vote`` (``LION_INTEGRATIONS_VOTE``): `lion_integrations.vote.SignVoteLion`, the sign-vote mode
  for multi-process runs (it skips DDP's gradient all-reduce itself; ``optim_args="vote=average"``).

transformers' own ``lion_32bit``, ``lion_8bit``, ``paged_lion_*`` (bitsandbytes; the member
``OptimizerNames.LION`` is ``"lion_32bit"``) are left exactly as they are.

Hyperparameters: lr is ``learning_rate`` as given (Lion wants one 3-10x smaller than AdamW's, see
`lion_integrations.hparams.from_adamw`). Betas come from ``optim_args`` (``beta1=...,beta2=...``),
default (0.9, 0.99); ``adam_beta1``/``adam_beta2`` are Adam's and are ignored. ``optim_args`` also
takes the optimizer's own keyword options (e.g. ``fused=false``, ``momentum_dtype=float32``, or a
quantized variant's ``block_size``); unknown keys raise ValueError. Weight decay is
``weight_decay``, applied through Trainer's decay/no-decay parameter groups.

Path: without ``fused`` in optim_args, ``optim="lion"`` takes the unfused path in a run too short to
repay compiling the fused kernel (`run_length`: trainable parameters x ``max_steps`` below 2e9), and
says at INFO that the first step compiles otherwise.

Logs: the line saying which optimizer was built, with which betas, is INFO of ``lion_integrations.hf``,
or of transformers' logging when only transformers' info logs are on (a stock script's ``--log_level
info``; see `visibility`).

Modules: `variants` (the names and their classes), `options` (TrainingArguments and optim_args ->
optimizer kwargs), `registration` (OptimizerNames members and the Trainer routing), `run_length`
(the fused path for the run's length), `launch` (processes that do not form one Trainer world),
`visibility` (where the INFO lines go).
"""

import importlib

try:
    importlib.import_module("transformers.training_args")
except ImportError as error:  # pragma: no cover - exercised by a test that hides transformers
    raise ImportError(
        "lion_integrations.hf needs Hugging Face transformers (>= 4.46); install the 'hf' extra: "
        "pip install 'lion-integrations[hf]'"
    ) from error

from ..optimizer import DEFAULT_BETAS
from .options import lion_cls_and_kwargs, parse_optim_args
from .registration import register, registered_name
from .variants import VARIANTS, available_names, optimizer_class

REGISTERED = register()

__all__ = [
    "DEFAULT_BETAS",
    "REGISTERED",
    "VARIANTS",
    "available_names",
    "lion_cls_and_kwargs",
    "optimizer_class",
    "parse_optim_args",
    "register",
    "registered_name",
]
