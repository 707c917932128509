"""DistributedDataParallel without its gradient all-reduce: each rank keeps its own gradients.

In the sign-vote mode the ranks exchange update signs, not gradients, so DDP's all-reduce of the
gradients (4 bytes per parameter, twice) is skipped by a communication hook that communicates
nothing. DDP still broadcasts the parameters at construction (every rank starts equal), its buffers
at each forward (``broadcast_buffers``), and `no_sync` works as before.

* `keep_local_gradients`: the hook, for APIs that take one (Lightning's
  ``DDPStrategy(ddp_comm_hook=keep_local_gradients)``);
* `skip_gradient_allreduce(ddp_model)`: registers it on a DDP model (plain DDP, Accelerate);
* `skip_allreduce_when_wrapped(params)`: registers it on whichever DDP model first runs a forward
  over `params` (how `SignVoteLion` reaches the DDP model that Hugging Face's Trainer builds).
"""

# No `from __future__ import annotations`: DDP checks the hook's return annotation as an object.
import warnings
from collections.abc import Iterable

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.weak import WeakTensorKeyDictionary

# Parameters whose gradients a keep_local_gradients hook has left unreduced (keys; SignVoteLion checks).
LOCAL_GRADIENT_PARAMS = WeakTensorKeyDictionary()


def keep_local_gradients(state, bucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook that sends nothing: the bucket's gradients stay this rank's own.

    ``state`` is unused (DDP's hook signature); returns a completed future holding the bucket.
    """
    for param in bucket.parameters():
        LOCAL_GRADIENT_PARAMS[param] = True
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def _registered_hooks(model: DistributedDataParallel) -> list:
    return [hook for hook, _ in getattr(model, "_comm_hooks", ())]


def skip_gradient_allreduce(model: DistributedDataParallel) -> DistributedDataParallel:
    """Register `keep_local_gradients` on `model` (before its first backward); returns `model`.

    Idempotent; raises ValueError if `model` is not a DistributedDataParallel, RuntimeError if it
    already has another communication hook (its gradients would still be communicated).
    """
    if not isinstance(model, DistributedDataParallel):
        raise ValueError(
            f"Invalid model: {type(model).__name__} (expected the DistributedDataParallel wrapper, e.g. what "
            "accelerator.prepare returns under DDP)"
        )
    hooks = _registered_hooks(model)
    if keep_local_gradients in hooks:
        return model
    if hooks:
        raise RuntimeError(
            f"skip_gradient_allreduce: the DDP model already has the communication hook "
            f"{getattr(hooks[0], '__qualname__', hooks[0])!r}, which DDP cannot replace; build the model without it"
        )
    model.register_comm_hook(state=None, hook=keep_local_gradients)
    return model


def skip_allreduce_when_wrapped(params: Iterable[torch.Tensor]):
    """Register `keep_local_gradients` on the first DistributedDataParallel model whose forward
    runs over any of `params` (a global forward pre-hook, removed once it has fired); returns its
    handle. A model that already has another hook keeps it, with a warning."""
    watched = WeakTensorKeyDictionary({param: True for param in params})
    handle = None

    def hook(module, args):
        if not isinstance(module, DistributedDataParallel) or not any(p in watched for p in module.parameters()):
            return None
        handle.remove()
        hooks = _registered_hooks(module)
        if keep_local_gradients in hooks:
            return None
        if hooks:
            warnings.warn(
                "SignVoteLion: the DDP model has its own communication hook "
                f"{getattr(hooks[0], '__qualname__', hooks[0])!r}, so its gradients are still communicated; "
                "the vote then saves no communication",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        module.register_comm_hook(state=None, hook=keep_local_gradients)
        return None

    handle = register_module_forward_pre_hook(hook)
    return handle
