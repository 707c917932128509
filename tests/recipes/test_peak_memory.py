"""recipes/peak_memory.py: peak tensor memory from the allocator's events, whole and per phase."""

from __future__ import annotations

import os

import pytest
import torch

from recipes.peak_memory import PeakMemory, peak_within, running_peak

MB = 10**6


def test_running_peak_and_peak_within():
    assert running_peak([]) == 0
    assert running_peak([5, -5, 3, 4, -7]) == 7
    events = [(1, 5), (2, -5), (10, 3), (11, 4), (12, -7), (20, 2)]
    assert peak_within(events, [(9, 10)]) == 3  # live when the range began (0), then after its event (3)
    assert peak_within(events, [(0, 1), (15, 30)]) == 5  # the largest over both ranges
    assert peak_within(events, [(13, 14)]) == 0  # no event inside: what was live when it began


def test_cpu_peak_counts_every_allocation_and_free_exactly():
    with PeakMemory("cpu") as peak:
        a = torch.empty(MB // 4)  # 1 MB
        b = torch.empty(2 * MB // 4)  # 3 MB live
        del a, b
        with peak.phase("step"):
            c = torch.empty(MB // 4)  # 1 MB live in the phase
            del c
        d = torch.empty(5 * MB // 4)  # 5 MB live
        with peak.phase("step"):
            e = torch.empty(MB // 4)  # 6 MB live in the phase's second occurrence
            del e
        del d
    assert peak.bytes == 6 * MB
    assert peak.phases == {"step": 6 * MB}


def test_tensors_made_before_the_block_are_not_counted():
    before = torch.empty(10 * MB // 4)
    with PeakMemory("cpu") as peak:
        after = before.clone()  # 10 MB more
        del after
    assert peak.bytes == 10 * MB


def test_profiler_banner_is_dropped_and_other_stderr_kept(capfd):
    with PeakMemory("cpu"):
        os.write(2, b"USDT: a banner line\nwritten by C++ code inside the block\n")
    err = capfd.readouterr().err
    assert "written by C++ code inside the block" in err and "USDT:" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU accounting above is the one without it")
@pytest.mark.cuda
def test_cuda_peak_from_the_allocator_statistics():
    with PeakMemory("cuda") as peak:
        a = torch.empty(MB // 4, device="cuda")
        with peak.phase("step"):
            b = torch.empty(2 * MB // 4, device="cuda")
            del b
        del a
    assert peak.bytes >= 3 * MB and peak.phases["step"] >= 3 * MB
