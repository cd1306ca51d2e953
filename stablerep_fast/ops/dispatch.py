"""One table of loss backends, and the rule ``backend="auto"`` follows.

Every backend is an autograd-able function with one signature,
``fn(rows, cols, row_labels, col_labels, scale, self_offset) -> scalar mean loss``
(see ``multipos_torch`` for the exact semantics), so the public API and the distributed
wrapper never depend on which one runs.

Backend modules are imported on first use (Triton's interpreter, for one, must be chosen
before its kernels are defined). A module provides the function, optionally
``unavailable(device, dtype) -> str | None`` (None when it can run, else the reason) and
``AUTO_MIN_LOGITS``: below that many logits (rows x columns) "auto" passes it over.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Callable

import torch


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # stablerep_fast.ops.<module>
    function: str
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "multipos_torch", "multipos_ce_torch", "PyTorch; dense at small sizes, chunked at large"),
        Backend("reference", "multipos_torch", "multipos_ce_dense", "PyTorch, dense [N, N] logits (the reference)"),
        Backend("chunked", "multipos_torch", "multipos_ce_chunked", "PyTorch, row chunks, O(N * chunk) memory"),
        Backend("triton", "multipos_triton", "multipos_ce_triton", "fused Triton kernels"),
        Backend("cpp", "multipos_cpp", "multipos_ce_cpp", "fused C++/OpenMP kernels"),
        Backend("cuda", "multipos_cuda", "multipos_ce_cuda", "fused CUDA kernels"),
    )
}

# Preference order of "auto", fastest first, per device type.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "torch"),
    "cpu": ("cpp", "torch"),
}


@dataclass(frozen=True)
class _Loaded:
    fn: Callable[..., torch.Tensor] | None
    unavailable: Callable[[torch.device, torch.dtype], str | None]
    auto_min_logits: int


@cache
def _load(name: str) -> _Loaded:
    """Import backend ``name``; a module that cannot load yields fn=None and the reason."""
    backend = BACKENDS[name]
    qualified = f"stablerep_fast.ops.{backend.module}"
    try:
        module = importlib.import_module(qualified)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == qualified:
            reason = f"the {backend.description} are not part of this version of stablerep_fast"
        else:
            reason = f"import failed: {exc}"
        return _Loaded(None, lambda device, dtype: reason, 0)
    return _Loaded(
        getattr(module, backend.function),
        getattr(module, "unavailable", lambda device, dtype: None),
        getattr(module, "AUTO_MIN_LOGITS", 0),
    )


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when backend ``name`` can run on (device, dtype), else why not."""
    return _load(name).unavailable(device, dtype)


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device`` with ``dtype``."""
    device = torch.device(device)
    return [name for name in BACKENDS if unavailable_reason(name, device, dtype) is None]


def resolve_backend(
    name: str, device: torch.device, dtype: torch.dtype, logits: int = 0
) -> Callable[..., torch.Tensor]:
    """The loss function to run: backend ``name`` itself (checked), or for "auto" the first
    available one in AUTO_ORDER that takes a problem of ``logits`` = rows x columns."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ()):
            loaded = _load(candidate)
            if loaded.unavailable(device, dtype) is None and logits >= loaded.auto_min_logits:
                return loaded.fn
        return _load("torch").fn
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unavailable_reason(name, device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} with {dtype}: {reason}")
    return _load(name).fn
