"""Loss suite: forward + backward of ``multipos_con_loss`` per backend, against the reference.

Each record is a flat dict (see DESIGN.md): suite, backend, device, dtype, N, D, ms,
p10_ms, p90_ms, peak_mb, speedup (reference ms / ms at the same N, D, dtype), gflops
(of the 6 N^2 D FLOPs a fused symmetric kernel needs) and floor_frac (the tensor-core floor
over ms, on GPUs whose peak is known).
"""

from __future__ import annotations

import functools
import multiprocessing
from dataclasses import asdict, dataclass

import torch

from stablerep_fast.bench.timing import peak_memory_mb, time_fn
from stablerep_fast.ops.dispatch import BACKENDS, unavailable_reason
from stablerep_fast.ops.multipos import multipos_con_loss

# Dense bf16 tensor-core rate measured on H100/H200 (METHOD.md), in FLOP/s.
TENSOR_CORE_PEAK = {"H100": 790e12, "H200": 790e12}
# Backends worth timing: "torch" only re-dispatches to "reference" or "chunked".
DISPATCHERS = ("torch",)
# A baseline beside the backends: torch.compile of the dense reference (compiled once per
# shape in the warm-up, so compile time is not in the timing).
COMPILED_REFERENCE = "reference-compiled"


@dataclass(frozen=True)
class LossCase:
    backend: str
    n: int
    d: int
    dtype: str
    device: str
    temperature: float = 0.1
    captions_per_image: int = 6  # m images per caption, as in the recipe
    warmup: int = 1
    repeats: int = 5


def loss_flops(n: int, d: int) -> float:
    """FLOPs of a fused forward (2 N^2 D) plus symmetric backward (4 N^2 D)."""
    return 6.0 * n * n * d


def _floor_ms(n: int, d: int, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in TENSOR_CORE_PEAK.items() if k in name), None)
    return None if peak is None else loss_flops(n, d) / peak * 1e3


def run_case(case: LossCase) -> dict:
    """Measure one case in this process; returns its record (``error`` set on failure)."""
    device = torch.device(case.device)
    torch.manual_seed(0)
    feats = torch.randn(case.n, case.d, device=device, dtype=getattr(torch, case.dtype), requires_grad=True)
    labels = torch.arange(case.n, device=device) // case.captions_per_image

    compiled = case.backend == COMPILED_REFERENCE
    backend = "reference" if compiled else case.backend
    loss_fn = functools.partial(multipos_con_loss, temperature=case.temperature, backend=backend)
    if compiled:
        loss_fn = torch.compile(loss_fn, dynamic=False)

    def step():
        feats.grad = None
        loss_fn(feats, labels).backward()

    # A first call outside the measurement: lazy imports, op registration and compilation are
    # not the operation's memory (eager backends warm up on a tiny input, so a CPU process's
    # resident set is not already inflated by the full-size run).
    warm_rows = case.n if compiled else 8
    tiny = feats[:warm_rows].detach().clone().requires_grad_()
    try:
        loss_fn(tiny, labels[:warm_rows]).backward()
    except (RuntimeError, ValueError):
        pass  # an unavailable backend is reported by the measured call below

    record = {"suite": "loss", **asdict(case)}
    record.update(N=record.pop("n"), D=record.pop("d"))
    try:
        record["peak_mb"] = peak_memory_mb(step, device)
        timing = time_fn(step, device, warmup=case.warmup, repeats=case.repeats)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        record.update(ms=None, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return record
    record.update(ms=timing.median_ms, p10_ms=timing.p10_ms, p90_ms=timing.p90_ms)
    record["gflops"] = loss_flops(case.n, case.d) / (timing.median_ms * 1e-3) / 1e9
    floor = _floor_ms(case.n, case.d, device)
    record["floor_frac"] = None if floor is None else floor / timing.median_ms
    return record


def run_case_isolated(case: LossCase) -> dict:
    """``run_case`` in a fresh process, so CPU peak memory is the case's own."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_case, (case,))


def loss_backends(device: torch.device, dtype: torch.dtype, names: list[str] | None = None) -> list[str]:
    """Backends to time: the given names, or every available one but the dispatchers, plus
    the compiled reference on GPUs (on CPU, inductor's C++ build takes minutes: ask for it)."""
    if names is not None:
        return names
    available = [n for n in BACKENDS if n not in DISPATCHERS and unavailable_reason(n, device, dtype) is None]
    return available + ([COMPILED_REFERENCE] if device.type == "cuda" else [])


def run_loss_suite(
    sizes: list[int],
    dims: list[int],
    dtypes: list[str],
    device: str,
    backends: list[str] | None = None,
    repeats: int = 5,
) -> list[dict]:
    """Every (backend, N, D, dtype) case; speedup is relative to the "reference" backend."""
    dev = torch.device(device)
    measure = run_case if dev.type == "cuda" else run_case_isolated
    records = []
    for dtype in dtypes:
        names = loss_backends(dev, getattr(torch, dtype), backends)
        for d in dims:
            for n in sizes:
                group = [measure(LossCase(b, n, d, dtype, device, repeats=repeats)) for b in names]
                ref = next((r["ms"] for r in group if r["backend"] == "reference"), None)
                for r in group:
                    r["speedup"] = ref / r["ms"] if ref and r["ms"] else None
                records.extend(group)
    return records
