"""The performance model's arithmetic, by hand on one configuration: the con loss in bfloat16 at
N = 8192, D = 256 on an H200 (test_triton_aot runs it on every configuration from real
compiles)."""

import math

import pytest
import torch

pytest.importorskip("triton")

from stablerep_fast.ops import roofline  # noqa: E402
from stablerep_fast.ops.multipos_triton import tiles  # noqa: E402
from stablerep_fast.ops.roofline import H200, Launch, estimate, programs_per_sm, tile_efficiency  # noqa: E402
from stablerep_fast.ops.triton_aot import Resources  # noqa: E402

N, D = 8192, 256


def _resources(variant, registers, shared, mma):
    return Resources(variant, N, 90, registers, 0, 0, 0, shared, 0.0, mma)


def test_tile_efficiency_from_the_operand_bytes():
    # m64n64k16 bf16, both operands in shared memory: 2*64*64*16 / 4096 = 32 tensor cycles;
    # (64*16 + 64*16) * 2 bytes / 128 per cycle = 32 shared-memory cycles.
    assert tile_efficiency("wgmma.m64n64k16.bf16.ss") == 1.0
    # n32: 16 tensor cycles against (2048 + 1024) / 128 = 24.
    assert tile_efficiency("wgmma.m64n32k16.bf16.ss") == pytest.approx(16 / 24)
    # A from registers: only B's 256*16*2 bytes (64 cycles) against 128 tensor cycles.
    assert tile_efficiency("wgmma.m64n256k16.bf16.rs") == 1.0
    # tf32 at half the rate with twice the bytes: the same ratios.
    assert tile_efficiency("wgmma.m64n32k8.tf32.ss") == pytest.approx(16 / 24)
    assert tile_efficiency("mma.m16n8k16.bf16") == roofline.MMA_SYNC_EFFICIENCY


def test_programs_per_sm_from_registers_and_shared_memory():
    assert programs_per_sm(128, 96 * 1024, 8) == 2  # 8 warps x 4096 registers: half the file
    assert programs_per_sm(129, 40 * 1024, 8) == 1  # 136 registers a thread (allocation unit 8)
    assert programs_per_sm(64, 150 * 1024, 4) == 1  # shared memory
    assert programs_per_sm(32, 1024, 32) == 2  # warps: 64 per SM


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_con_loss_counts_by_hand(precision):
    lse_launch, ws_launch = roofline.loss_launches("con", torch.bfloat16, precision, N, D)
    assert (lse_launch.variant.kernel, ws_launch.variant.kernel) == ("lse", "weighted_sum")
    t_lse, t_ws = tiles(lse_launch.variant), tiles(ws_launch.variant)
    lse = estimate(lse_launch, _resources(lse_launch.variant, 92, 96 * 1024, ("wgmma.m64n64k16.bf16.ss",)))
    ws = estimate(ws_launch, _resources(ws_launch.variant, 252, 96 * 1024,
                                        ("wgmma.m64n256k16.bf16.rs", "wgmma.m64n64k16.bf16.ss")))

    # FLOPs: one N x N x D product forward, two backward (scores, p @ b); "ieee" keeps p as
    # two bf16 parts, a third product. N is a multiple of every tile: nothing is padded.
    product = 2 * N * N * D
    assert lse.useful_flops == lse.executed_flops == product
    assert ws.useful_flops == 2 * product
    assert ws.executed_flops == (3 if precision == "ieee" else 2) * product
    assert lse.exps == N * N and ws.exps == 2 * N * N  # one exp per term (u and v) per pair

    # L2: each program reads its row tile once and every column of its split; outputs are
    # float32 partials, one per split (combined afterwards).
    row_tiles = N // t_lse.block_m
    assert lse.programs == row_tiles * lse.splits
    assert lse.l2_bytes == (lse.programs * t_lse.block_m * D * 2 + row_tiles * N * D * 2 + 4 * lse.splits * N)
    ws_row_tiles = N // t_ws.block_m
    # ... plus, per column step, v and lse_b (8 bytes a column) and per program u and lse_a.
    assert ws.l2_bytes == (ws.programs * t_ws.block_m * D * 2 + ws_row_tiles * N * (D * 2 + 8)
                           + 4 * ws.splits * N * D + 8 * ws.splits * N)
    # HBM: the inputs once, b once per wave of programs, the partial outputs.
    waves = math.ceil(lse.programs / (H200.sms * lse.programs_per_sm))
    assert lse.hbm_bytes == N * D * 2 + waves * N * D * 2 + 4 * lse.splits * N
    assert lse.programs_per_sm == 2 and ws.programs_per_sm == 2

    # Time: compute on the busiest SM (two programs at once: products and exps overlap).
    busiest = math.ceil(lse.programs / H200.sms)
    t_tensor = busiest * (product / lse.programs) / (H200.peak_flops["bf16"] / H200.sms)
    assert lse.t_tensor == pytest.approx(t_tensor)
    t_exp = busiest * (N * N / lse.programs) / (H200.mufu_per_clock * H200.clock_hz)
    t_alu = busiest * (N * N * roofline.LSE_OPS / lse.programs) / (H200.fp32_per_clock * H200.clock_hz)
    assert lse.t_softmax == pytest.approx(max(t_exp, t_alu))
    assert lse.t_compute == pytest.approx(max(t_tensor, lse.t_softmax))
    combine = (4 * lse.splits * N * (1 + 1 / lse.splits) / H200.hbm_bytes_per_s + H200.launch_s
               if lse.splits > 1 else 0.0)
    expected = max(lse.t_compute, lse.l2_bytes / H200.l2_bytes_per_s, lse.hbm_bytes / H200.hbm_bytes_per_s)
    assert lse.seconds == pytest.approx(expected + H200.launch_s + combine)
    assert lse.fraction == pytest.approx(product / lse.seconds / H200.peak_flops["bf16"])
    # The loss: 3 products' worth of useful work over both launches' time.
    assert roofline.fwd_bwd_fraction([lse, ws]) == pytest.approx(
        3 * product / (lse.seconds + ws.seconds) / H200.peak_flops["bf16"])


def test_one_program_per_sm_runs_products_and_exps_in_turn():
    launch = Launch("con", "fwd", roofline.loss_launches("con", torch.bfloat16, "tf32", N, D)[0].variant, N, N)
    alone = estimate(launch, _resources(launch.variant, 255, 200 * 1024, ("wgmma.m64n64k16.bf16.ss",)))
    assert alone.programs_per_sm == 1
    assert alone.t_compute == pytest.approx(alone.t_tensor + alone.t_softmax)


def test_configurations_cover_the_public_losses():
    configs = roofline.configurations()
    assert {(loss, n, d) for loss, _, _, n, d in configs} == {
        (loss, n, d) for loss in ("con", "clip") for n in (8192, 65536) for d in (128, 256)}
    assert {dtype for _, dtype, _, _, _ in configs} == {torch.bfloat16, torch.float32}
    assert [len(roofline.loss_launches(*c)) for c in configs[:1]] == [2]
    assert len(roofline.loss_launches("clip", torch.bfloat16, "tf32", N, D)) == 6
