"""Peak tensor memory of a piece of work, on CPU or CUDA, counted from the allocator.

    with PeakMemory(device) as peak:
        model = build(); optimizer = Lion(model.parameters())
        for _ in range(2):
            loss(model).backward()
            with peak.phase("optimizer step"):
                optimizer.step()
            optimizer.zero_grad()
    peak.bytes                        # the most bytes of tensor storage live at once inside the block
    peak.phases["optimizer step"]     # the most live at once during any optimizer step

What is counted: every tensor storage that torch's allocator hands out inside the block (parameters,
gradients, optimizer state, activations, temporaries, and buffers of compiled kernels, which also
come from the allocator), minus the storages it frees there. Tensors that were live before the block
(e.g. the data set) are not counted. Not counted either: memory that does not come from torch's
allocator (the Python interpreter, libraries' own mallocs, the allocator's cache on CUDA).

How: on CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, less the bytes
allocated when the block began. On CPU, where torch keeps no allocator statistics, the profiler's
memory events (`torch.profiler.profile(profile_memory=True)`: one event of +bytes per allocation and
-bytes per free, with its time), summed in time order; the peak is the largest running sum, and a
phase's peak the largest running sum inside its `record_function` ranges.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile, record_function

MIB = 2**20
# The line each start and stop of the CPU profiler writes to stderr in some torch builds.
PROFILER_BANNER = "USDT:"


def running_peak(deltas: list[int]) -> int:
    """The largest running sum of `deltas` (bytes allocated > 0, freed < 0, in time order), at least 0."""
    live = peak = 0
    for delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def peak_within(memory_events: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> int:
    """The largest running sum of `memory_events` ((time, bytes) in time order) when any of `ranges`
    ((start, end) times) begins or inside it."""
    times = [time for time, _ in memory_events]
    live_before = list(itertools.accumulate((delta for _, delta in memory_events), initial=0))
    peak = 0
    for start, end in ranges:
        first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
        peak = max(peak, *live_before[first:last + 1])
    return peak


class StderrWithoutBanner:
    """Hold what is written to file descriptor 2 inside the block (C++ code writes there too), then
    write it back without the profiler's start/stop lines."""

    def __enter__(self) -> "StderrWithoutBanner":
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.held = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self.held.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.held.seek(0)
        kept = [line for line in self.held.read().decode(errors="replace").splitlines(keepends=True)
                if not line.startswith(PROFILER_BANNER)]
        self.held.close()
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


class PeakMemory:
    """Context manager: `bytes` is the peak of tensor storage allocated inside the block on `device`,
    and `phases[label]` the peak during the blocks marked with `phase(label)` (see the module's docstring)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.bytes = 0
        self.phases: dict[str, int] = {}
        self.labels: set[str] = set()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.quiet = StderrWithoutBanner().__enter__()
            self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True).__enter__()
        return self

    def cuda_peak_so_far(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.start

    @contextlib.contextmanager
    def phase(self, label: str):
        """Mark a part of the block whose own peak goes to `phases[label]` (the largest over its occurrences)."""
        self.labels.add(label)
        if self.device.type != "cuda":
            with record_function(label):
                yield
            return
        self.bytes = max(self.bytes, self.cuda_peak_so_far())
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        peak = self.cuda_peak_so_far()
        self.phases[label] = max(self.phases.get(label, 0), peak)
        self.bytes = max(self.bytes, peak)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes = max(self.bytes, self.cuda_peak_so_far())
            return
        try:
            self.profiler.__exit__(*exc)
        finally:
            self.quiet.__exit__(*exc)
        events = list(self.profiler.profiler.kineto_results.events())
        # Memory events of other devices (none on a CPU-only run) are left out.
        memory = sorted(((event.start_ns(), event.nbytes()) for event in events
                         if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU),
                        key=lambda entry: entry[0])
        self.bytes = running_peak([delta for _, delta in memory])
        for label in self.labels:
            ranges = [(event.start_ns(), event.start_ns() + event.duration_ns()) for event in events if event.name() == label]
            self.phases[label] = peak_within(memory, ranges)
