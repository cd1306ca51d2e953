"""Triton backend of the multi-positive cross-entropy: the two kernels of ``multipos_fused``.

    lse(a, b, scale, diag, precision)                               -> [na] float32
    weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision)  -> [na, D] float32

Each program owns a BLOCK_M row tile of ``a`` and walks the column tiles of one range of
``b`` (the columns are split into a few ranges when row tiles alone would leave SMs idle; the
launchers combine the partial results in a fixed order), recomputing s = scale * a_tile @
b_tile^T with tl.dot (float32 accumulation); nothing [na, nb] is stored, no atomics are used,
so results are deterministic. ``lse`` keeps an online log-sum-exp in base 2; ``weighted_sum``
forms p = u_i exp(s - lse_a_i) + v_j exp(s - lse_b_j) and accumulates p @ b_tile into a
[BLOCK_M, BLOCK_DV] tile. The excluded pair (i, i + diag) and padding columns are masked out,
in the tiles that hold them only; lse entries may be +inf. Tile shapes: ``tiles`` (for Hopper,
from the performance model of ``ops.roofline``, docs/roofline.md).

Inputs are float32, float16 or bfloat16 (a and b alike). Float32 dots run in the chosen
``precision`` ("tf32" or "ieee"). With bfloat16 inputs, p is rounded to bfloat16 once for
p @ b by default (2^-9 relative: three products per loss, the minimum); ``precision="ieee"``
keeps most of p's float32 accuracy by splitting it into two bfloat16 parts, hi + lo, each
multiplied on the tensor cores (a fourth product). Float16 always splits, into tf32 parts
against b upcast to float32 (b is exact in tf32, and float16 parts would flush the ~1/N
weights). One tf32 part alone put 2^-10 of the largest entry into the float16 gradient at
N = 8192, tau = 0.05 (emulated in the tests).

Both kernels are registered torch ops (``stablerep_fast::triton_lse``,
``stablerep_fast::triton_weighted_sum``) so torch.compile traces them. With
TRITON_INTERPRET=1 they run on CPU tensors through Triton's interpreter (the tests).
"""

from __future__ import annotations

import functools
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
def _rounded(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """float32 ``x`` rounded to nearest (ties to even) in ``dtype``, as the GPU's conversion
    does; the interpreter's own conversion truncates, so there the bits are rounded first."""
    if UPCAST and dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


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
def _column_range(nb, split_cols):
    """The columns [begin, end) of this program's split (program_id(1))."""
    begin = tl.program_id(1) * split_cols
    return begin, tl.minimum(begin + split_cols, nb)


@triton.jit
def _edge_tile(r0, n0, nb, diag, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_DIAG: tl.constexpr):
    """Whether column tile n0 of row tile r0 holds padding or the excluded pair (i, i + diag):
    only such tiles pay for the mask."""
    edge = n0 + BLOCK_N > nb
    if HAS_DIAG:
        edge = edge | ((n0 < r0 + BLOCK_M + diag) & (n0 + BLOCK_N > r0 + diag))
    return edge


@triton.jit
def _kept(rows, cols, nb, diag, HAS_DIAG: tl.constexpr):
    """[rows, cols] mask of the pairs that count: real columns, minus (i, i + diag)."""
    keep = cols[None, :] < nb
    if HAS_DIAG:
        keep = keep & (cols[None, :] - rows[:, None] != diag)
    return keep


@triton.jit
def _lse_kernel(a_ptr, b_ptr, scale_ptr, lse_ptr, na, nb, D, diag, split_cols,
                HAS_DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """lse_i = log sum_j exp(s_ij) over one split's columns for one row tile, as an online
    base-2 log-sum-exp; written to row program_id(1) of lse [splits, na]."""
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    r0 = tl.program_id(0) * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    begin, end = _column_range(nb, split_cols)
    scale = tl.load(scale_ptr).to(tl.float32) * LOG2E
    a0 = _load_tile(a_ptr, rows, 0, na, D, BLOCK_K)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(begin, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        b0 = _load_tile(b_ptr, cols, 0, nb, D, BLOCK_K)
        s = _scores(a0, b0, a_ptr, b_ptr, rows, cols, na, nb, D, scale, BLOCK_K, K_TILES, PRECISION, UPCAST)
        if _edge_tile(r0, n0, nb, diag, BLOCK_M, BLOCK_N, HAS_DIAG):
            s = tl.where(_kept(rows, cols, nb, diag, HAS_DIAG), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing kept yet
        total = total * tl.exp2(m - shift) + tl.sum(tl.exp2(s - shift[:, None]), 1)
        m = m_new
    out = lse_ptr + tl.program_id(1).to(tl.int64) * na + rows
    tl.store(out, (m + tl.log2(total)) * LN2, mask=rows < na)


@triton.jit
def _weighted_sum_kernel(a_ptr, b_ptr, u_ptr, lse_a_ptr, v_ptr, lse_b_ptr, scale_ptr, out_ptr,
                         na, nb, D, diag, split_cols,
                         HAS_U: tl.constexpr, HAS_V: tl.constexpr, HAS_DIAG: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         K_TILES: tl.constexpr, BLOCK_DV: tl.constexpr, SPLIT_P: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """out[rows, dv] = sum_j p_ij b[j, dv] over one split's columns for one row tile and one
    BLOCK_DV slice of D (program_id(2)); written to slice program_id(1) of out [splits, na, D]."""
    LOG2E: tl.constexpr = 1.4426950408889634
    r0 = tl.program_id(0) * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    begin, end = _column_range(nb, split_cols)
    dv0 = tl.program_id(2) * BLOCK_DV
    scale = tl.load(scale_ptr).to(tl.float32) * LOG2E
    a0 = _load_tile(a_ptr, rows, 0, na, D, BLOCK_K)
    if HAS_U:
        u = tl.load(u_ptr + rows, mask=rows < na, other=0.0)
        lse_a = tl.load(lse_a_ptr + rows, mask=rows < na, other=0.0) * LOG2E
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for n0 in range(begin, end, BLOCK_N):
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
        # Padding columns meet zero rows of b; the excluded pair, and a row with nothing kept
        # (lse -inf: exp2(s + inf) is inf), need where, not a -inf score. Both live in edge tiles.
        if _edge_tile(r0, n0, nb, diag, BLOCK_M, BLOCK_N, HAS_DIAG):
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
        else:  # p rounded once to b's type (float32 b: tf32 or exact, as PRECISION says)
            acc = _dot(_rounded(p, bv.dtype, UPCAST), bv, acc, PRECISION, UPCAST)
    dv = dv0 + tl.arange(0, BLOCK_DV)
    out = out_ptr + tl.program_id(1).to(tl.int64) * na * D + rows.to(tl.int64)[:, None] * D + dv[None, :]
    tl.store(out, acc, mask=(rows < na)[:, None] & (dv < D)[None, :])


# ---- launchers -------------------------------------------------------------------------------

# TRITON_INTERPRET=1 at import made triton.jit build interpreted kernels (CPU tensors, numpy).
_INTERPRET = not isinstance(_lse_kernel, triton.runtime.JITFunction)


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation the launchers ask Triton for (Triton adds its own, per
    argument alignment: N or D not a multiple of 16 compiles separately)."""

    kernel: str  # "lse" or "weighted_sum"
    dtype: torch.dtype  # of a and b
    precision: str  # kernel_precision(dtype, the caller's precision)
    d: int
    has_u: bool = False
    has_v: bool = False
    has_diag: bool = False


def kernel_precision(dtype: torch.dtype, precision: str) -> str:
    """The precision a kernel specialises on: the caller's for float32 (tf32 or exact dots) and
    bfloat16 ("ieee": p @ b in two parts); float16 has one mode (see the module docstring)."""
    return "tf32" if dtype == torch.float16 else precision


@dataclass(frozen=True)
class Tiles:
    """A kernel's tile shape and launch options."""

    block_m: int  # rows per program
    block_n: int  # columns per loop step
    block_k: int  # features per score product (D up to 256: all of them, the row tile loaded once)
    block_dv: int  # output features per program (weighted_sum)
    num_warps: int
    num_stages: int
    programs_per_sm: int = 1  # held at once, by its registers and shared memory (checked by triton_aot)


# Hopper (sm_90) tensor-core tiles for D <= 256 a multiple of 16, by (kernel, inputs, D > 128):
# rows, columns per step, warps, pipeline stages, programs per SM. "split": weighted_sum with p
# in two parts (float16; bfloat16 with "ieee"). Each is the fastest for the model of
# ops.roofline (estimates at N = 8192 and 65536; benchmarks/RESULTS.md) among the settings
# ptxas compiles without spills and at their programs per SM under Triton 3.6 and 3.8; where
# the model ties, the deeper pipeline (latency the model does not count).
_HOPPER_TILES = {
    ("lse", "bf16", False): (256, 64, 8, 2, 2),
    ("lse", "bf16", True): (128, 64, 8, 1, 2),
    ("lse", "fp16", False): (128, 64, 8, 2, 2),  # 256 rows: 167 registers, one program per SM
    ("lse", "fp16", True): (128, 64, 8, 1, 2),
    ("lse", "fp32", False): (128, 64, 8, 1, 2),
    ("lse", "fp32", True): (128, 64, 8, 1, 1),
    ("weighted_sum", "bf16", False): (64, 64, 4, 3, 2),
    ("weighted_sum", "bf16", True): (64, 64, 4, 2, 2),
    ("weighted_sum", "split", False): (64, 32, 4, 3, 2),  # p's two parts: 64 columns spill
    ("weighted_sum", "split", True): (64, 32, 4, 3, 2),
    ("weighted_sum", "fp32", False): (64, 32, 4, 2, 2),  # 64 columns spill on Triton 3.6
    ("weighted_sum", "fp32", True): (64, 64, 8, 1, 1),
}


def tiles(v: Variant, arch: int = 90, interpret: bool = False) -> Tiles:
    """The tile shape ``v`` launches with on sm_``arch``, or under Triton's interpreter.

    Hopper (sm_90), tensor cores, D <= 256 a multiple of 16 (what StableRep runs): every
    program keeps its whole row tile [BLOCK_M, D] and, in weighted_sum, its whole [BLOCK_M, D]
    float32 accumulator on chip, so no product is recomputed per output slice, and walks the
    columns in 64-wide steps (m64n64 score products, the narrowest that wgmma reads from
    shared memory at full rate, docs/roofline.md) where that does not spill, else 32-wide
    ones. Where registers and shared memory allow, two programs share an SM, so that one's
    products overlap the other's exponentials; lse, which keeps no accumulator, takes 128 or
    256 rows per program (fewer L2 reads of b). Table ``_HOPPER_TILES``; none is timed on a
    GPU yet.

    Elsewhere (sm_80, "ieee", D > 256 or not a multiple of 16) programs own 64 rows as one
    warpgroup, with settings read off ptxas's register report alone (none spills on sm_80 or
    sm_90, ``triton_aot``): BLOCK_K = D up to 256, else 64 (weighted_sum then slices D into
    128-wide outputs, each recomputing the scores); "ieee" float32 on CUDA cores in 16-wide K
    chunks, p @ b on 16-column steps into 128-wide output slices (tl.dot keeps both operands'
    rows in registers; for D not a multiple of 16, 16-wide slices in programs of 2 warps); D
    not a multiple of 16 (row loads cannot be vectorised) unpipelined, with narrower output
    slices; on sm_80, narrower column steps or fewer stages where D > 256
    or p comes in two parts. The interpreter (~2 ms per program and loop step) gets 64 x 64
    tiles, unpipelined.
    """
    d, lse = v.d, v.kernel == "lse"
    fp32 = v.dtype == torch.float32
    ieee = fp32 and v.precision == "ieee"
    wide, aligned = d > 256, d % 16 == 0
    block_k = 64 if wide else max(16, triton.next_power_of_2(d))
    if interpret:
        return Tiles(64, 64, block_k, 128 if wide else block_k, 4, 1)
    split_p = not lse and (v.dtype == torch.float16 or (v.dtype == torch.bfloat16 and v.precision == "ieee"))
    hopper = arch >= 90
    if hopper and not ieee and not wide and aligned:
        inputs = "split" if split_p else {torch.float32: "fp32", torch.float16: "fp16"}.get(v.dtype, "bf16")
        block_m, block_n, num_warps, num_stages, per_sm = _HOPPER_TILES[(v.kernel, inputs, d > 128)]
        return Tiles(block_m, block_n, block_k, block_k, num_warps, num_stages, per_sm)
    block_dv, num_warps = 128 if wide else block_k, 4
    if ieee:
        block_k = 16
        if lse:
            block_n, num_stages = 32, 2 if wide else 3
        else:
            block_n = 16
            block_dv, num_stages, num_warps = (128, 2, 4) if aligned else (16, 1, 2)
    elif lse:
        block_n = 16 if wide and not hopper else (32 if fp32 or wide else 64)
        num_stages = (1 if fp32 else 2) if wide else 3
    elif wide:
        block_n, num_warps, num_stages = 32, 8, 2 if hopper else 1
    else:
        block_n = 16 if split_p and d > 128 and not hopper else 32
        block_dv, num_stages = (min(block_dv, 128 if fp32 else 256), 2) if aligned else (min(block_dv, 64), 1)
    return Tiles(64, block_n, block_k, min(block_dv, max(16, triton.next_power_of_2(d))), num_warps, num_stages)


def launch_meta(v: Variant, arch: int = 90, interpret: bool = False) -> dict:
    """The kernel's constexpr arguments and launch options for ``v`` on sm_``arch`` (or the
    interpreter): what the launchers pass (tile shapes from ``tiles``)."""
    t = tiles(v, arch, interpret)
    fp32 = v.dtype == torch.float32
    meta = dict(HAS_DIAG=v.has_diag, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k,
                K_TILES=triton.cdiv(v.d, t.block_k), PRECISION=v.precision if fp32 else "tf32", UPCAST=interpret,
                num_warps=t.num_warps, num_stages=t.num_stages)
    if v.kernel == "weighted_sum":
        meta.update(HAS_U=v.has_u, HAS_V=v.has_v, BLOCK_DV=t.block_dv,
                    SPLIT_P=v.dtype == torch.float16 or (v.dtype == torch.bfloat16 and v.precision == "ieee"))
    return meta


# Programs the interpreter pretends run at once: its tests then cover the column splits.
_INTERPRETER_SLOTS = 4


def column_splits(row_tiles: int, col_tiles: int, slots: int, max_splits: int = 8) -> int:
    """How many column ranges each row tile's work is split into, so that row tiles x splits
    programs fill ``slots`` (multiprocessors) in whole waves: a row tile per program alone
    leaves SMs idle when N / BLOCK_M is under their count (N = 8192 in 128-row tiles is 64
    programs for 132 SMs). A larger split is taken only when it fills the waves 5 points
    better: each split adds a partial result [na] or [na, D] that is summed afterwards."""

    def filled(splits: int) -> float:
        programs = row_tiles * splits
        return programs / (triton.cdiv(programs, slots) * slots)

    best = 1
    for splits in range(2, min(col_tiles, max_splits) + 1):
        if filled(splits) > filled(best) + 0.05:
            best = splits
    return best


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
PUBLIC_INPUTS = ((torch.float32, "tf32"), (torch.float32, "ieee"), (torch.bfloat16, "tf32"),
                 (torch.bfloat16, "ieee"), (torch.float16, "tf32"))


def public_variants(widths=(100, 128, 256, 1030)) -> list[Variant]:
    """Every Variant the public losses launch for features of these widths (by default one of
    each tile regime: unaligned, 128, 256 and wide; 64 compiles as 128 does, on smaller tiles)."""
    variants = [Variant(dtype=dtype, precision=kernel_precision(dtype, precision), d=d, **p)
                for dtype, precision in PUBLIC_INPUTS for d in widths for p in PUBLIC_PASSES]
    return list(dict.fromkeys(variants))


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


# torch >= 2.6 traces into compiled kernels (triton_op); torch 2.4/2.5 and interpreted kernels
# (which wrap_triton cannot trace) get opaque custom ops with fake implementations.
_TRACEABLE = hasattr(torch.library, "triton_op") and not _INTERPRET
_launchable = torch.library.wrap_triton if _TRACEABLE else lambda kernel: kernel


@functools.lru_cache(maxsize=None)
def _device(device: torch.device) -> tuple[int, int]:
    """(compute capability as 10 * major + minor, multiprocessors) of ``device``; under the
    interpreter sm_90 and _INTERPRETER_SLOTS."""
    if _INTERPRET or device.type != "cuda":
        return 90, _INTERPRETER_SLOTS
    props = torch.cuda.get_device_properties(device)
    return 10 * props.major + props.minor, props.multi_processor_count


def grid(na: int, nb: int, meta: dict, slots: int, slices: int = 1) -> tuple[tuple[int, int, int], int]:
    """The launch grid (row tiles, column splits, output slices) for ``slots`` programs at
    once, and the columns per split."""
    row_tiles, col_tiles = triton.cdiv(na, meta["BLOCK_M"]), triton.cdiv(nb, meta["BLOCK_N"])
    splits = column_splits(row_tiles * slices, col_tiles, slots)
    split_cols = max(1, triton.cdiv(col_tiles, splits)) * meta["BLOCK_N"]
    return (row_tiles, max(1, triton.cdiv(nb, split_cols)), slices), split_cols


def _lse(a, b, scale, diag, precision):
    """lse_i = log sum_j exp(scale * a_i . b_j) over j != i + diag: [na] float32."""
    _check(a, b, scale, precision)
    has_diag, diag = diag is not None, diag or 0
    a, b = a.contiguous(), b.contiguous()
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    arch, sms = _device(a.device)
    variant = Variant("lse", a.dtype, kernel_precision(a.dtype, precision), d, has_diag=has_diag)
    meta = launch_meta(variant, arch, _INTERPRET)
    shape, split_cols = grid(na, nb, meta, sms * tiles(variant, arch, _INTERPRET).programs_per_sm)
    splits = shape[1]  # one partial lse per split, combined below (a fixed order: deterministic)
    out = torch.empty((splits, na) if splits > 1 else (na,), dtype=torch.float32, device=a.device)
    _launchable(_lse_kernel)[shape[:2]](a, b, scale, out, na, nb, d, diag, split_cols, **meta)
    return out if splits == 1 else torch.logsumexp(out, 0)


def _weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision):
    """out_i = sum_j (u_i exp(s_ij - lse_a_i) + v_j exp(s_ij - lse_b_j)) b_j: [na, D] float32.

    s_ij = scale * a_i . b_j; j = i + diag is skipped; u/lse_a (v/lse_b) are float32 [na]
    ([nb]) and both None when that term is absent.
    """
    _check(a, b, scale, precision)
    has_diag, diag = diag is not None, diag or 0
    a, b = a.contiguous(), b.contiguous()
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    arch, sms = _device(a.device)
    variant = Variant("weighted_sum", a.dtype, kernel_precision(a.dtype, precision), d, u is not None,
                      v is not None, has_diag)
    meta = launch_meta(variant, arch, _INTERPRET)
    shape, split_cols = grid(na, nb, meta, sms * tiles(variant, arch, _INTERPRET).programs_per_sm,
                             triton.cdiv(d, meta["BLOCK_DV"]))
    splits = shape[1]  # one partial sum per split, added below (a fixed order: deterministic)
    out = torch.empty((splits, na, d) if splits > 1 else (na, d), dtype=torch.float32, device=a.device)
    _launchable(_weighted_sum_kernel)[shape](
        a, b, _f32(u), _f32(lse_a), _f32(v), _f32(lse_b), scale, out, na, nb, d, diag, split_cols, **meta
    )
    return out if splits == 1 else out.sum(0)


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
