"""How the benches take time: a device's sync for gatebench's StageTimer, best-of / CUDA-event
timing of one call, and the median of repeated runs.

Why shared: generation_bench.py and adapter_bench.py must sync and repeat the same way, or their
ratios are not comparable across the two.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch


def device_sync(device: torch.device) -> Callable[[], None]:
    """The sync a StageTimer runs at phase edges: CUDA's synchronize, nothing on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], object], device: torch.device, warm: int, reps: int) -> float:
    """Seconds per call: CUDA events on a GPU (mean of ``reps``), wall clock on the CPU (best
    of ``reps``: the least disturbed by other jobs on a shared machine)."""
    for _ in range(warm):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / reps
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def median_run(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]
