"""The one timing and memory harness under every suite."""

import subprocess
import sys

import torch

from stablerep_fast.bench.timing import time_fn


def test_cpu_peak_memory_sees_a_large_allocation():
    # In a fresh process, as the CPU harness is meant to be used: threads left behind by
    # other tests could free memory during the call and mask the allocation.
    code = (
        "import torch; from stablerep_fast.bench.timing import peak_memory_mb; "
        "print(peak_memory_mb(lambda: torch.ones(64 * 2**20 // 4).sum(), torch.device('cpu')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mb = float(out.stdout.split()[-1])
    assert 48 <= mb <= 200  # a 64 MiB tensor (plus allocator slack) was touched


def test_time_fn_reports_ordered_quantiles():
    t = time_fn(lambda: sum(range(10_000)), torch.device("cpu"), warmup=1, repeats=7)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.repeats == 7
