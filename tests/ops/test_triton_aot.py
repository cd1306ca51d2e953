"""Every Triton kernel configuration the public losses launch compiles for sm_90 (Hopper)
without a GPU, and none spills registers.

Compiling needs only Triton (its bundled ptxas) and CPU time: 1.5-4 s per kernel, 200
kernels, in worker processes with a temporary cache (nothing is kept between runs). The
table of registers, spill bytes, stack frame and shared memory per kernel is printed into
the test log. sm_80 (Ampere) doubles the time, so it is left to
``python -m stablerep_fast.ops.triton_aot`` (both architectures; its summary is in
benchmarks/RESULTS.md).
"""

import pytest

pytest.importorskip("triton.backends.nvidia")

from stablerep_fast.ops.multipos_triton import public_variants  # noqa: E402
from stablerep_fast.ops.triton_aot import SIZES, compile_all, format_table  # noqa: E402


def test_public_kernels_compile_for_hopper_without_spills(capsys):
    rows = compile_all(archs=(90,))
    with capsys.disabled():
        print("\n" + format_table(rows))
    assert len(rows) == len(SIZES) * len(public_variants())
    spilling = [r for r in rows if r.spills or r.stack]
    assert not spilling, "sm_90 kernels with spills or a stack frame:\n" + format_table(spilling)
    assert all(r.registers <= 255 and r.shared <= 227 * 1024 for r in rows)
