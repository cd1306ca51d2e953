"""The "cpp" backend: the fused kernels of ``multipos_fused`` in C++/OpenMP (csrc/multipos/).

Tensors cross into ``stablerep_fast._C`` as (address, sizes, dtype); shapes, dtypes, devices
and contiguity are checked here first, so the extension only sees valid buffers. Half
precision inputs are computed in float32. Memory is O(N * D), never an N x N buffer, and the
results are deterministic for any number of threads.
"""

from __future__ import annotations

from typing import Optional

import torch

from stablerep_fast import _ext
from stablerep_fast.ops.multipos_fused import accumulation_dtype, fused_multipos_ce, register_kernels

# Below 256 x 256 logits the dense torch path is as fast and "auto" keeps it.
AUTO_MIN_LOGITS = 256 * 256


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cpu":
        return f"it runs on CPU tensors only, not {device.type}"
    if not _ext.is_built():
        return "the compiled extension stablerep_fast._C is not built"
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f"unsupported dtype {dtype}"
    return None


def _host_operand(name: str, x: torch.Tensor, acc: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """``x`` as a contiguous CPU tensor of dtype ``acc``; ValueError naming the rule it broke."""
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU for the cpp backend, got {x.device}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    return x.detach().to(acc).contiguous()


def _problem(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, diag: int, has_diag: bool):
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [na, D] and [nb, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    acc = accumulation_dtype(a.dtype)
    a = _host_operand("a", a, acc, tuple(a.shape))
    b = _host_operand("b", b, acc, tuple(b.shape))
    args = (a.data_ptr(), b.data_ptr(), a.shape[0], b.shape[0], a.shape[1], _ext.c_dtype(acc), float(scale), has_diag, diag)
    return a, b, acc, args


def _cpp_lse(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, diag: int, has_diag: bool) -> torch.Tensor:
    a, b, acc, args = _problem(a, b, scale, diag, has_diag)
    out = torch.empty(a.shape[0], dtype=acc)
    _ext.extension().multipos_lse(*args, out.data_ptr())
    return out


def _cpp_weighted_sum(
    a: torch.Tensor,
    b: torch.Tensor,
    u: Optional[torch.Tensor],
    lse_a: Optional[torch.Tensor],
    v: Optional[torch.Tensor],
    lse_b: Optional[torch.Tensor],
    scale: torch.Tensor,
    diag: int,
    has_diag: bool,
) -> torch.Tensor:
    a, b, acc, args = _problem(a, b, scale, diag, has_diag)
    if (u is None) != (lse_a is None) or (v is None) != (lse_b is None):
        raise ValueError("u and lse_a (and v and lse_b) must be given together")
    rows = [None if t is None else _host_operand(n, t, acc, (a.shape[0],)) for n, t in (("u", u), ("lse_a", lse_a))]
    cols = [None if t is None else _host_operand(n, t, acc, (b.shape[0],)) for n, t in (("v", v), ("lse_b", lse_b))]
    out = torch.empty(a.shape, dtype=acc)
    addresses = [0 if t is None else t.data_ptr() for t in (*rows, *cols)]
    _ext.extension().multipos_weighted_sum(*args, *addresses, out.data_ptr())
    return out


CPP_KERNELS = register_kernels("cpp", _cpp_lse, _cpp_weighted_sum)


def multipos_ce_cpp(rows, cols, row_labels, col_labels, scale, self_offset, group=None) -> torch.Tensor:
    """Mean multi-positive cross-entropy with the C++ kernels (semantics: ``multipos_torch``)."""
    return fused_multipos_ce(CPP_KERNELS, rows, cols, row_labels, col_labels, scale, self_offset, group)
