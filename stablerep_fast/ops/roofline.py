"""A performance model of the Triton loss kernels on Hopper (H200 SXM), checkable without a GPU.

    python -m stablerep_fast.ops.roofline     # every sm_90 launch of the public losses, estimated

For each kernel launch the public losses make (con loss: lse without the diagonal, then one
symmetric weighted_sum; clip loss, per direction: lse, then the rows' and the columns'
weighted_sum) at N = 8192 and 65536, D = 128 and 256, bfloat16 and float32 (tf32; "ieee" on
CUDA cores as well), it counts from the launchers' own tile settings (``multipos_triton.tiles``
and the column splits): the FLOPs executed (padding and repeated products included) and the
useful ones, exponentials, bytes from HBM and from L2; it takes registers, shared memory and
the matrix instructions from the ahead-of-time compile (``triton_aot``), derives programs per
SM, and estimates the time as

    t = max(t_compute, L2 bytes / L2 bandwidth, HBM bytes / HBM bandwidth) + launch
        [+ the partial results' sum when the columns are split, + launch]
    t_compute = (programs on the busiest SM) x per-program time, the per-program time being
        tensor FLOPs / (peak x tile efficiency) + max(exps / MUFU rate, FP32 ops / FP32 rate)
        with one program per SM (its warps run the products and the softmax in turn), or the
        max of the two with two or more (other programs' products overlap them).

The tile efficiency of a wgmma m64nNkK is min(1, tensor cycles / shared-memory cycles to read
its operands). The constants (``H200``) and the reasoning are in docs/roofline.md. Every time
printed is an estimate, unmeasured until a device run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import triton

from stablerep_fast.ops.multipos_triton import Variant, grid, kernel_precision, launch_meta, tiles


@dataclass(frozen=True)
class Chip:
    """The rates the model uses (per chip unless named per SM or per clock)."""

    name: str
    sms: int
    clock_hz: float
    # Dense matrix rate by operand type, FLOP/s ("fp32": CUDA-core FMAs, for "ieee").
    peak_flops: dict[str, float]
    # The tensor cores' FLOPs per clock per SM by operand type (for the tile efficiency).
    tensor_flops_per_clock: dict[str, int]
    hbm_bytes_per_s: float
    l2_bytes_per_s: float
    shared_bytes_per_clock: int  # per SM: what wgmma's operands are read at
    mufu_per_clock: int  # per SM: ex2.approx results
    fp32_per_clock: int  # per SM: FP32 add/multiply/FMA results
    shared_per_sm: int
    shared_reserved_per_program: int
    registers_per_sm: int
    max_warps_per_sm: int
    launch_s: float  # one kernel launch, back to back on a stream

    @property
    def mufu_per_s(self) -> float:
        return self.mufu_per_clock * self.sms * self.clock_hz

    @property
    def fp32_per_s(self) -> float:
        return self.fp32_per_clock * self.sms * self.clock_hz


H200 = Chip(
    name="H200 SXM (sm_90)",
    sms=132,
    clock_hz=1.98e9,  # the SM clock nvidia-smi read right after bf16 matrix products
    peak_flops={"bf16": 788e12, "fp16": 788e12, "tf32": 394e12, "fp32": 67e12},
    tensor_flops_per_clock={"bf16": 4096, "fp16": 4096, "tf32": 2048},
    hbm_bytes_per_s=4.3e12,
    l2_bytes_per_s=6.0e12,
    shared_bytes_per_clock=128,
    mufu_per_clock=16,
    fp32_per_clock=128,
    shared_per_sm=228 * 1024,
    shared_reserved_per_program=1024,
    registers_per_sm=65536,
    max_warps_per_sm=64,
    launch_s=3e-6,
)

# FP32-pipe operations per score element (counted from the kernels' loops; the mask of
# edge tiles, ~1/64 of them, is left out). lse: scale, running max, shift, sum.
# weighted_sum: scale; per term (u, v) shift, weight, add; rounding p to 16 bits (packed
# pairs): 0.5; p as hi + lo parts: 2.5 more (hi back to float32, subtract, round lo).
LSE_OPS = 4.0
WS_OPS, WS_OPS_PER_TERM, ROUND_16_OPS, SPLIT_OPS = 1.0, 3.0, 0.5, 2.5
# Of a legacy mma.sync's rate on Hopper (a lead; the kernels here compile to wgmma).
MMA_SYNC_EFFICIENCY = 0.5

NS = (8192, 65536)
DS = (128, 256)
# (dtype, the public precision): the loss configurations estimated.
INPUTS = ((torch.bfloat16, "tf32"), (torch.float32, "tf32"), (torch.float32, "ieee"))
# Products (N x N x D each) the loss needs at least, forward and backward. con: lse, then
# one symmetric pass (scores, p @ b). clip: two lse passes (rows, columns) and two passes
# of two products that take both directions' terms at once (the kernels can, the Function
# runs four: 10 products).
MINIMUM_PRODUCTS = {"con": 3, "clip": 6}


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a public loss: ``variant`` on [na, D] rows against [nb, D] columns."""

    loss: str  # "con" or "clip"
    phase: str  # "fwd" or "bwd"
    variant: Variant
    na: int
    nb: int


def loss_launches(loss: str, dtype: torch.dtype, precision: str, n: int, d: int) -> list[Launch]:
    """The kernel launches of one forward + backward of ``loss`` with N = n rows (and n columns
    for clip) of width d."""
    prec = kernel_precision(dtype, precision)
    if loss == "con":
        return [Launch(loss, "fwd", Variant("lse", dtype, prec, d, has_diag=True), n, n),
                Launch(loss, "bwd", Variant("weighted_sum", dtype, prec, d, True, True, True), n, n)]
    one_direction = [Launch(loss, "fwd", Variant("lse", dtype, prec, d), n, n),
                     Launch(loss, "bwd", Variant("weighted_sum", dtype, prec, d, has_u=True), n, n),
                     Launch(loss, "bwd", Variant("weighted_sum", dtype, prec, d, has_v=True), n, n)]
    return one_direction * 2  # image -> text, then text -> image


def operand_type(v: Variant) -> str:
    """The peak_flops key of ``v``'s products."""
    if v.dtype == torch.float32:
        return "fp32" if v.precision == "ieee" else "tf32"
    return "bf16" if v.dtype == torch.bfloat16 else "fp16"


def tile_efficiency(instruction: str, chip: Chip = H200) -> float:
    """The fraction of the tensor rate one matrix instruction sustains, from its shape:
    min(1, tensor cycles / cycles to read its shared-memory operands) for wgmma ("ss": A and B
    from shared memory, "rs": A from registers); MMA_SYNC_EFFICIENCY for mma.sync."""
    found = re.fullmatch(r"(wgmma|mma)\.m(\d+)n(\d+)k(\d+)\.(\w+?)(?:\.(ss|rs))?", instruction)
    if found is None:
        raise ValueError(f"not a matrix instruction: {instruction!r}")
    opcode, m, n, k, operand, a_from = found.groups()
    if opcode == "mma":
        return MMA_SYNC_EFFICIENCY
    m, n, k = int(m), int(n), int(k)
    size = {"bf16": 2, "f16": 2, "tf32": 4}[operand]
    tensor_cycles = 2 * m * n * k / chip.tensor_flops_per_clock["tf32" if operand == "tf32" else "bf16"]
    shared_bytes = n * k * size + (m * k * size if a_from == "ss" else 0)
    return min(1.0, tensor_cycles / (shared_bytes / chip.shared_bytes_per_clock))


def _product_efficiency(instructions: tuple[str, ...], a_from: str, n: int) -> float:
    """Efficiency of the product whose wgmma has A from ``a_from`` and N = ``n`` (the compile
    may issue it in narrower pieces: the narrowest such instruction counts); 1 without tensor
    cores (the "ieee" products run at the CUDA cores' peak)."""
    wgmma = [i for i in instructions if i.startswith("wgmma.") and i.endswith("." + a_from)]
    if wgmma:
        widths = [(int(re.search(r"n(\d+)k", i).group(1)), i) for i in wgmma]
        fitting = [w for w in widths if w[0] <= n] or widths
        return tile_efficiency(min(fitting)[1])
    mma = [i for i in instructions if i.startswith("mma.")]
    return tile_efficiency(mma[0]) if mma else 1.0


@dataclass(frozen=True)
class Estimate:
    """The model's account of one launch (FLOPs, bytes and times for the whole launch)."""

    launch: Launch
    registers: int
    shared: int
    instructions: tuple[str, ...]
    programs: int
    splits: int
    programs_per_sm: int
    executed_flops: float
    useful_flops: float
    exps: float
    fp32_ops: float
    hbm_bytes: float
    l2_bytes: float
    t_tensor: float  # on the busiest SM, as if alone
    t_softmax: float  # exps and FP32 ops on the busiest SM, as if alone
    t_compute: float
    t_l2: float
    t_hbm: float
    t_combine: float
    seconds: float
    peak: float = field(repr=False)

    @property
    def bound(self) -> str:
        """Which term sets the time."""
        terms = {"compute": self.t_compute, "L2": self.t_l2, "HBM": self.t_hbm}
        return max(terms, key=terms.get)

    @property
    def fraction(self) -> float:
        """Useful FLOPs per second over the peak of the launch's operand type."""
        return self.useful_flops / self.seconds / self.peak


def programs_per_sm(registers: int, shared: int, num_warps: int, chip: Chip = H200) -> int:
    """Programs one SM holds at once: registers (allocated per warp in 256-register units),
    shared memory (plus the runtime's reservation per program) and warps all have to fit."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_registers = chip.registers_per_sm // per_warp // num_warps
    by_shared = chip.shared_per_sm // (shared + chip.shared_reserved_per_program)
    return max(0, min(by_registers, by_shared, chip.max_warps_per_sm // num_warps))


def estimate(launch: Launch, resources, chip: Chip = H200) -> Estimate:
    """The model for ``launch`` given its kernel's ``triton_aot.Resources`` (sm_90)."""
    v, na, nb = launch.variant, launch.na, launch.nb
    t, meta = tiles(v, 90), launch_meta(v, 90, interpret=False)
    lse = v.kernel == "lse"
    size = v.dtype.itemsize
    k_tiles = meta["K_TILES"]
    slices = 1 if lse else triton.cdiv(v.d, t.block_dv)
    (row_tiles, splits, _), _ = grid(na, nb, meta, chip.sms * t.programs_per_sm, slices)
    programs = row_tiles * splits * slices
    # Elements of the score matrix computed, padding and output slices included.
    elements = row_tiles * t.block_m * triton.cdiv(nb, t.block_n) * t.block_n * slices
    steps = elements // (t.block_m * t.block_n)  # loop iterations, over all programs
    score_flops = 2.0 * elements * k_tiles * t.block_k
    terms = 1 if lse else int(v.has_u) + int(v.has_v)
    split_p = not lse and meta["SPLIT_P"]
    pv_flops = 0.0 if lse else 2.0 * elements * t.block_dv * (2 if split_p else 1)
    useful = 2.0 * na * nb * v.d * (1 if lse else 2)
    exps = float(elements * terms)
    per_element = LSE_OPS if lse else (
        WS_OPS + WS_OPS_PER_TERM * terms + (ROUND_16_OPS if size == 2 and not split_p else 0.0)
        + (SPLIT_OPS if split_p else 0.0))
    fp32_ops = elements * per_element

    # Bytes. A program reads its row tile once (K in one chunk) or per column tile, and per
    # column tile the columns' features (again for an output slice other than the score
    # chunk) and the column terms; it writes its partial [BLOCK_M] or [BLOCK_M, BLOCK_DV].
    reuse_b = not lse and k_tiles == 1 and t.block_dv == t.block_k
    row_tile_bytes = t.block_m * t.block_k * k_tiles * size
    step_bytes = t.block_n * t.block_k * k_tiles * size
    if not lse:
        step_bytes += (0 if reuse_b else t.block_n * t.block_dv * size) + (8 * t.block_n if v.has_v else 0)
    out_bytes = 4.0 * splits * na * (1 if lse else v.d)
    row_vector_bytes = 0.0 if lse else 8.0 * na * int(v.has_u) * splits * slices
    a_reads = programs * row_tile_bytes if k_tiles == 1 else steps * t.block_m * t.block_k * k_tiles * size
    l2_bytes = a_reads + steps * step_bytes + out_bytes + row_vector_bytes
    per_sm = programs_per_sm(resources.registers, resources.shared, t.num_warps, chip)
    if per_sm == 0:
        raise ValueError(f"{v}: {resources.registers} registers x {t.num_warps} warps or "
                         f"{resources.shared} B of shared memory do not fit an SM")
    # Programs running at once walk the columns in step, so b comes from HBM once per wave.
    waves = triton.cdiv(programs, chip.sms * per_sm)
    hbm_bytes = (na * v.d * size + waves * nb * v.d * size + out_bytes + row_vector_bytes
                 + (8.0 * nb * waves if v.has_v else 0.0))

    peak = chip.peak_flops[operand_type(v)]
    on_busiest = triton.cdiv(programs, chip.sms)
    share = on_busiest / programs  # of the launch's work done by the busiest SM
    score_eff = _product_efficiency(resources.mma, "ss", t.block_n)
    pv_eff = _product_efficiency(resources.mma, "rs", t.block_dv)
    sm_peak = peak / chip.sms
    t_tensor = share * (score_flops / (sm_peak * score_eff) + pv_flops / (sm_peak * pv_eff))
    t_softmax = share * chip.sms * max(exps / chip.mufu_per_s, fp32_ops / chip.fp32_per_s)
    overlap = min(per_sm, on_busiest) >= 2
    t_compute = max(t_tensor, t_softmax) if overlap else t_tensor + t_softmax
    t_l2 = l2_bytes / chip.l2_bytes_per_s
    t_hbm = hbm_bytes / chip.hbm_bytes_per_s
    # Split columns: the partial results are combined by one more kernel (read all, write one).
    t_combine = (out_bytes * (1 + 1 / splits) / chip.hbm_bytes_per_s + chip.launch_s) if splits > 1 else 0.0
    seconds = max(t_compute, t_l2, t_hbm) + chip.launch_s + t_combine
    return Estimate(launch, resources.registers, resources.shared, resources.mma, programs, splits, per_sm,
                    score_flops + pv_flops, useful, exps, fp32_ops, hbm_bytes, l2_bytes, t_tensor, t_softmax,
                    t_compute, t_l2, t_hbm, t_combine, seconds, peak)


def configurations() -> list[tuple[str, torch.dtype, str, int, int]]:
    """(loss, dtype, precision, N, D) of every configuration the table covers."""
    return [(loss, dtype, precision, n, d) for loss in ("con", "clip") for dtype, precision in INPUTS
            for n in NS for d in DS]


def variants() -> list[Variant]:
    """The kernel variants the configurations launch (each compiled once)."""
    return list(dict.fromkeys(launch.variant for config in configurations() for launch in loss_launches(*config)))


def estimate_all(resources: dict[Variant, object], chip: Chip = H200) -> list[list[Estimate]]:
    """Per configuration, the estimates of its launches (``resources``: sm_90 compile results
    by variant)."""
    return [[estimate(launch, resources[launch.variant], chip) for launch in loss_launches(*config)]
            for config in configurations()]


def _name(dtype: torch.dtype, precision: str) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, precision if precision == "ieee" else "tf32")


def format_table(estimates: list[list[Estimate]], chip: Chip = H200) -> str:
    """Per launch: counts, resources and the estimate; per configuration: forward + backward."""
    lines = [f"Estimated on {chip.name}: peak {chip.peak_flops['bf16'] / 1e12:.0f} (bf16) / "
             f"{chip.peak_flops['tf32'] / 1e12:.0f} (tf32) / {chip.peak_flops['fp32'] / 1e12:.0f} (fp32 FMA) TFLOP/s, "
             f"HBM {chip.hbm_bytes_per_s / 1e12:.1f} TB/s, L2 {chip.l2_bytes_per_s / 1e12:.1f} TB/s, "
             f"{chip.mufu_per_s / 1e12:.1f} T exp/s. Unmeasured until a device run.",
             f"{'loss':<5}{'in':<5}{'N':>6}{'D':>4}  {'kernel':<15}{'GFLOP exec':>11}{'useful':>8}"
             f"{'HBM MB':>8}{'L2 MB':>8}{'regs':>5}{'smem KB':>8}{'prog':>6}{'/SM':>4}{'split':>6}"
             f"  {'us':>7} {'bound':<8}{'of peak':>7}"]
    for per_config, config in zip(estimates, configurations()):
        loss, dtype, precision, n, d = config
        head = f"{loss:<5}{_name(dtype, precision):<5}{n:>6}{d:>4}"
        for e in per_config:
            v = e.launch.variant
            kernel = "lse" if v.kernel == "lse" else "ws " + ("u" if v.has_u else "") + ("v" if v.has_v else "")
            kernel += "+diag" if v.has_diag else ""
            lines.append(f"{head}  {kernel:<15}{e.executed_flops / 1e9:>11.1f}{e.useful_flops / 1e9:>8.1f}"
                         f"{e.hbm_bytes / 1e6:>8.0f}{e.l2_bytes / 1e6:>8.0f}{e.registers:>5}"
                         f"{e.shared / 1024:>8.0f}{e.programs:>6}{e.programs_per_sm:>4}{e.splits:>6}"
                         f"  {e.seconds * 1e6:>7.1f} {e.bound:<8}{e.fraction:>7.0%}")
        executed = sum(e.executed_flops for e in per_config)
        lines.append(f"{head}  {'fwd+bwd':<15}{executed / 1e9:>11.1f}{minimum_flops(per_config) / 1e9:>8.1f}"
                     f"{sum(e.hbm_bytes for e in per_config) / 1e6:>8.0f}"
                     f"{sum(e.l2_bytes for e in per_config) / 1e6:>8.0f}{'':>29}"
                     f"  {sum(e.seconds for e in per_config) * 1e6:>7.1f} {'':<8}{fwd_bwd_fraction(per_config):>7.0%}")
    return "\n".join(lines)


def minimum_flops(per_config: list[Estimate]) -> float:
    """The FLOPs one forward + backward of the loss needs at least (MINIMUM_PRODUCTS)."""
    launch = per_config[0].launch
    return MINIMUM_PRODUCTS[launch.loss] * 2.0 * launch.na * launch.nb * launch.variant.d


def fwd_bwd_fraction(per_config: list[Estimate]) -> float:
    """The loss's minimum FLOPs per second of its launches' estimated time, over the peak."""
    return minimum_flops(per_config) / sum(e.seconds for e in per_config) / per_config[0].peak


def main() -> None:
    from stablerep_fast.ops.triton_aot import compile_all

    compiled = compile_all(variants(), archs=(90,), sizes=(NS[0],))
    print(format_table(estimate_all({r.variant: r for r in compiled})), flush=True)


if __name__ == "__main__":
    main()
