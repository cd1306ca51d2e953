"""Loss backends by name, and the rule ``backend="auto"`` follows.

Each backend module exports ``backend.Backend`` records (its two kernels, where it
runs, its limits); this table maps names to those records. "torch" is not a record but a
rule: the dense reference up to DENSE_MAX_LOGITS logits, the chunked kernels above. "auto"
takes the first fused backend of AUTO_ORDER that can run the problem, else "torch".

Kernels that check themselves: the first time a fused backend (other than "chunked", the
yardstick) is resolved for a device, dtype, precision and feature width, ``self_check`` runs
it on a small problem against the chunked kernels. If it raises or is off, "auto" warns once,
naming the backend and the reason, and takes the next backend; a backend named explicitly
raises instead. Verdicts are cached for the process, so later calls cost a dict lookup. Under
torch.compile the check runs eagerly while the first call is traced (its verdict is a
constant of the graph), so tracing sees no extra operations.

The Triton module is imported on first use: Triton's interpreter must be chosen before its
kernels are defined, and importing triton costs seconds. The import is a plain statement,
not importlib, because torch.compile runs import statements while it traces a first call
but refuses importlib.
"""

from __future__ import annotations

import warnings

import torch

from stablerep_fast.ops import self_check
from stablerep_fast.ops.backend import Backend
from stablerep_fast.ops.multipos_ext import CPP, CUDA
from stablerep_fast.ops.multipos_torch import CHUNKED, REFERENCE

# "torch" runs the dense reference up to this many logits (n x M), chunked above: 2048 x 2048
# logits keep the dense path's ~10 N^2 temporaries under ~200 MB.
DENSE_MAX_LOGITS = 1 << 22

# Preference order of "auto" among the fused backends, fastest first, per device type;
# "torch" comes after them everywhere. "cuda" is not in it: its WMMA kernels issue mma.sync,
# not Hopper's wgmma, and run p @ b in two parts (four products to Triton's three), so they are
# slower than "triton" by construction (docs/roofline.md); it stays available by name.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton",),
    "cpu": ("cpp",),
}


def _triton() -> Backend:
    try:
        from stablerep_fast.ops.multipos_triton import TRITON
    except ImportError as exc:
        reason = f"Triton does not import: {exc}"
        return Backend("triton", "fused Triton kernels", None, None, unavailable=lambda device, dtype: reason)
    return TRITON


_RECORDS: dict[str, Backend] = {b.name: b for b in (REFERENCE, CHUNKED, CPP, CUDA)}
_LAZY = {"triton": _triton}

# Every name a user may pass besides "auto".
BACKENDS: tuple[str, ...] = ("torch", "reference", "chunked", "triton", "cpp", "cuda")


def record(name: str) -> Backend:
    """The record of backend ``name`` (imported on first use); KeyError for unknown names and "torch"."""
    if name not in _RECORDS and name in _LAZY:
        _RECORDS[name] = _LAZY[name]()
    return _RECORDS[name]


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when backend ``name`` can run on (device, dtype), else why not."""
    return None if name == "torch" else record(name).unavailable(device, dtype)


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device`` with ``dtype``."""
    device = torch.device(device)
    return [name for name in BACKENDS if unavailable_reason(name, device, dtype) is None]


def resolve_backend(
    name: str, device: torch.device, dtype: torch.dtype, logits: int = 0, dim: int = 0, precision: str = "tf32"
) -> Backend:
    """The record to run: ``name`` itself (checked), or for "auto" the first fused backend in
    AUTO_ORDER that takes a problem of ``logits`` = rows x columns with ``dim`` features and
    passes its first-use check, else "torch"; "torch" is the dense reference or the chunked
    kernels by ``logits``."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ()):
            backend = record(candidate)
            if (
                backend.unavailable(device, dtype) is None
                and logits >= backend.auto_min_logits
                and (backend.max_d is None or dim <= backend.max_d)
                and not _first_use_failure(candidate, str(device), str(dtype), precision, dim, True)
            ):
                return backend
        name = "torch"
    if name == "torch":
        return REFERENCE if logits <= DENSE_MAX_LOGITS else CHUNKED
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unavailable_reason(name, device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} with {dtype}: {reason}")
    reason = _first_use_failure(name, str(device), str(dtype), precision, dim, False)
    if reason:
        raise RuntimeError(f"backend {name!r} failed its check on {device} with {dtype}, D = {dim}: {reason}")
    return record(name)


# (name, device, dtype, kernel precision, D) -> "" (passed) or the reason it failed.
_VERDICTS: dict[tuple, str] = {}
_WARNED: set[tuple] = set()


@torch.compiler.assume_constant_result
def _first_use_failure(name: str, device: str, dtype: str, precision: str, dim: int, warn: bool) -> str:
    """"" when backend ``name`` passes ``self_check`` (run once per process and key), else the
    reason; with ``warn``, says so once per key in a RuntimeWarning. Only plain values cross in
    and out, so torch.compile runs this eagerly while tracing and keeps the result."""
    backend = record(name)
    if backend.dense is not None or backend is CHUNKED:
        return ""  # no fused kernels of its own to check
    precision = backend.kernel_precision(precision)
    key = (name, device, dtype, precision, dim)
    if key not in _VERDICTS:
        torch_dtype = getattr(torch, dtype.removeprefix("torch."))
        _VERDICTS[key] = self_check.failure(backend, torch.device(device), torch_dtype, precision, dim) or ""
    reason = _VERDICTS[key]
    if reason and warn and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"stablerep_fast: loss backend {name!r} failed its check on {device} with {dtype}, precision "
            f"{precision}, D = {dim} ({reason}); backend='auto' uses the next one",
            RuntimeWarning,
            stacklevel=2,
        )
    return reason
