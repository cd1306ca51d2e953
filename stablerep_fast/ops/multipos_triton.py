"""Triton backend of the multi-positive cross-entropy: the two kernels of ``multipos_fused``.

    lse(a, b, scale, diag, precision)                               -> [na] float32
    weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision)  -> [na, D] float32

Each program owns a BLOCK_M row tile of ``a`` and walks the column tiles of ``b``,
recomputing s = scale * a_tile @ b_tile^T with tl.dot (float32 accumulation); nothing
[na, nb] is stored, no atomics are used, so results are deterministic. ``lse`` keeps an
online log-sum-exp in base 2; ``weighted_sum`` forms p = u_i exp(s - lse_a_i) +
v_j exp(s - lse_b_j) and accumulates p @ b_tile into a [BLOCK_M, BLOCK_DV] tile. The
excluded pair (i, i + diag) and padding columns are masked out; lse entries may be +inf.

Inputs are float32, float16 or bfloat16 (a and b alike). Float32 dots run in the chosen
``precision`` ("tf32" or "ieee"). Half-precision p @ b keeps p's float32 accuracy:
bfloat16 splits p into two bfloat16 parts (hi + lo), float16 multiplies p with b upcast
to float32 in tf32 (b is exact there, and float16 would flush the ~1/N weights).

Both kernels are registered torch ops (``stablerep_fast::triton_lse``,
``stablerep_fast::triton_weighted_sum``) so torch.compile traces them. With
TRITON_INTERPRET=1 they run on CPU tensors through Triton's interpreter (the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from stablerep_fast.ops.multipos_fused import LSE_SCHEMA, WEIGHTED_SUM_SCHEMA, Backend, register_kernels

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PRECISIONS = ("tf32", "ieee")


# ---- kernels ---------------------------------------------------------------------------------

@triton.jit
def _load_tile(ptr, idx, k0, n, D, BLOCK_K: tl.constexpr):
    """Rows ``idx`` (int64), columns k0..k0+BLOCK_K of a contiguous [n, D] matrix; zero-padded."""
    k = k0 + tl.arange(0, BLOCK_K)
    mask = (idx[:, None] < n) & (k[None, :] < D)
    return tl.load(ptr + idx[:, None] * D + k[None, :], mask=mask, other=0.0)


@triton.jit
def _dot(x, y, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + x @ y; UPCAST computes in float32 (the interpreter's bfloat16 dot is wrong)."""
    if UPCAST:
        x = x.to(tl.float32)
        y = y.to(tl.float32)
    return tl.dot(x, y, acc, input_precision=PRECISION)


@triton.jit
def _scores(a0, b0, a_ptr, b_ptr, rows, cols, na, nb, D, scale,
            BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """scale * a[rows] @ b[cols]^T; a0, b0 are the first BLOCK_K columns, already loaded."""
    s = _dot(a0, tl.trans(b0), tl.zeros((a0.shape[0], b0.shape[0]), tl.float32), PRECISION, UPCAST)
    for kt in range(1, K_TILES):
        a_k = _load_tile(a_ptr, rows, kt * BLOCK_K, na, D, BLOCK_K)
        b_k = _load_tile(b_ptr, cols, kt * BLOCK_K, nb, D, BLOCK_K)
        s = _dot(a_k, tl.trans(b_k), s, PRECISION, UPCAST)
    return s * scale


@triton.jit
def _kept(rows, cols, nb, diag, HAS_DIAG: tl.constexpr):
    """[rows, cols] mask of the pairs that count: real columns, minus (i, i + diag)."""
    keep = cols[None, :] < nb
    if HAS_DIAG:
        keep = keep & (cols[None, :] != rows[:, None] + diag)
    return keep


@triton.jit
def _lse_kernel(a_ptr, b_ptr, scale_ptr, lse_ptr, na, nb, D, diag,
                HAS_DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """lse_i = log sum_j exp(s_ij) for one row tile, as an online base-2 log-sum-exp."""
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32) * LOG2E
    a0 = _load_tile(a_ptr, rows, 0, na, D, BLOCK_K)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, nb, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        b0 = _load_tile(b_ptr, cols, 0, nb, D, BLOCK_K)
        s = _scores(a0, b0, a_ptr, b_ptr, rows, cols, na, nb, D, scale, BLOCK_K, K_TILES, PRECISION, UPCAST)
        s = tl.where(_kept(rows, cols, nb, diag, HAS_DIAG), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing kept yet
        total = total * tl.exp2(m - shift) + tl.sum(tl.exp2(s - shift[:, None]), 1)
        m = m_new
    tl.store(lse_ptr + rows, (m + tl.log2(total)) * LN2, mask=rows < na)


@triton.jit
def _weighted_sum_kernel(a_ptr, b_ptr, u_ptr, lse_a_ptr, v_ptr, lse_b_ptr, scale_ptr, out_ptr,
                         na, nb, D, diag,
                         HAS_U: tl.constexpr, HAS_V: tl.constexpr, HAS_DIAG: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         K_TILES: tl.constexpr, BLOCK_DV: tl.constexpr, SPLIT_P: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """out[rows, dv] = sum_j p_ij b[j, dv] for one row tile and one BLOCK_DV slice of D."""
    LOG2E: tl.constexpr = 1.4426950408889634
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    dv0 = tl.program_id(1) * BLOCK_DV
    scale = tl.load(scale_ptr).to(tl.float32) * LOG2E
    a0 = _load_tile(a_ptr, rows, 0, na, D, BLOCK_K)
    if HAS_U:
        u = tl.load(u_ptr + rows, mask=rows < na, other=0.0)
        lse_a = tl.load(lse_a_ptr + rows, mask=rows < na, other=0.0) * LOG2E
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for n0 in range(0, nb, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        b0 = _load_tile(b_ptr, cols, 0, nb, D, BLOCK_K)
        s = _scores(a0, b0, a_ptr, b_ptr, rows, cols, na, nb, D, scale, BLOCK_K, K_TILES, PRECISION, UPCAST)
        p = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        if HAS_U:
            p += u[:, None] * tl.exp2(s - lse_a[:, None])
        if HAS_V:
            v = tl.load(v_ptr + cols, mask=cols < nb, other=0.0)
            lse_b = tl.load(lse_b_ptr + cols, mask=cols < nb, other=0.0) * LOG2E
            p += v[None, :] * tl.exp2(s - lse_b[None, :])
        # where, not a -inf score: exp(-inf - (-inf)) would be NaN for a row with nothing kept.
        p = tl.where(_kept(rows, cols, nb, diag, HAS_DIAG), p, 0.0)
        if K_TILES == 1 and BLOCK_DV == BLOCK_K:  # the output slice is all of D: reuse b0
            bv = b0
        else:
            bv = _load_tile(b_ptr, cols, dv0, nb, D, BLOCK_DV)
        if SPLIT_P:  # p = hi + lo, both exact in b's dtype: ~16 significant bits of p
            hi = p.to(bv.dtype)
            acc = _dot(hi, bv, acc, PRECISION, UPCAST)
            acc = _dot((p - hi.to(tl.float32)).to(bv.dtype), bv, acc, PRECISION, UPCAST)
        else:
            acc = _dot(p, bv.to(tl.float32), acc, PRECISION, UPCAST)
    dv = dv0 + tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + rows[:, None] * D + dv[None, :], acc, mask=(rows < na)[:, None] & (dv < D)[None, :])


# ---- launchers -------------------------------------------------------------------------------

# TRITON_INTERPRET=1 at import made triton.jit build interpreted kernels (CPU tensors, numpy).
_INTERPRET = not isinstance(_lse_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class _Tiles:
    block_m: int
    block_n: int
    block_k: int
    k_tiles: int
    block_dv: int
    num_warps: int
    num_stages: int


def _tiles(d: int, dtype: torch.dtype, kernel: str) -> _Tiles:
    """Tile settings for width ``d``.

    D <= 256 is one K tile (a's row tile loaded once per program); wider D loops over
    64-wide K chunks and slices the output into 128-wide column blocks. On GPUs, BLOCK_M = 64
    gives N/64 programs (128 for N = 8192, one wave on 132 SMs); BLOCK_N keeps a's tile plus
    num_stages b tiles within Hopper's 227 KB of shared memory (half: 32 + 3 x 32 KB at D = 256;
    float32 halves BLOCK_N). Untuned: chosen from those budgets, not measured. The interpreter
    costs ~2 ms per program and per loop step, so it gets 64 x 64 tiles and no pipelining.
    """
    block_k = max(16, triton.next_power_of_2(d)) if d <= 256 else 64
    k_tiles = triton.cdiv(d, block_k)
    block_dv = block_k if k_tiles == 1 else 128
    if _INTERPRET:
        return _Tiles(64, 64, block_k, k_tiles, block_dv, 4, 1)
    half = dtype != torch.float32
    block_n = 64 if half else 32
    if kernel == "lse":
        return _Tiles(64, block_n, block_k, k_tiles, block_dv, 4, 3)
    return _Tiles(64, block_n, block_k, k_tiles, block_dv, 8, 2)


def _check(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, precision: str) -> None:
    if a.dtype not in _DTYPES or b.dtype != a.dtype:
        raise TypeError(f"a and b must share one dtype of {_DTYPES}, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a [na, D] and b [nb, D] must be 2-D of one width, got {tuple(a.shape)}, {tuple(b.shape)}")
    if a.device != b.device or scale.device != a.device or scale.numel() != 1:
        raise ValueError(f"a, b and the 1-element scale must share a device, got {a.device}, {b.device}, "
                         f"{scale.device} (scale shape {tuple(scale.shape)})")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _dot_precision(dtype: torch.dtype, precision: str) -> str:
    """tl.dot's input_precision: the caller's for float32 inputs; for half inputs "tf32", which
    16-bit dots ignore and float16's p @ b (float32 operands) uses."""
    return precision if dtype == torch.float32 else "tf32"


# torch >= 2.6 traces into compiled kernels (triton_op); torch 2.4/2.5 and interpreted kernels
# (which wrap_triton cannot trace) get opaque custom ops with fake implementations.
_TRACEABLE = hasattr(torch.library, "triton_op") and not _INTERPRET
_launchable = torch.library.wrap_triton if _TRACEABLE else lambda kernel: kernel


def _lse(a, b, scale, diag, precision):
    """lse_i = log sum_j exp(scale * a_i . b_j) over j != i + diag: [na] float32."""
    _check(a, b, scale, precision)
    has_diag, diag = diag is not None, diag or 0
    a, b = a.contiguous(), b.contiguous()
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    out = torch.empty(na, dtype=torch.float32, device=a.device)
    t = _tiles(d, a.dtype, "lse")
    _launchable(_lse_kernel)[(triton.cdiv(na, t.block_m),)](
        a, b, scale, out, na, nb, d, diag,
        HAS_DIAG=has_diag, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, K_TILES=t.k_tiles,
        PRECISION=_dot_precision(a.dtype, precision), UPCAST=_INTERPRET,
        num_warps=t.num_warps, num_stages=t.num_stages,
    )
    return out


def _weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision):
    """out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j: [na, D] float32.

    s_ij = scale * a_i . b_j; j = i + diag is skipped; u/lse_a (v/lse_b) are float32 [na]
    ([nb]) and both None when that term is absent.
    """
    _check(a, b, scale, precision)
    has_diag, diag = diag is not None, diag or 0
    a, b = a.contiguous(), b.contiguous()
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    out = torch.empty(na, d, dtype=torch.float32, device=a.device)
    t = _tiles(d, a.dtype, "weighted_sum")
    _launchable(_weighted_sum_kernel)[(triton.cdiv(na, t.block_m), triton.cdiv(d, t.block_dv))](
        a, b, _f32(u), _f32(lse_a), _f32(v), _f32(lse_b), scale, out, na, nb, d, diag,
        HAS_U=u is not None, HAS_V=v is not None, HAS_DIAG=has_diag,
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, K_TILES=t.k_tiles, BLOCK_DV=t.block_dv,
        SPLIT_P=a.dtype == torch.bfloat16, PRECISION=_dot_precision(a.dtype, precision), UPCAST=_INTERPRET,
        num_warps=t.num_warps, num_stages=t.num_stages,
    )
    return out


def _f32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float().contiguous()


# ---- the backend -----------------------------------------------------------------------------

if _TRACEABLE:
    _KERNELS = (
        torch.library.triton_op("stablerep_fast::triton_lse", _lse, mutates_args=(), schema=LSE_SCHEMA),
        torch.library.triton_op(
            "stablerep_fast::triton_weighted_sum", _weighted_sum, mutates_args=(), schema=WEIGHTED_SUM_SCHEMA
        ),
    )
else:
    _KERNELS = register_kernels("triton", _lse, _weighted_sum)


def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the kernels can run on (device, dtype), else the reason."""
    if dtype not in _DTYPES:
        return f"the Triton kernels take float32, float16 or bfloat16, not {dtype}"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu" and _INTERPRET:
        return None
    return f"Triton needs a CUDA device ({device.type} runs only under TRITON_INTERPRET=1, set before import)"


TRITON = Backend(
    "triton", "fused Triton kernels", *_KERNELS, unavailable=unavailable, half_inputs=True, precisions=PRECISIONS,
    # "auto" prefers this backend on CUDA from this many logits (N x M) up. Not yet measured: a
    # guess that below N ~ 1024 the dense torch path's [N, N] kernels cost no more than launches.
    auto_min_logits=1 << 20,
)
