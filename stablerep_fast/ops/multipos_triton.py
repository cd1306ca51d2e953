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
``precision`` ("tf32" or "ieee"). Half-precision p @ b keeps most of p's float32 accuracy
by splitting p into two parts, hi + lo, each multiplied on the tensor cores: bfloat16
parts for bfloat16 b; for float16 b, tf32 parts against b upcast to float32 (b is exact in
tf32, and float16 parts would flush the ~1/N weights). One tf32 part alone put 2^-10 of the
largest entry into the float16 gradient at N = 8192, tau = 0.05 (emulated in the tests).

Both kernels are registered torch ops (``stablerep_fast::triton_lse``,
``stablerep_fast::triton_weighted_sum``) so torch.compile traces them. With
TRITON_INTERPRET=1 they run on CPU tensors through Triton's interpreter (the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from stablerep_fast.ops.backend import LSE_SCHEMA, WEIGHTED_SUM_SCHEMA, Backend, register_kernels

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PRECISIONS = ("tf32", "ieee")


# ---- kernels ---------------------------------------------------------------------------------

@triton.jit
def _load_tile(ptr, idx, k0, n, D, BLOCK_K: tl.constexpr):
    """Rows ``idx`` (int32), columns k0..k0+BLOCK_K of a contiguous [n, D] matrix; zero-padded.
    Offsets are int64 (n * D may pass 2^31); indices and masks stay int32 (fewer registers)."""
    k = k0 + tl.arange(0, BLOCK_K)
    mask = (idx[:, None] < n) & (k[None, :] < D)
    return tl.load(ptr + idx.to(tl.int64)[:, None] * D + k[None, :], mask=mask, other=0.0)


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
        keep = keep & (cols[None, :] - rows[:, None] != diag)
    return keep


@triton.jit
def _lse_kernel(a_ptr, b_ptr, scale_ptr, lse_ptr, na, nb, D, diag,
                HAS_DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """lse_i = log sum_j exp(s_ij) for one row tile, as an online base-2 log-sum-exp."""
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    scale = tl.load(scale_ptr).to(tl.float32) * LOG2E
    a0 = _load_tile(a_ptr, rows, 0, na, D, BLOCK_K)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, nb, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        b0 = _load_tile(b_ptr, cols, 0, nb, D, BLOCK_K)
        s = _scores(a0, b0, a_ptr, b_ptr, rows, cols, na, nb, D, scale, BLOCK_K, K_TILES, PRECISION, UPCAST)
        s = tl.where(_kept(rows, cols, nb, diag, HAS_DIAG), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing kept yet
        total = total * tl.exp2(m - shift) + tl.sum(tl.exp2(s - shift[:, None]), 1)
        m = m_new
    tl.store(lse_ptr + rows.to(tl.int64), (m + tl.log2(total)) * LN2, mask=rows < na)


@triton.jit
def _weighted_sum_kernel(a_ptr, b_ptr, u_ptr, lse_a_ptr, v_ptr, lse_b_ptr, scale_ptr, out_ptr,
                         na, nb, D, diag,
                         HAS_U: tl.constexpr, HAS_V: tl.constexpr, HAS_DIAG: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         K_TILES: tl.constexpr, BLOCK_DV: tl.constexpr, SPLIT_P: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """out[rows, dv] = sum_j p_ij b[j, dv] for one row tile and one BLOCK_DV slice of D."""
    LOG2E: tl.constexpr = 1.4426950408889634
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dv0 = tl.program_id(1) * BLOCK_DV
    scale = tl.load(scale_ptr).to(tl.float32) * LOG2E
    a0 = _load_tile(a_ptr, rows, 0, na, D, BLOCK_K)
    if HAS_U:
        u = tl.load(u_ptr + rows, mask=rows < na, other=0.0)
        lse_a = tl.load(lse_a_ptr + rows, mask=rows < na, other=0.0) * LOG2E
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for n0 in range(0, nb, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
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
        if SPLIT_P:  # p = hi + lo with hi exact in the dot's operand type: p keeps ~2x its bits
            if bv.dtype == tl.bfloat16:
                hi = p.to(tl.bfloat16)
                lo = (p - hi.to(tl.float32)).to(tl.bfloat16)
            else:  # float16 b, exact in tf32: hi = p's leading 11 bits, exact in tf32
                bv = bv.to(tl.float32)
                hi = (p.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
                lo = p - hi
            acc = _dot(hi, bv, acc, PRECISION, UPCAST)
            acc = _dot(lo, bv, acc, PRECISION, UPCAST)
        else:
            acc = _dot(p, bv.to(tl.float32), acc, PRECISION, UPCAST)
    dv = dv0 + tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + dv[None, :], acc, mask=(rows < na)[:, None] & (dv < D)[None, :])


# ---- launchers -------------------------------------------------------------------------------

# TRITON_INTERPRET=1 at import made triton.jit build interpreted kernels (CPU tensors, numpy).
_INTERPRET = not isinstance(_lse_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation the launchers ask Triton for (Triton adds its own, per
    argument alignment: N or D not a multiple of 16 compiles separately)."""

    kernel: str  # "lse" or "weighted_sum"
    dtype: torch.dtype  # of a and b
    precision: str  # tl.dot's input_precision: _dot_precision(dtype, the caller's precision)
    d: int
    has_u: bool = False
    has_v: bool = False
    has_diag: bool = False


def launch_meta(v: Variant) -> dict:
    """The kernel's constexpr arguments and launch options for ``v``: what the launchers pass.

    Programs own BLOCK_M = 64 rows (N/64 programs: 128 for N = 8192, one wave on 132 SMs) and
    run as one warpgroup of 4 warps (with 8 warps on 64 rows Triton gave weighted_sum's two
    p @ b dots different accumulator layouts and converted between them every step; only
    weighted_sum at D > 256 keeps 8, which spilled less there). Scores
    run over K in BLOCK_K chunks; weighted_sum slices D into BLOCK_DV-wide output blocks, each
    recomputing the scores. Each setting is the largest for which ptxas reports no spills for
    any public variant on sm_90 (``triton_aot``; the table is in benchmarks/RESULTS.md), from
    the register report alone: none is timed on a GPU yet.

    - Tensor cores (tf32, bf16, fp16): BLOCK_K = D up to 256 (a's row tile loaded once per
      program), else 64. lse: 64-column tiles (32 for float32 or D > 256), 3 pipeline stages
      (2 for D > 256). weighted_sum: 32-column tiles, 2 stages, BLOCK_DV = D up to 256 (128
      for float32 and for D > 256). lse for float32 at D > 256 without pipelining.
    - "ieee" float32 (FMA): a tl.dot on CUDA cores keeps each thread's rows and columns of both
      operands over the whole K in registers, so K runs in 16-wide chunks and weighted_sum's
      p @ b over 16-column tiles, BLOCK_DV = 64.
    - D <= 256 not a multiple of 16 (row loads cannot be vectorised): weighted_sum without
      pipelining and BLOCK_DV <= 64 (32 for "ieee").
    - The interpreter costs ~2 ms per program and per loop step: 64 x 64 tiles, no pipelining.
    """
    d, lse = v.d, v.kernel == "lse"
    fp32, ieee = v.dtype == torch.float32, v.dtype == torch.float32 and v.precision == "ieee"
    wide, aligned = d > 256, d % 16 == 0
    block_k = 64 if wide else max(16, triton.next_power_of_2(d))
    block_dv, num_warps = 128 if wide else block_k, 4
    if _INTERPRET:
        block_n, num_stages = 64, 1
    elif ieee:
        block_k, block_n = 16, 32 if lse else 16
        block_dv, num_stages = (64, 2) if aligned else (32, 1)
        num_stages = 3 if lse else num_stages
    elif lse:
        block_n = 32 if fp32 or wide else 64
        num_stages = (1 if fp32 else 2) if wide else 3
    elif wide:
        block_n, num_warps, num_stages = 32, 8, 2
    else:
        block_n = 32
        block_dv, num_stages = (min(block_dv, 128 if fp32 else 256), 2) if aligned else (min(block_dv, 64), 1)
    meta = dict(HAS_DIAG=v.has_diag, BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=block_k, K_TILES=triton.cdiv(d, block_k),
                PRECISION=v.precision, UPCAST=_INTERPRET,
                num_warps=num_warps, num_stages=num_stages)
    if not lse:
        meta.update(HAS_U=v.has_u, HAS_V=v.has_v, BLOCK_DV=min(block_dv, max(16, triton.next_power_of_2(d))),
                    SPLIT_P=v.dtype != torch.float32)
    return meta


# The passes the public losses make. multipos_con_loss: lse without the diagonal, then one
# symmetric weighted_sum with both terms; multipos_clip_loss: lse of all pairs, then the rows'
# term and the columns' term (multipos_fused).
PUBLIC_PASSES = (
    dict(kernel="lse", has_diag=True),
    dict(kernel="weighted_sum", has_u=True, has_v=True, has_diag=True),
    dict(kernel="lse", has_diag=False),
    dict(kernel="weighted_sum", has_u=True, has_v=False, has_diag=False),
    dict(kernel="weighted_sum", has_u=False, has_v=True, has_diag=False),
)
PUBLIC_INPUTS = ((torch.float32, "tf32"), (torch.float32, "ieee"), (torch.bfloat16, "tf32"), (torch.float16, "tf32"))


def public_variants(widths=(64, 100, 128, 256, 1030)) -> list[Variant]:
    """Every Variant the public losses launch for features of these widths."""
    return [Variant(dtype=dtype, precision=precision, d=d, **p)
            for dtype, precision in PUBLIC_INPUTS for d in widths for p in PUBLIC_PASSES]


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
    meta = launch_meta(Variant("lse", a.dtype, _dot_precision(a.dtype, precision), d, has_diag=has_diag))
    _launchable(_lse_kernel)[(triton.cdiv(na, meta["BLOCK_M"]),)](a, b, scale, out, na, nb, d, diag, **meta)
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
    variant = Variant("weighted_sum", a.dtype, _dot_precision(a.dtype, precision), d, u is not None, v is not None,
                      has_diag)
    meta = launch_meta(variant)
    grid = (triton.cdiv(na, meta["BLOCK_M"]), triton.cdiv(d, meta["BLOCK_DV"]))
    _launchable(_weighted_sum_kernel)[grid](
        a, b, _f32(u), _f32(lse_a), _f32(v), _f32(lse_b), scale, out, na, nb, d, diag, **meta
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
