"""Every Triton kernel configuration the public losses launch compiles for sm_90 (Hopper) and
sm_80 (Ampere) without a GPU, and on sm_90 none spills registers.

Compiling needs only Triton (its bundled ptxas) and CPU time: about 2 s per kernel, in worker
processes with a temporary cache (nothing is kept between runs). The table of registers,
spill bytes, stack frame and shared memory per kernel is printed into the test log.
"""

import pytest

pytest.importorskip("triton.backends.nvidia")

from stablerep_fast.ops.multipos_triton import public_variants  # noqa: E402
from stablerep_fast.ops.triton_aot import SIZES, compile_all, format_table  # noqa: E402


def test_public_kernels_compile_for_hopper_and_ampere_without_spills_on_hopper(capsys):
    rows = compile_all(archs=(90, 80))
    with capsys.disabled():
        print("\n" + format_table(rows))
    assert len(rows) == 2 * len(SIZES) * len(public_variants())
    spilling = [r for r in rows if r.arch == 90 and (r.spills or r.stack)]
    assert not spilling, "sm_90 kernels with spills or a stack frame:\n" + format_table(spilling)
    assert all(r.registers <= 255 and r.shared <= 227 * 1024 for r in rows)
