"""Worker for tests/quantization/test_flat_buffers.py: Lion8bit under torch's FSDP1 (FullyShardedDataParallel,
use_orig_params=True, as Lightning's FSDPStrategy sets it) on 2 CPU processes (gloo).

    torchrun --nproc-per-node=2 fsdp1_flattened.py REPORT.json

FSDP1 hands the optimizer 1-D shards of its flattened parameters: their momentum stays full precision,
and the optimizer must say so. Rank 0 writes REPORT.json: parameter shapes, state keys, warnings.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

from lion_integrations import Lion8bit
from worker_exit import exit_now  # noqa: E402  (next to this script)

torch.set_num_threads(1)


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = FullyShardedDataParallel(
        nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 8)), device_id=torch.device("cpu"), use_orig_params=True
    )
    optimizer = Lion8bit(model.parameters(), lr=1e-3, min_quantized_size=256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(4, 128)).sum().backward()
        optimizer.step()
    report = {
        "shapes": [list(p.shape) for p in model.parameters()],
        "state_keys": sorted({key for p in model.parameters() for key in optimizer.state[p]}),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    }
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
