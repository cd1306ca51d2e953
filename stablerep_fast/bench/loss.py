"""Loss suite: forward + backward of ``multipos_con_loss`` per backend, against the reference.

Each record is a flat dict (see bench/report.py): suite, backend, device, dtype, N, D, ms,
p10_ms, p90_ms, peak_mb, speedup (reference ms / ms at the same N, D, dtype), gflops
(of the 6 N^2 D FLOPs a fused symmetric kernel needs) and floor_frac (the tensor-core floor
over ms, on GPUs whose peak is known). "reference" is the unfused dense implementation;
"reference-compiled" is torch.compile of it. Backends that cannot run here are recorded as
skipped, with the reason.
"""

from __future__ import annotations

import functools
import multiprocessing
from dataclasses import asdict, dataclass

import torch

from stablerep_fast.bench.report import set_speedup, skipped
from stablerep_fast.bench.timing import peak_memory_mb, tensor_core_peak, time_fn
from stablerep_fast.errors import first_line
from stablerep_fast.ops.dispatch import BACKENDS, unavailable_reason
from stablerep_fast.ops.multipos import multipos_con_loss

TITLE = "loss: forward + backward of multipos_con_loss"
COLUMNS = ["backend", "dtype", "N", "D", "ms", "p90_ms", "peak_mb", "speedup", "gflops", "floor_frac", "error"]
# Default sweeps: (quick, full) per device type. Quick keeps N = 8192, the recipe's batch,
# and stays within a minute or two on a 2-core CPU.
SIZES = {
    ("cpu", True): [1024, 8192],
    ("cpu", False): [1024, 2048, 4096, 8192],
    ("cuda", True): [1024, 8192],
    ("cuda", False): [1024, 4096, 8192, 16384, 65536],
}
DIMS = {True: [256], False: [128, 256]}
DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16", "float32"]}
DTYPE_CHOICES = ("float32", "bfloat16", "float16", "float64")  # what multipos_con_loss takes (--dtypes)
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
    peak = tensor_core_peak(device)
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
        record.update(ms=None, error=first_line(exc))
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


def loss_backends(device: torch.device, dtype: torch.dtype, names: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Backends to time and those left out with the reason: the given names (those that cannot
    run here left out, unknown ones timed so that their record says why), or every available
    backend but the dispatchers, plus the compiled reference on GPUs (on CPU, inductor's C++
    build takes minutes: ask for it by name)."""
    run, skip = [], {}
    if names is not None:
        for name in names:
            reason = unavailable_reason(name, device, dtype) if name in BACKENDS else None
            if reason is None:
                run.append(name)
            else:
                skip[name] = reason
        return run, skip
    for name in BACKENDS:
        if name in DISPATCHERS:
            continue
        reason = unavailable_reason(name, device, dtype)
        if reason is None:
            run.append(name)
        else:
            skip[name] = reason
    if device.type == "cuda":
        run.append(COMPILED_REFERENCE)
    else:
        skip[COMPILED_REFERENCE] = "inductor's C++ build takes minutes on a CPU; ask for it with --backends"
    return run, skip


def defaults(device: str, quick: bool) -> dict:
    """The sweep ``run_loss_suite`` does by default on ``device``."""
    kind = torch.device(device).type
    return dict(sizes=SIZES[(kind, quick)], dims=DIMS[quick], dtypes=DTYPES[kind], repeats=3 if quick else 10)


def run_loss_suite(
    sizes: list[int],
    dims: list[int],
    dtypes: list[str],
    device: str,
    backends: list[str] | None = None,
    repeats: int = 5,
) -> list[dict]:
    """Every (backend, N, D, dtype) case; speedup is relative to the "reference" backend.
    On CPU each case runs in a fresh process (its peak memory is its own)."""
    dev = torch.device(device)
    measure = run_case if dev.type == "cuda" else run_case_isolated
    records = []
    for dtype in dtypes:
        names, skip = loss_backends(dev, getattr(torch, dtype), backends)
        records += [skipped("loss", name, device, reason, dtype=dtype) for name, reason in skip.items()]
        for d in dims:
            for n in sizes:
                records += [measure(LossCase(b, n, d, dtype, device, repeats=repeats)) for b in names]
    set_speedup(records, "reference", same=("device", "dtype", "N", "D"))
    return records
