"""The CUDA kernels ("cuda"). Everything that needs a GPU is marked and skipped without one;
what runs everywhere checks the boundary (availability and argument errors)."""

import pytest
import torch

import reference
from helpers import assert_close
from stablerep_fast import _ext, multipos_clip_loss, multipos_con_loss
from stablerep_fast.ops.dispatch import unavailable_reason
from stablerep_fast.ops.multipos_torch import CHUNKED

CUDA_BUILT = _ext.is_built() and _ext.build_info()["cuda"]
# The kernels' tests skip (not fail) on a GPU machine whose extension build failed or lacked nvcc.
needs_kernels = pytest.mark.skipif(not CUDA_BUILT, reason="the extension is built without CUDA kernels" if _ext.is_built()
                                   else f"the extension is not built ({_ext.build_info()['error']})")  # fmt: skip
# Relative to the largest reference entry: TF32 keeps 10 mantissa bits, bf16 8, fp16 11;
# exact fp32 only reorders sums.
TOL = {"ieee": 2e-5, "tf32": 4e-3, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def test_unavailable_on_cpu_says_why():
    assert "CUDA tensors only" in unavailable_reason("cuda", torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu"):
        multipos_con_loss(torch.randn(4, 3), torch.arange(4), backend="cuda")


@pytest.mark.skipif(not CUDA_BUILT, reason="extension built without CUDA")
def test_kernels_reject_bad_arguments_before_touching_the_gpu():
    from stablerep_fast.ops.multipos_ext import CUDA

    a = torch.randn(4, 300)
    with pytest.raises(ValueError, match="D <= 256"):
        CUDA.lse(a, a, torch.tensor(1.0), None, "tf32")
    with pytest.raises(ValueError, match="precision"):
        CUDA.lse(a[:, :8], a[:, :8], torch.tensor(1.0), None, "fast")
    with pytest.raises(ValueError, match="CUDA tensors only"):
        CUDA.lse(a[:, :8], a[:, :8], torch.tensor(1.0), None, "tf32")


@pytest.mark.skipif(not CUDA_BUILT, reason="extension built without CUDA")
def test_extension_checks_before_the_gpu_and_raises_cuda_errors_naming_the_call():
    # Straight to _C: its own checks run before any CUDA call; without a usable GPU the first
    # CUDA call fails and comes back as a RuntimeError naming it (not a crash).
    ext = _ext.extension()
    args = dict(a=0, b=0, na=5, nb=7, scale=8, diag=None, exact=False, lse_out=0, device=0, stream=0)
    with pytest.raises(ValueError, match="D must be <= 256, got 300"):
        ext.multipos_lse_cuda(d=300, dtype=ext.DType.float32, **args)
    with pytest.raises(ValueError, match="unsupported dtype float16"):
        ext.multipos_lse_cuda(d=8, dtype=ext.DType.float16, **args)
    with pytest.raises(ValueError, match="null scale pointer"):
        ext.multipos_lse_cuda(d=8, dtype=ext.DType.float32, **{**args, "scale": 0})
    if int(_ext.build_info()["cuda_runtime"]["device_count"]) == 0:
        with pytest.raises(RuntimeError, match="^cudaGetDevice|^cudaSetDevice"):
            ext.multipos_lse_cuda(d=8, dtype=ext.DType.float32, **args)


def _problem(na, nb, d, dtype):
    a = torch.nn.functional.normalize(torch.randn(na, d, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(nb, d, dtype=torch.float64), dim=1)
    return a.cuda().to(dtype), b.cuda().to(dtype)


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("dtype,precision", [(torch.float32, "ieee"), (torch.float32, "tf32"),
                                             (torch.float16, "tf32"), (torch.bfloat16, "tf32")])
@pytest.mark.parametrize("na,nb,d", [(1, 1, 1), (63, 65, 17), (130, 257, 130), (300, 1000, 256)])
@pytest.mark.parametrize("diag", [None, 0, -7])
def test_kernels_match_float64_torch_kernels(dtype, precision, na, nb, d, diag):
    from stablerep_fast.ops.multipos_ext import CUDA

    a, b = _problem(na, nb, d, dtype)
    scale = torch.tensor(10.0, device="cuda")
    a64, b64, s64 = a.double(), b.double(), scale.double()
    tol = TOL[precision] if dtype == torch.float32 else TOL[dtype]
    lse = CUDA.lse(a, b, scale, diag, precision)
    want = CHUNKED.lse(a64, b64, s64, diag, "ieee")
    assert_close(lse, want, rtol=tol, atol=tol * want.abs().max().item(), name="lse")
    want = want.masked_fill(torch.isneginf(want), float("inf"))
    u, v = torch.rand(na, device="cuda"), torch.rand(nb, device="cuda")
    lse_b = CHUNKED.lse(b64, a64, s64, None if diag is None else -diag, "ieee")
    lse_b = lse_b.masked_fill(torch.isneginf(lse_b), float("inf"))
    got = CUDA.weighted_sum(a, b, u, want.float(), v, lse_b.float(), scale, diag, precision)
    expect = CHUNKED.weighted_sum(a64, b64, u.double(), want, v.double(), lse_b, s64, diag, "ieee")
    assert_close(got, expect, rtol=tol, atol=tol * expect.abs().max().item(), name="weighted_sum")


@pytest.mark.gpu
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_match_reference(dtype):
    feats = torch.randn(97, 33, dtype=torch.float64)
    labels = torch.randint(0, 20, (97,))
    f = feats.cuda().to(dtype).requires_grad_()
    loss = multipos_con_loss(f, labels.cuda(), 0.1, backend="cuda")
    loss.backward()
    f64 = f.detach().double().cpu().requires_grad_()
    ref = reference.multipos_con_loss(f64, labels, 0.1)
    ref.backward()
    tol = 4e-3 if dtype == torch.float32 else 2e-2  # TF32 / bf16 dots
    assert_close(loss.cpu(), ref, rtol=tol, atol=tol, name="loss")
    assert_close(f.grad.cpu(), f64.grad, rtol=tol, atol=tol * f64.grad.abs().max().item(), name="grad")


@pytest.mark.gpu
@needs_kernels
def test_clip_loss_with_learnable_scale():
    v, t = torch.randn(24, 16, dtype=torch.float64), torch.randn(9, 16, dtype=torch.float64)
    vl, tl = torch.arange(24) % 8, torch.arange(9)
    inputs = [x.cuda().float().requires_grad_() for x in (v, t)]
    scale = torch.tensor(14.0, device="cuda", requires_grad=True)
    loss = multipos_clip_loss(*inputs, vl.cuda(), tl.cuda(), scale, backend="cuda")
    grads = torch.autograd.grad(loss, [*inputs, scale])
    ref_in = [x.clone().requires_grad_() for x in (v, t)]
    s64 = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    ref = reference.multipos_clip_loss(*ref_in, vl, tl, s64)
    ref_grads = torch.autograd.grad(ref, [*ref_in, s64])
    assert_close(loss.cpu(), ref, rtol=4e-3, atol=4e-3, name="loss")
    for g, r, name in zip(grads, ref_grads, ("d image", "d text", "d scale")):
        assert_close(g.cpu(), r, rtol=4e-3, atol=4e-3 * r.abs().max().item(), name=name)


@pytest.mark.gpu
@needs_kernels
def test_backward_is_bitwise_deterministic():
    feats = torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.arange(4096, device="cuda") // 6
    grads = []
    for _ in range(2):
        feats.grad = None
        multipos_con_loss(feats, labels, 0.1, backend="cuda").backward()
        grads.append(feats.grad.clone())
    assert torch.equal(grads[0], grads[1])

