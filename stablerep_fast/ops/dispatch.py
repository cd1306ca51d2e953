"""One table of loss backends, and the rule ``backend="auto"`` follows.

Every backend is an autograd-able function with one signature,
``fn(rows, cols, row_labels, col_labels, scale, self_offset, group=None) -> scalar mean loss``
(see ``multipos_torch`` for the exact semantics; ``group``: a process group over which the
columns are gathered, see ``distributed``), so the public API never depends on which runs.

Backend modules are imported on first use (Triton's interpreter, for one, must be chosen
before its kernels are defined). A module provides the function and optionally:
``unavailable(device, dtype) -> str | None`` (None when it can run, else the reason);
``AUTO_MIN_LOGITS`` (below that many logits, rows x columns, "auto" passes it over);
``MAX_D`` (the widest features it takes; "auto" passes it over for wider ones);
``HALF_INPUTS = True`` (it takes float16/bfloat16 rows as they are; others get float32);
``PRECISIONS`` (the float32 modes its ``precision=`` keyword accepts; others are exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
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
class LoadedBackend:
    name: str
    fn: Callable[..., torch.Tensor] | None
    unavailable: Callable[[torch.device, torch.dtype], str | None]
    auto_min_logits: int = 0
    max_d: int | None = None
    half_inputs: bool = False
    takes_precision: bool = False


def _import(module: str) -> ModuleType:
    """Import a backend module with import statements, not importlib: torch.compile runs
    import statements while it traces a first call, but refuses importlib."""
    if module == "multipos_torch":
        from stablerep_fast.ops import multipos_torch as loaded
    elif module == "multipos_cpp":
        from stablerep_fast.ops import multipos_cpp as loaded
    elif module == "multipos_triton":
        from stablerep_fast.ops import multipos_triton as loaded
    elif module == "multipos_cuda":
        from stablerep_fast.ops import multipos_cuda as loaded
    else:
        raise ValueError(f"no backend module {module!r}")
    return loaded


_LOADED: dict[str, LoadedBackend] = {}


def _load(name: str) -> LoadedBackend:
    """Backend ``name``, imported once; a module that cannot load yields fn=None and the reason."""
    if name not in _LOADED:
        _LOADED[name] = _load_uncached(BACKENDS[name])
    return _LOADED[name]


def _load_uncached(backend: Backend) -> LoadedBackend:
    try:
        module = _import(backend.module)
    except ImportError as exc:
        if not (Path(__file__).parent / f"{backend.module}.py").exists():
            reason = f"the {backend.description} are not part of this version of stablerep_fast"
        else:
            reason = f"import failed: {exc}"
        return LoadedBackend(backend.name, None, lambda device, dtype: reason)
    return LoadedBackend(
        backend.name,
        getattr(module, backend.function),
        getattr(module, "unavailable", lambda device, dtype: None),
        getattr(module, "AUTO_MIN_LOGITS", 0),
        getattr(module, "MAX_D", None),
        getattr(module, "HALF_INPUTS", False),
        hasattr(module, "PRECISIONS"),
    )


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when backend ``name`` can run on (device, dtype), else why not."""
    return _load(name).unavailable(device, dtype)


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device`` with ``dtype``."""
    device = torch.device(device)
    return [name for name in BACKENDS if unavailable_reason(name, device, dtype) is None]


def resolve_backend(
    name: str, device: torch.device, dtype: torch.dtype, logits: int = 0, dim: int = 0
) -> LoadedBackend:
    """The backend to run: ``name`` itself (checked), or for "auto" the first available one in
    AUTO_ORDER that takes a problem of ``logits`` = rows x columns with ``dim`` features."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ()):
            loaded = _load(candidate)
            if (
                loaded.unavailable(device, dtype) is None
                and logits >= loaded.auto_min_logits
                and (loaded.max_d is None or dim <= loaded.max_d)
            ):
                return loaded
        return _load("torch")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    reason = unavailable_reason(name, device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} with {dtype}: {reason}")
    return _load(name)
