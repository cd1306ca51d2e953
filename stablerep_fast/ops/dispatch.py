"""One table of loss backends, and the rule ``backend="auto"`` follows.

Every backend is an autograd-able function with one signature,
``fn(rows, cols, row_labels, col_labels, scale, self_offset) -> scalar mean loss``
(see ``multipos_torch`` for the exact semantics), so the public API and the distributed
wrapper never depend on which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stablerep_fast.ops.multipos_torch import multipos_ce_chunked, multipos_ce_dense, multipos_ce_torch


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable[..., torch.Tensor] | None
    description: str
    # Returns None when the backend can run on (device, dtype), else the reason it cannot.
    unavailable: Callable[[torch.device, torch.dtype], str | None]


def _always(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _not_built(name: str) -> Callable[[torch.device, torch.dtype], str | None]:
    def reason(device: torch.device, dtype: torch.dtype) -> str:
        return f"the {name} kernels are not part of this version of stablerep_fast"

    return reason


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", multipos_ce_torch, "PyTorch; dense at small sizes, chunked at large", _always),
        Backend("reference", multipos_ce_dense, "PyTorch, dense [N, N] logits (the reference)", _always),
        Backend("chunked", multipos_ce_chunked, "PyTorch, row chunks, O(N * chunk) memory", _always),
        Backend("triton", None, "fused Triton kernels", _not_built("Triton")),
        Backend("cpp", None, "fused C++/OpenMP kernels", _not_built("C++")),
        Backend("cuda", None, "fused CUDA kernels", _not_built("CUDA")),
    )
}

# Preference order of "auto", fastest first, per device type.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "torch"),
    "cpu": ("cpp", "torch"),
}


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device`` with ``dtype``."""
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.unavailable(device, dtype) is None]


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend to run: ``name`` itself (checked) or the first available for "auto"."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("torch",)):
            backend = BACKENDS[candidate]
            if backend.unavailable(device, dtype) is None:
                return backend
        return BACKENDS["torch"]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *BACKENDS]}")
    backend = BACKENDS[name]
    reason = backend.unavailable(device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} with {dtype}: {reason}")
    return backend
