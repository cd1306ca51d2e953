"""The "cpp" backend: the fused kernels of ``multipos_fused`` in C++/OpenMP (csrc/multipos/).

Tensors cross into ``stablerep_fast._C`` as (address, sizes, dtype); shapes, dtypes, devices
and contiguity are checked here first, so the extension only sees valid buffers. Half
precision inputs are computed in float32. Memory is O(N * D), never an N x N buffer, and the
results are deterministic for any number of threads.
"""

from __future__ import annotations

import torch

from stablerep_fast import _ext
from stablerep_fast.ops.multipos_fused import Backend, accumulation_dtype, register_kernels


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


def _problem(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, diag: int | None):
    """a, b as contiguous host buffers, their dtype and the keyword arguments every _C kernel takes."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [na, D] and [nb, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    acc = accumulation_dtype(a.dtype)
    a = _host_operand("a", a, acc, tuple(a.shape))
    b = _host_operand("b", b, acc, tuple(b.shape))
    args = dict(a=a.data_ptr(), b=b.data_ptr(), na=a.shape[0], nb=b.shape[0], d=a.shape[1], dtype=_ext.c_dtype(acc),
                scale=float(scale), diag=diag)
    return a, b, acc, args


def _lse(a, b, scale, diag, precision):
    a, b, acc, args = _problem(a, b, scale, diag)
    out = torch.empty(a.shape[0], dtype=acc)
    _ext.extension().multipos_lse(**args, lse_out=out.data_ptr())
    return out


def _weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision):
    a, b, acc, args = _problem(a, b, scale, diag)
    if (u is None) != (lse_a is None) or (v is None) != (lse_b is None):
        raise ValueError("u and lse_a (and v and lse_b) must be given together")
    vectors = {name: None if t is None else _host_operand(name, t, acc, (n,))
               for name, t, n in (("u", u, a.shape[0]), ("lse_a", lse_a, a.shape[0]), ("v", v, b.shape[0]),
                                  ("lse_b", lse_b, b.shape[0]))}
    out = torch.empty(a.shape, dtype=acc)
    addresses = {name: 0 if t is None else t.data_ptr() for name, t in vectors.items()}
    _ext.extension().multipos_weighted_sum(**args, **addresses, out=out.data_ptr())
    return out


CPP = Backend(
    "cpp", "fused C++/OpenMP kernels", *register_kernels("cpp", _lse, _weighted_sum), unavailable=unavailable,
    auto_min_logits=256 * 256,  # below, the dense torch path is as fast and "auto" keeps it
)
