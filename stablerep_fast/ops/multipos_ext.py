"""The backends of the compiled extension ``stablerep_fast._C``: "cpp" and "cuda" (csrc/multipos/).

Both are the two kernels of ``multipos_fused``, behind one pair of launchers. Tensors cross
into the extension as (address, sizes, dtype); devices, dtypes, shapes and contiguity are
checked here first, so the extension only sees valid buffers (it checks sizes and pointers
again, and turns CUDA errors into RuntimeErrors naming the failing call).

- "cpp": C++/OpenMP on CPU tensors. float64 runs in float64, the other dtypes in float32; the
  scale is read on the host. Memory is O(N * D), never an N x N buffer, and the results are
  deterministic for any number of threads.
- "cuda": CUDA C++ on the tensors' GPU, on torch's current stream. Tensor-core tiles (WMMA)
  for bfloat16 and, for float32, TF32 by default or exact FMAs with ``precision="ieee"``;
  float16 inputs run as float32 (their range would flush the ~1/N weights of the backward).
  The scale is read on the device (no sync). D is limited to 256 (the row and column tiles
  live in shared memory); the Triton backend has no such limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stablerep_fast import _ext
from stablerep_fast.ops.backend import Backend, register_kernels
from stablerep_fast.ops.multipos_fused import accumulation_dtype

MAX_D = 256  # of the cuda kernels
PRECISIONS = ("tf32", "ieee")


@dataclass(frozen=True)
class ExtKernels:
    """One pair of the extension's kernels: where they run and how they take their operands.

    device_type: "cpu" or "cuda"; lse, weighted_sum: the entries of ``_C``.
    dtypes: the input dtypes they take; as_is: those they read without a conversion (the
        others are converted to their accumulation dtype: float32).
    precisions: the float32 product modes they take; max_d: the widest features (None: any).
    """

    device_type: str
    lse: str
    weighted_sum: str
    dtypes: tuple[torch.dtype, ...]
    as_is: tuple[torch.dtype, ...]
    precisions: tuple[str, ...]
    max_d: int | None = None

    def unavailable(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """None when these kernels can run on (device, dtype), else the reason."""
        if device.type != self.device_type:
            return f"it runs on {self.device_type.upper()} tensors only, not {device.type}"
        if not _ext.is_built():
            return "the compiled extension stablerep_fast._C is not built"
        if not hasattr(_ext.extension(), self.lse):
            return "stablerep_fast._C was built without CUDA (no nvcc, or STABLEREP_FAST_NO_CUDA=1)"
        if dtype not in self.dtypes:
            return f"unsupported dtype {dtype} ({', '.join(str(t) for t in self.dtypes)} are)"
        return None


CPU_KERNELS = ExtKernels("cpu", "multipos_lse", "multipos_weighted_sum",
                         dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16),
                         as_is=(torch.float32, torch.float64), precisions=("ieee",))
CUDA_KERNELS = ExtKernels("cuda", "multipos_lse_cuda", "multipos_weighted_sum_cuda",
                          dtypes=(torch.float32, torch.float16, torch.bfloat16),
                          as_is=(torch.float32, torch.bfloat16), precisions=PRECISIONS, max_d=MAX_D)


def _operand(name: str, x: torch.Tensor, device: torch.device, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """``x`` as a contiguous tensor of ``dtype`` on ``device``; ValueError naming the rule it broke."""
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    return x.detach().to(dtype).contiguous()


def _problem(k: ExtKernels, a, b, scale, diag, precision, vectors=None) -> tuple[dict, list, torch.dtype]:
    """Checks one launch of ``k`` and prepares its operands (``vectors``: weighted_sum's u,
    lse_a, v, lse_b, None where absent).

    Returns the keyword arguments of the ``_C`` entry (addresses, sizes, dtype, scale; address
    0 for an absent vector), the tensors behind the addresses (they must outlive the call) and
    the output dtype.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [na, D] and [nb, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    if k.max_d is not None and a.shape[1] > k.max_d:
        raise ValueError(f"the {k.device_type} kernels take D <= {k.max_d}, got D = {a.shape[1]}; use backend='triton'")
    if precision not in k.precisions:
        raise ValueError(f"precision must be one of {k.precisions}, got {precision!r}")
    reason = k.unavailable(a.device, a.dtype)
    if reason is not None:
        raise ValueError(f"a: {reason}")
    vectors = vectors or {}
    if vectors and ((vectors["u"] is None) != (vectors["lse_a"] is None)
                    or (vectors["v"] is None) != (vectors["lse_b"] is None)):
        raise ValueError("u and lse_a (and v and lse_b) must be given together")
    acc = accumulation_dtype(a.dtype)
    dtype = a.dtype if a.dtype in k.as_is else acc
    a = a.detach().to(dtype).contiguous()
    b = _operand("b", b, a.device, dtype, tuple(b.shape))
    lengths = {"u": a.shape[0], "lse_a": a.shape[0], "v": b.shape[0], "lse_b": b.shape[0]}
    vectors = {name: None if t is None else _operand(name, t, a.device, acc, (lengths[name],))
               for name, t in vectors.items()}
    operands = [a, b, *(t for t in vectors.values() if t is not None)]
    args = dict(a=a.data_ptr(), b=b.data_ptr(), na=a.shape[0], nb=b.shape[0], d=a.shape[1], dtype=_ext.c_dtype(dtype),
                diag=diag, **{name: 0 if t is None else t.data_ptr() for name, t in vectors.items()})
    if k.device_type == "cuda":  # the scale is read on the device: a learnable one costs no sync
        scale = _operand("scale", scale.reshape(()), a.device, torch.float32, ())
        operands.append(scale)
        args.update(scale=scale.data_ptr(), exact=precision == "ieee", device=a.device.index,
                    stream=torch.cuda.current_stream(a.device).cuda_stream)
    else:
        args.update(scale=float(scale))
    return args, operands, acc


def _launchers(k: ExtKernels):
    """The lse and weighted_sum launchers of ``k`` (signatures in ``multipos_fused``)."""

    def lse(a, b, scale, diag, precision):
        args, operands, acc = _problem(k, a, b, scale, diag, precision)
        out = torch.empty(a.shape[0], dtype=acc, device=a.device)
        getattr(_ext.extension(), k.lse)(**args, lse_out=out.data_ptr())
        return out

    def weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision):
        vectors = dict(u=u, lse_a=lse_a, v=v, lse_b=lse_b)
        args, operands, acc = _problem(k, a, b, scale, diag, precision, vectors)
        out = torch.empty(a.shape, dtype=acc, device=a.device)
        getattr(_ext.extension(), k.weighted_sum)(**args, out=out.data_ptr())
        return out

    return lse, weighted_sum


CPP = Backend(
    "cpp", "fused C++/OpenMP kernels", *register_kernels("cpp", *_launchers(CPU_KERNELS)),
    unavailable=CPU_KERNELS.unavailable,
    auto_min_logits=256 * 256,  # below, the dense torch path is as fast and "auto" keeps it
)
CUDA = Backend(
    "cuda", "fused CUDA kernels", *register_kernels("cuda", *_launchers(CUDA_KERNELS)),
    unavailable=CUDA_KERNELS.unavailable, max_d=MAX_D, half_inputs=True, precisions=PRECISIONS,
    # As for Triton (unmeasured): below N ~ 1024 the dense torch path costs no more than launches.
    auto_min_logits=1 << 20,
)
