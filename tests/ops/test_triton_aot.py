"""Every Triton kernel configuration the public losses launch compiles for sm_90 (Hopper)
without a GPU, none spills registers, each holds the programs per SM its tiles were chosen
for, and the performance model (ops.roofline) runs on every configuration from these compiles.

Compiling needs only Triton (its bundled ptxas) and CPU time: 0.5-4 s per kernel, 200
kernels, in worker processes with a temporary cache (nothing is kept between runs). The
table of registers, spill bytes, stack frame and shared memory per kernel, and the model's
table, are printed into the test log. sm_80 (Ampere) doubles the time, so it is left to
``python -m stablerep_fast.ops.triton_aot`` (both architectures; its summary is in
benchmarks/RESULTS.md).
"""

import pytest
import torch

pytest.importorskip("triton.backends.nvidia")

from stablerep_fast.ops import roofline  # noqa: E402
from stablerep_fast.ops.multipos_triton import public_variants, tiles  # noqa: E402
from stablerep_fast.ops.triton_aot import SIZES, compile_all, format_table  # noqa: E402


@pytest.fixture(scope="module")
def hopper_kernels():
    return compile_all(archs=(90,))


def test_public_kernels_compile_for_hopper_without_spills(hopper_kernels, capsys):
    rows = hopper_kernels
    with capsys.disabled():
        print("\n" + format_table(rows))
    assert len(rows) == len(SIZES) * len(public_variants())
    spilling = [r for r in rows if r.spills or r.stack]
    assert not spilling, "sm_90 kernels with spills or a stack frame:\n" + format_table(spilling)
    assert all(r.registers <= 255 and r.shared <= 227 * 1024 for r in rows)
    crowded = [r for r in rows if roofline.programs_per_sm(r.registers, r.shared, tiles(r.variant).num_warps)
               < tiles(r.variant).programs_per_sm]
    assert not crowded, "fewer programs per SM than their tiles assume:\n" + format_table(crowded)
    tensor_cores = [r for r in rows if r.variant.d in (128, 256) and (r.variant.dtype, r.variant.precision)
                    != (torch.float32, "ieee")]
    assert all(r.mma and all(i.startswith("wgmma.") for i in r.mma) for r in tensor_cores), "no wgmma"


def test_performance_model_runs_on_every_configuration(hopper_kernels, capsys):
    compiled = {r.variant: r for r in hopper_kernels if r.n % 16 == 0}
    estimates = roofline.estimate_all(compiled)
    with capsys.disabled():
        print("\n" + roofline.format_table(estimates))
    assert len(estimates) == len(roofline.configurations())
    for per_config, (loss, dtype, precision, n, d) in zip(estimates, roofline.configurations()):
        assert len(per_config) == len(roofline.loss_launches(loss, dtype, precision, n, d))
        for e in per_config:
            assert 0 < e.fraction <= 1 and e.executed_flops >= e.useful_flops > 0
        # The Hopper tiles' target: the con loss at half the tensor-core peak or more.
        if loss == "con" and precision == "tf32":
            assert roofline.fwd_bwd_fraction(per_config) >= 0.5, (loss, dtype, n, d)
