"""PyTorch Lightning integration: `configure_lion` for ``configure_optimizers``, and `LionCallback`.

* ``return configure_lion(self, lr=3e-4, weight_decay=0.1, scheduler="cosine", warmup_steps=100)``
  inside ``configure_optimizers``: Lion over weight-decay groups, plus an optional warmup schedule.
* ``LionCallback`` (also from YAML: ``trainer.callbacks``) swaps the optimizers an unchanged module
  returns for Lion, translating AdamW's lr/weight decay by the paper's ratio, and re-binds its schedulers.
* LightningCLI needs nothing extra: ``--optimizer lion_integrations.Lion``, or ``--optimizer Lion``
  once this package is imported.

Modules: `configure` (configure_lion), `callback` (LionCallback), `rebinding` (moving schedulers and
module attributes to a replacement optimizer).
"""

import importlib

try:
    importlib.import_module("lightning.pytorch")
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lion_integrations.lightning needs Lightning: pip install 'lion-integrations[lightning]'"
    ) from error

from ..adapters import resolve_optimizer_class
from .callback import LionCallback
from .configure import configure_lion

__all__ = ["LionCallback", "configure_lion", "resolve_optimizer_class"]
