"""The C++ kernels ("cpp"): kernel-level checks against the chunked torch kernels, determinism,
boundary validation and torch.compile tracing. Loss-level checks against the float64
reference run for every backend in test_multipos.py."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from helpers import assert_close
from stablerep_fast import multipos_con_loss
from stablerep_fast.ops.multipos_ext import CPP
from stablerep_fast.ops.multipos_torch import CHUNKED

pytestmark = pytest.mark.skipif(
    CPP.unavailable(torch.device("cpu"), torch.float32) is not None,
    reason=str(CPP.unavailable(torch.device("cpu"), torch.float32)),
)
# float64: the same sums in another order. float32: ~1 ulp exp polynomial + fp32 dots over D.
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}
# (na, nb, D): single rows, sizes that straddle the 4-row / 32-column micro-tiles, the 64-row
# tasks and the 256-column panels, and D not a multiple of the 32-wide feature slivers.
SHAPES = [(1, 1, 1), (3, 5, 7), (37, 301, 19), (70, 70, 130), (129, 520, 33)]
DIAGS = [None, 0, 5, -3, 1000, -1000]  # out-of-range offsets exclude nothing


def _problem(na, nb, d, dtype):
    a = torch.nn.functional.normalize(torch.randn(na, d, dtype=torch.float64), dim=1).to(dtype)
    b = torch.nn.functional.normalize(torch.randn(nb, d, dtype=torch.float64), dim=1).to(dtype)
    return a, b, torch.tensor(7.0, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("na,nb,d", SHAPES)
@pytest.mark.parametrize("diag", DIAGS)
def test_lse_matches_torch_kernel(dtype, na, nb, d, diag):
    a, b, scale = _problem(na, nb, d, dtype)
    got = CPP.lse(a, b, scale, diag, "ieee")
    want = CHUNKED.lse(a, b, scale, diag, "ieee")
    assert got.dtype == dtype
    assert_close(got, want, **TOL[dtype], name="lse")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("na,nb,d", SHAPES)
@pytest.mark.parametrize("diag", [None, 0, -3])
@pytest.mark.parametrize("terms", ["u", "v", "uv"])
def test_weighted_sum_matches_torch_kernel(dtype, na, nb, d, diag, terms):
    a, b, scale = _problem(na, nb, d, dtype)
    u = torch.rand(na, dtype=dtype) if "u" in terms else None
    v = torch.rand(nb, dtype=dtype) if "v" in terms else None
    lse_a = CHUNKED.lse(a, b, scale, diag, "ieee") if u is not None else None
    lse_b = CHUNKED.lse(b, a, scale, None if diag is None else -diag, "ieee") if v is not None else None
    # The Function passes +inf (never -inf) for rows whose softmax must vanish: rows without
    # any column (1 x 1 with the diagonal excluded) and rows without positives.
    for lse in (lse_a, lse_b):
        if lse is not None:
            lse[torch.isneginf(lse)] = float("inf")
    if lse_a is not None and na > 1:
        lse_a[0] = float("inf")
    got = CPP.weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, "ieee")
    want = CHUNKED.weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, "ieee")
    assert torch.isfinite(got).all()
    assert_close(got, want, **TOL[dtype], name="weighted_sum")


def test_half_precision_inputs_compute_in_float32():
    a, b, scale = _problem(20, 33, 16, torch.float32)
    got = CPP.lse(a.bfloat16(), b.bfloat16(), scale, 0, "ieee")
    want = CHUNKED.lse(a.bfloat16().float(), b.bfloat16().float(), scale, 0, "ieee")
    assert got.dtype == torch.float32
    assert_close(got, want, **TOL[torch.float32], name="lse from bf16")


def test_gradcheck_float64():
    z = torch.randn(19, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (19,))
    assert torch.autograd.gradcheck(lambda z: multipos_con_loss(z, labels, 0.3, backend="cpp"), (z,))


# Run verbatim here and in a subprocess with another thread count.
LOSS_AND_GRAD = """
import torch
from stablerep_fast import multipos_con_loss
g = torch.Generator().manual_seed(3)
feats = torch.randn(300, 40, generator=g, requires_grad=True)
loss = multipos_con_loss(feats, torch.arange(300) // 6, 0.1, backend="cpp")
loss.backward()
result = (loss.detach(), feats.grad)
"""


def _loss_and_grad():
    scope = {}
    exec(LOSS_AND_GRAD, scope)
    return scope["result"]


def test_two_runs_are_bitwise_identical():
    loss1, grad1 = _loss_and_grad()
    loss2, grad2 = _loss_and_grad()
    assert torch.equal(loss1, loss2) and torch.equal(grad1, grad2)


def test_thread_count_does_not_change_a_bit(tmp_path):
    loss, grad = _loss_and_grad()
    out = tmp_path / "one_thread.pt"
    script = LOSS_AND_GRAD + f"torch.save(result, {str(out)!r})\n"
    subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
                   timeout=300)
    loss1, grad1 = torch.load(out)
    assert torch.equal(loss, loss1) and torch.equal(grad, grad1)


def test_boundary_rejects_bad_operands():
    a, b, scale = _problem(4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match="a and b must be"):
        CPP.lse(a, b[:, :2], scale, None, "ieee")
    with pytest.raises(ValueError, match="together"):
        CPP.weighted_sum(a, b, torch.ones(4), None, None, None, scale, None, "ieee")
    with pytest.raises(ValueError, match="u must have shape"):
        CPP.weighted_sum(a, b, torch.ones(5), torch.zeros(5), None, None, scale, None, "ieee")
    with pytest.raises(ValueError, match="scale must be finite"):  # raised by the C++ side
        CPP.lse(a, b, torch.tensor(float("nan")), None, "ieee")


def test_strided_inputs_are_made_contiguous():
    a, b, scale = _problem(10, 12, 8, torch.float64)
    a_strided = torch.randn(8, 10, dtype=torch.float64).T  # [10, 8], non-contiguous
    a_strided.copy_(a)
    assert_close(CPP.lse(a_strided, b, scale, 1, "ieee"), CHUNKED.lse(a, b, scale, 1, "ieee"), **TOL[torch.float64])


def test_auto_picks_cpp_on_cpu_above_small_sizes(monkeypatch):
    from stablerep_fast.ops import dispatch

    calls = []  # rows of each lse call (the first-use check adds calls on its own small problem)
    spy = dataclasses.replace(CPP, lse=lambda *a: calls.append(a[0].shape[0]) or CPP.lse(*a))
    monkeypatch.setitem(dispatch._RECORDS, "cpp", spy)
    multipos_con_loss(torch.randn(512, 8), torch.arange(512) // 4)  # 512^2 logits: cpp
    assert calls.count(512) == 1
    calls.clear()
    multipos_con_loss(torch.randn(16, 8), torch.arange(16) // 4)  # tiny: dense torch
    assert calls == []


def test_torch_compile_traces_the_loss_without_graph_breaks():
    feats = torch.randn(40, 12, requires_grad=True)
    labels = torch.arange(40) // 4

    def step(f):
        return multipos_con_loss(f, labels, 0.1, backend="cpp")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(feats)
    (grad,) = torch.autograd.grad(loss, feats)
    feats2 = feats.detach().clone().requires_grad_()
    ref = step(feats2)
    ref.backward()
    assert_close(loss, ref, rtol=1e-6, atol=1e-6, name="compiled loss")
    assert_close(grad, feats2.grad, rtol=1e-5, atol=1e-7, name="compiled grad")


# ---- CPU variants: one copy of the kernels per instruction set (csrc/cpu_variants.cpp) ---------

from stablerep_fast import _ext  # noqa: E402

RUNNABLE_VARIANTS = [name for name, runs in _ext.extension().cpu_variants() if runs]


@pytest.fixture
def restore_cpu_variant():
    picked = _ext.build_info()["cpu_variant"]
    yield
    _ext.extension().set_cpu_variant(picked)


@pytest.mark.parametrize("variant", RUNNABLE_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_cpu_variant_computes_the_same(variant, dtype, restore_cpu_variant):
    # Shapes off every micro-tile, panel and sliver edge; both kernels; the finite scan too.
    _ext.extension().set_cpu_variant(variant)
    assert _ext.build_info()["cpu_variant"] == variant
    a, b, scale = _problem(129, 301, 33, dtype)
    lse = CPP.lse(a, b, scale, 5, "ieee")
    assert_close(lse, CHUNKED.lse(a, b, scale, 5, "ieee"), **TOL[dtype], name=f"lse ({variant})")
    u, v = torch.rand(129, dtype=dtype), torch.rand(301, dtype=dtype)
    lse_b = CHUNKED.lse(b, a, scale, -5, "ieee")
    got = CPP.weighted_sum(a, b, u, lse, v, lse_b, scale, 5, "ieee")
    want = CHUNKED.weighted_sum(a, b, u, lse, v, lse_b, scale, 5, "ieee")
    assert_close(got, want, **TOL[dtype], name=f"weighted_sum ({variant})")
    x = torch.randn(200_003, dtype=dtype)
    assert _ext.extension().all_finite(x.data_ptr(), x.numel(), _ext.c_dtype(dtype)) is True
    x[123_457] = float("nan")
    assert _ext.extension().all_finite(x.data_ptr(), x.numel(), _ext.c_dtype(dtype)) is False


def test_unknown_or_unrunnable_cpu_variant_is_refused(restore_cpu_variant):
    with pytest.raises(ValueError, match="not in this build"):
        _ext.extension().set_cpu_variant("avx9000")
    for name, runs in _ext.extension().cpu_variants():
        if not runs:
            with pytest.raises(ValueError, match="does not run on this CPU"):
                _ext.extension().set_cpu_variant(name)


@pytest.mark.parametrize("name", [RUNNABLE_VARIANTS[-1], "avx9000"])
def test_environment_variable_picks_the_first_variant(name):
    # STABLEREP_FAST_CPU_VARIANT (benchmarks: AVX2 on an AVX-512 machine) is read at the first
    # kernel call, so it needs a fresh process.
    code = "import stablerep_fast._ext as e; print(e.extension().build_info()['cpu_variant'])"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "STABLEREP_FAST_CPU_VARIANT": name},
                         capture_output=True, text=True)
    if name in RUNNABLE_VARIANTS:
        assert run.returncode == 0 and run.stdout.strip() == name, run.stderr
    else:
        assert run.returncode != 0 and "STABLEREP_FAST_CPU_VARIANT" in run.stderr
