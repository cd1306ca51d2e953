"""Loss backends by name, and the rule ``backend="auto"`` follows.

Each backend module exports one ``multipos_fused.Backend`` record (its two kernels, where it
runs, its limits); this table maps names to those records. "torch" is not a record but a
rule: the dense reference up to DENSE_MAX_LOGITS logits, the chunked kernels above. "auto"
takes the first fused backend of AUTO_ORDER that can run the problem, else "torch".

The Triton module is imported on first use: Triton's interpreter must be chosen before its
kernels are defined, and importing triton costs seconds. The import is a plain statement,
not importlib, because torch.compile runs import statements while it traces a first call
but refuses importlib.
"""

from __future__ import annotations

import torch

from stablerep_fast.ops.multipos_cpp import CPP
from stablerep_fast.ops.multipos_cuda import CUDA
from stablerep_fast.ops.multipos_fused import Backend
from stablerep_fast.ops.multipos_torch import CHUNKED, REFERENCE

# "torch" runs the dense reference up to this many logits (n x M), chunked above: 2048 x 2048
# logits keep the dense path's ~10 N^2 temporaries under ~200 MB.
DENSE_MAX_LOGITS = 1 << 22

# Preference order of "auto" among the fused backends, fastest first, per device type;
# "torch" comes after them everywhere.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda"),
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


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, logits: int = 0, dim: int = 0) -> Backend:
    """The record to run: ``name`` itself (checked), or for "auto" the first fused backend in
    AUTO_ORDER that takes a problem of ``logits`` = rows x columns with ``dim`` features,
    else "torch"; "torch" is the dense reference or the chunked kernels by ``logits``."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ()):
            backend = record(candidate)
            if (
                backend.unavailable(device, dtype) is None
                and logits >= backend.auto_min_logits
                and (backend.max_d is None or dim <= backend.max_d)
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
    return record(name)
