"""The "cuda" backend: the fused kernels of ``multipos_fused`` in CUDA C++ (csrc/multipos/).

Tensor-core tiles (WMMA) for bfloat16 and, for float32, TF32 by default or exact FMAs with
``precision="ieee"``; float16 inputs run as float32 (their range would flush the ~1/N
weights of the backward). Launched on torch's current stream of the tensors' device.
Every check (device, dtype, shape, contiguity) happens here before the extension is called;
CUDA errors come back as RuntimeError naming the failing call. D is limited to 256 (the
row and column tiles live in shared memory); the Triton backend has no such limit.
"""

from __future__ import annotations

import torch

from stablerep_fast import _ext
from stablerep_fast.ops.multipos_fused import Backend, register_kernels

MAX_D = 256
PRECISIONS = ("tf32", "ieee")


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"it runs on CUDA tensors only, not {device.type}"
    if not _ext.is_built() or not _ext.build_info()["cuda"]:
        return "stablerep_fast._C was built without CUDA (no nvcc, or STABLEREP_FAST_NO_CUDA=1)"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"unsupported dtype {dtype} (float32, float16 and bfloat16 are)"
    return None


def _operand(name: str, x: torch.Tensor, device: torch.device, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    return x.detach().to(dtype).contiguous()


def _problem(a, b, scale, diag, precision):
    """a, b and the scale as the kernels read them, and the keyword arguments every _C kernel takes."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [na, D] and [nb, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] > MAX_D:
        raise ValueError(f"the cuda kernels take D <= {MAX_D}, got D = {a.shape[1]}; use backend='triton'")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    reason = unavailable(a.device, a.dtype)
    if reason is not None:
        raise ValueError(f"a: {reason}")
    dtype = torch.float32 if a.dtype == torch.float16 else a.dtype
    b = _operand("b", b, a.device, dtype, tuple(b.shape))
    a = a.detach().to(dtype).contiguous()
    scale = _operand("scale", scale.reshape(()), a.device, torch.float32, ())  # read by the kernels: no sync
    args = dict(a=a.data_ptr(), b=b.data_ptr(), na=a.shape[0], nb=b.shape[0], d=a.shape[1], dtype=_ext.c_dtype(dtype),
                scale=scale.data_ptr(), diag=diag, exact=precision == "ieee", device=a.device.index,
                stream=torch.cuda.current_stream(a.device).cuda_stream)
    return a, b, scale, args


def _lse(a, b, scale, diag, precision):
    a, b, scale, args = _problem(a, b, scale, diag, precision)
    out = torch.empty(a.shape[0], dtype=torch.float32, device=a.device)
    _ext.extension().multipos_lse_cuda(**args, lse_out=out.data_ptr())
    return out


def _weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision):
    a, b, scale, args = _problem(a, b, scale, diag, precision)
    if (u is None) != (lse_a is None) or (v is None) != (lse_b is None):
        raise ValueError("u and lse_a (and v and lse_b) must be given together")
    vectors = {name: None if t is None else _operand(name, t, a.device, torch.float32, (n,))
               for name, t, n in (("u", u, a.shape[0]), ("lse_a", lse_a, a.shape[0]), ("v", v, b.shape[0]),
                                  ("lse_b", lse_b, b.shape[0]))}
    out = torch.empty(a.shape, dtype=torch.float32, device=a.device)
    addresses = {name: 0 if t is None else t.data_ptr() for name, t in vectors.items()}
    _ext.extension().multipos_weighted_sum_cuda(**args, **addresses, out=out.data_ptr())
    return out


CUDA = Backend(
    "cuda", "fused CUDA kernels", *register_kernels("cuda", _lse, _weighted_sum), unavailable=unavailable,
    max_d=MAX_D, half_inputs=True, precisions=PRECISIONS,
    # As for Triton (unmeasured): below N ~ 1024 the dense torch path costs no more than launches.
    auto_min_logits=1 << 20,
)
