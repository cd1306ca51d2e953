"""The one timing and memory harness every benchmark uses.

GPU: warm-up, CUDA events around each call, median and quantiles, peak memory from the
caching allocator above what was allocated before. CPU: wall clock, and peak resident
memory above the process's baseline (callers run each case in a fresh process so the
high-water mark belongs to the measured operation).
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def _quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, repeats: int = 10) -> Timing:
    """Median and 10/90% quantiles of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return Timing(statistics.median(samples), _quantile(samples, 0.1), _quantile(samples, 0.9), repeats)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


def _lifetime_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Memory ``fn()`` takes above what was allocated before it (MiB).

    On CPU: the peak resident set during the call minus the resident set before it, using
    the kernel's resettable peak mark; without one (non-Linux), the growth of the process's
    lifetime peak, which is meaningful only in a fresh process.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    # Collect garbage first and keep the collector off during the call: a collection inside
    # fn() would free earlier objects and hide fn's own growth of the resident set.
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if _reset_peak_rss():
            before, peak = _status_mb("VmRSS"), lambda: _status_mb("VmHWM")
        else:
            before, peak = _lifetime_peak_mb(), _lifetime_peak_mb
        fn()
        return max(0.0, peak() - before)
    finally:
        if was_enabled:
            gc.enable()


# Dense bf16/fp16 tensor-core rate measured on H100/H200 (docs/method.md), in FLOP/s.
TENSOR_CORE_PEAK = {"H100": 790e12, "H200": 790e12}


def tensor_core_peak(device: torch.device) -> float | None:
    """The dense 16-bit tensor-core FLOP/s of ``device`` where known (None on CPUs and other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in TENSOR_CORE_PEAK.items() if k in name), None)
