"""The Triton backend against tests/reference.py (float64) and the chunked torch kernels.

Without a GPU, conftest.py sets TRITON_INTERPRET=1 and the kernels run on CPU through
Triton's interpreter (slow: small shapes only, with N and D off the 64-wide tiles). There,
tl.dot computes tf32 exactly, so float32 results are checked at float32 tolerances. The
GPU-marked tests add large N, every dtype on the tensor cores and determinism.
"""

import pytest
import torch
import torch.nn.functional as F

import reference
from helpers import assert_close
from stablerep_fast import available_backends, multipos_clip_loss, multipos_con_loss
from stablerep_fast.ops.multipos_fused import multipos_ce
from stablerep_fast.ops.multipos_torch import CHUNKED, REFERENCE

multipos_triton = pytest.importorskip("stablerep_fast.ops.multipos_triton")
TRITON = multipos_triton.TRITON

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.skipif(
        multipos_triton.unavailable(DEVICE, torch.float32) is not None,
        reason=str(multipos_triton.unavailable(DEVICE, torch.float32)),
    ),
    # The interpreter evaluates with numpy, which warns where the kernels mean to produce
    # -inf (log2(0): a row with nothing kept) or inf (exp2 of a masked-out logit).
    pytest.mark.filterwarnings("ignore:(divide by zero|overflow) encountered:RuntimeWarning"),
]

# float32 compute over D <= 130 and N <= 70 unit vectors: ~1e-6 error (as in test_multipos).
F32_LOSS = dict(rtol=2e-5, atol=2e-5)
F32_GRAD_REL = 1e-4  # times the largest reference gradient entry
# The public API runs float32 dots in tf32 on GPUs: 11-bit operands put ~|s| * 2^-11 into
# each logit (|s| <= 1/tau = 10); the interpreter computes tf32 exactly.
API_LOSS = F32_LOSS if DEVICE.type == "cpu" else dict(rtol=5e-3, atol=5e-3)
API_GRAD_REL = F32_GRAD_REL if DEVICE.type == "cpu" else 2e-2
# Half inputs: the loss is float32 compute on exact products; the gradient comes back in the
# input dtype, rounded to 2^-8 (bf16) / 2^-11 (fp16) relative.
HALF_GRAD_REL = {torch.bfloat16: 2**-7, torch.float16: 2**-10}
# Kernels against the chunked kernels on the same inputs in float64, relative to the largest
# output entry: float32 dots (ieee) ~1e-6; bf16 p @ b carries p as hi + lo bf16 parts
# (~16 bits); fp16 p @ b runs in tf32 (11 bits of p) on GPUs.
KERNEL_REL = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 2e-3}

SHAPES = [  # (N, D, captions): N and D off the tiles, D not a power of two
    (1, 3, 1),
    (7, 17, 3),
    (33, 130, 10),
    (70, 64, 12),
]


def _feats(n, d, captions, dtype=torch.float32, scale=1.0):
    feats = (scale * torch.randn(n, d, dtype=torch.float64)).to(dtype).to(DEVICE).requires_grad_()
    return feats, torch.randint(0, captions, (n,)).to(DEVICE)


def _reference(feats, labels, temperature, normalize=True):
    f = feats.detach().cpu().double().requires_grad_()
    loss = reference.multipos_con_loss(f, labels.cpu(), temperature, normalize_feats=normalize)
    return loss.detach(), torch.autograd.grad(loss, f)[0]


def _loss_and_grad(feats, labels, temperature, **kwargs):
    feats.grad = None
    loss = multipos_con_loss(feats, labels, temperature, backend="triton", **kwargs)
    loss.backward()
    return loss.detach(), feats.grad


def _assert_grad(grad, ref, rel, name="grad"):
    assert_close(grad, ref, rtol=0, atol=rel * ref.abs().max().item(), name=name)


# ---- the public losses -----------------------------------------------------------------------

@pytest.mark.parametrize("n,d,captions", SHAPES)
def test_con_loss_matches_reference(n, d, captions):
    feats, labels = _feats(n, d, captions)
    loss, grad = _loss_and_grad(feats, labels, 0.1)
    ref_loss, ref_grad = _reference(feats, labels, 0.1)
    assert_close(loss, ref_loss, **API_LOSS, name="loss")
    _assert_grad(grad, ref_grad, API_GRAD_REL)


def test_clip_loss_matches_reference_with_scale_gradient():
    image_labels = torch.arange(9).repeat(3)
    text_labels = torch.cat([torch.arange(9), torch.tensor([50])])  # one text without images
    image_emb = torch.randn(len(image_labels), 20, device=DEVICE, requires_grad=True)
    text_emb = torch.randn(len(text_labels), 20, device=DEVICE, requires_grad=True)
    scale = torch.tensor(14.3, device=DEVICE, requires_grad=True)
    loss = multipos_clip_loss(image_emb, text_emb, image_labels.to(DEVICE), text_labels.to(DEVICE), scale,
                              backend="triton")
    grads = torch.autograd.grad(loss, (image_emb, text_emb, scale))
    inputs = [x.detach().cpu().double().requires_grad_() for x in (image_emb, text_emb, scale)]
    ref = reference.multipos_clip_loss(inputs[0], inputs[1], image_labels, text_labels, inputs[2])
    ref_grads = torch.autograd.grad(ref, inputs)
    assert_close(loss, ref, **API_LOSS, name="loss")
    for got, want, name in zip(grads, ref_grads, ("d image_emb", "d text_emb", "d logit_scale")):
        _assert_grad(got, want, API_GRAD_REL, name)


def test_learnable_temperature_gets_its_gradient():
    # The symmetric pass (rows are the columns) gives the temperature's gradient too.
    feats, labels = _feats(33, 24, 6)
    tau = torch.tensor(0.15, device=DEVICE, requires_grad=True)
    loss = multipos_con_loss(feats, labels, tau, backend="triton", precision="ieee")
    grads = torch.autograd.grad(loss, (feats, tau))
    f = feats.detach().cpu().double().requires_grad_()
    t = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    ref = reference.multipos_con_loss(f, labels.cpu(), t)
    ref_grads = torch.autograd.grad(ref, (f, t))
    assert_close(loss, ref, **F32_LOSS, name="loss")
    for got, want, name in zip(grads, ref_grads, ("d feats", "d temperature")):
        _assert_grad(got, want, F32_GRAD_REL, name)


def test_rows_without_positives():
    feats, _ = _feats(12, 8, 1)
    loss, grad = _loss_and_grad(feats, torch.arange(12, device=DEVICE), 0.1)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    labels = torch.tensor([100, 5, 5, 5, -3, 42, 42, 7, 8, 9, 5, 42], device=DEVICE)  # 5 singletons
    loss, grad = _loss_and_grad(feats, labels, 0.1)
    ref_loss, ref_grad = _reference(feats, labels, 0.1)
    assert_close(loss, ref_loss, **API_LOSS, name="loss")
    _assert_grad(grad, ref_grad, API_GRAD_REL)


@pytest.mark.parametrize("normalize", [True, False])
def test_small_temperature_with_large_norms_is_finite(normalize):
    # normalize=False with norms ~30 and tau = 0.01 gives logits ~1e5: exp overflows if unstable.
    # Through multipos_ce for precision="ieee": tf32 would put ~1e5 * 2^-11 into a logit.
    feats, labels = _feats(24, 10, 6, scale=1e4 if normalize else 10.0)
    z = F.normalize(feats, dim=1) if normalize else feats
    loss = multipos_ce(TRITON, z, z, labels, labels, 100.0, 0, precision="ieee")
    (grad,) = torch.autograd.grad(loss, feats)
    ref_loss, ref_grad = _reference(feats, labels, 0.01, normalize=normalize)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # float32 logits up to ~1e5 carry ~1e5 * 2^-24 = 6e-3 absolute error: that moves softmax
    # weights, hence the gradient, by up to ~0.6% (measured 0.08%); the loss stays relative.
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, name="loss")
    _assert_grad(grad, ref_grad, 1e-2)


def test_listed_as_available_backend():
    assert "triton" in available_backends(DEVICE, torch.float32)
    assert "float64" in multipos_triton.unavailable(DEVICE, torch.float64)


# ---- half-precision inputs reach the kernels as they are ---------------------------------------

def _unit_rows(n, d, dtype, clusters=None, spread=0.1):
    """Normalised rows in ``dtype``; with ``clusters``, tight groups like a trained encoder's."""
    x = torch.randn(n, d, dtype=torch.float64)
    if clusters is not None:
        x = torch.randn(clusters, d, dtype=torch.float64)[torch.arange(n) % clusters] + spread * x
    return F.normalize(x, dim=1).to(dtype).to(DEVICE).requires_grad_()


def _reference_ce(rows, cols, row_labels, col_labels, scale, diag, inputs):
    """Float64 loss and gradients w.r.t. ``inputs`` (a subset of rows, cols, scale)."""
    args = {"rows": rows, "cols": cols, "scale": scale}
    leaves = {k: v.detach().cpu().double().requires_grad_() for k, v in args.items() if torch.is_tensor(v)}
    if cols is rows:
        leaves["cols"] = leaves["rows"]
    loss = reference.multipos_ce_rows(leaves["rows"], leaves["cols"], row_labels.cpu(), col_labels.cpu(),
                                      leaves.get("scale", scale), diag)
    return loss.detach(), torch.autograd.grad(loss, [leaves[k] for k in inputs])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_symmetric_pass(dtype):
    z = _unit_rows(70, 40, dtype)
    labels = (torch.arange(70) // 6).to(DEVICE)
    loss = multipos_ce(TRITON, z, z, labels, labels, 10.0, 0)
    (grad,) = torch.autograd.grad(loss, z)
    ref_loss, (ref_grad,) = _reference_ce(z, z, labels, labels, 10.0, 0, ["rows"])
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    _assert_grad(grad, ref_grad, HALF_GRAD_REL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_rows_against_other_columns(dtype):
    # As on one rank of several: columns 40..59 are these rows (own labels), the rest others'.
    rows = _unit_rows(20, 24, dtype)
    cols = torch.cat([_unit_rows(40, 24, dtype), rows, _unit_rows(15, 24, dtype)]).detach().requires_grad_()
    row_labels = (torch.arange(20) % 7).to(DEVICE)
    col_labels = torch.cat([torch.arange(40) % 9, row_labels.cpu(), torch.arange(15) % 5]).to(DEVICE)
    scale = torch.tensor(12.0, device=DEVICE, requires_grad=True)
    loss = multipos_ce(TRITON, rows, cols, row_labels, col_labels, scale, 40)
    grads = torch.autograd.grad(loss, (rows, cols, scale))
    ref_loss, ref_grads = _reference_ce(rows, cols, row_labels, col_labels, scale, 40, ["rows", "cols", "scale"])
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    for got, want, name in zip(grads, ref_grads, ("d rows", "d cols", "d scale")):
        _assert_grad(got, want, HALF_GRAD_REL[dtype] if name != "d scale" else F32_GRAD_REL, name)


def test_bf16_gradient_keeps_precision_on_clustered_features():
    # Softmax mass sits on the positives, so the gradient is a small difference of two large
    # sums. Rounding each p_ij to bf16 once put 44% into it here (measured); hi + lo parts
    # leave only the final bf16 rounding of the gradient (measured 0.2%, i.e. 2^-9).
    z = _unit_rows(64, 32, torch.bfloat16, clusters=8, spread=0.1)
    labels = (torch.arange(64) % 8).to(DEVICE)
    loss = multipos_ce(TRITON, z, z, labels, labels, 10.0, 0)
    (grad,) = torch.autograd.grad(loss, z)
    _, (ref_grad,) = _reference_ce(z, z, labels, labels, 10.0, 0, ["rows"])
    err = (grad.cpu().double() - ref_grad).norm() / ref_grad.norm()
    assert err < 2**-7, f"relative gradient error {err:.2e}"


# ---- the kernels against the chunked ones --------------------------------------------------------

DIAGS = [None, 0, 5, -20, 200, -200]  # +-200: the excluded pair lies outside every row


def _kernel_inputs(na, nb, d, dtype):
    """a [na, d], b [nb, d] in ``dtype`` and a scale; 70 x 75 spans two tiles each way."""
    a = torch.randn(na, d, dtype=torch.float64).to(dtype).to(DEVICE)
    b = torch.randn(nb, d, dtype=torch.float64).to(dtype).to(DEVICE)
    return a, b, torch.tensor(0.6, device=DEVICE)


def _f64(*tensors):
    return [None if t is None else t.cpu().double() for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("diag", DIAGS)
def test_lse_kernel(dtype, diag):
    a, b, scale = _kernel_inputs(70, 75, 130, dtype)
    got = TRITON.lse(a, b, scale, diag, "ieee")
    want = CHUNKED.lse(*_f64(a, b, scale), diag, "ieee")
    assert got.dtype == torch.float32
    assert_close(got, want, rtol=1e-6, atol=1e-5, name="lse")


def test_lse_kernel_row_with_nothing_kept_is_minus_inf():
    a, b, scale = _kernel_inputs(3, 1, 16, torch.float32)  # row 0's only column is excluded
    got = TRITON.lse(a, b, scale, 0, "ieee")
    assert got[0].item() == float("-inf")
    assert_close(got, CHUNKED.lse(*_f64(a, b, scale), 0, "ieee"), rtol=1e-6, atol=1e-5, name="lse")


@pytest.mark.parametrize("terms", ["u+v", "u", "v"])
@pytest.mark.parametrize("diag", DIAGS)
def test_weighted_sum_kernel(terms, diag):
    _check_weighted_sum(70, 75, 130, torch.float32, terms, diag)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weighted_sum_kernel_half(dtype):
    _check_weighted_sum(70, 75, 130, dtype, "u+v", 3)


@pytest.mark.parametrize("d", [300, 1030])
def test_kernels_wide_d(d):
    # D > 256: K chunks in the scores and several output column blocks.
    _check_weighted_sum(20, 70, d, torch.float32, "u+v", 1)


def _check_weighted_sum(na, nb, d, dtype, terms, diag):
    a, b, scale = _kernel_inputs(na, nb, d, dtype)
    back = None if diag is None else -diag
    u = v = lse_a = lse_b = None
    if "u" in terms:
        u, lse_a = torch.rand(na, device=DEVICE), TRITON.lse(a, b, scale, diag, "ieee")
        lse_a[::4] = float("inf")  # rows whose softmax vanishes (anchors without positives)
    if "v" in terms:
        v, lse_b = torch.rand(nb, device=DEVICE), TRITON.lse(b, a, scale, back, "ieee")
        lse_b[1::3] = float("inf")
    got = TRITON.weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, "ieee")
    want = CHUNKED.weighted_sum(*_f64(a, b, u, lse_a, v, lse_b, scale), diag, "ieee")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert_close(got, want, rtol=0, atol=KERNEL_REL[dtype] * want.abs().max().item(), name="weighted_sum")


# ---- torch.compile ---------------------------------------------------------------------------

def test_registered_ops_pass_opcheck():
    a, b, scale = _kernel_inputs(20, 9, 8, torch.float32)
    lse_a, lse_b = torch.randn(20, device=DEVICE), torch.randn(9, device=DEVICE)
    u, v = torch.rand(20, device=DEVICE), torch.rand(9, device=DEVICE)
    ops = torch.ops.stablerep_fast
    torch.library.opcheck(ops.triton_lse.default, (a, b, scale, 1, "ieee"))
    torch.library.opcheck(ops.triton_weighted_sum.default, (a, b, u, lse_a, v, lse_b, scale, 1, "ieee"))
    torch.library.opcheck(ops.triton_weighted_sum.default, (a, b, None, None, v, lse_b, scale, None, "ieee"))


def test_con_loss_compiles_without_graph_breaks():
    # On CPU the interpreted kernels are opaque custom ops and aot_eager (Dynamo + AOTAutograd,
    # no codegen) keeps the test fast; on GPUs inductor traces into the Triton kernels.
    feats, labels = _feats(40, 24, 8)
    backend = "inductor" if DEVICE.type == "cuda" else "aot_eager"
    compiled = torch.compile(lambda f: multipos_con_loss(f, labels, 0.1, backend="triton"),
                             fullgraph=True, backend=backend)
    loss = compiled(feats)
    (grad,) = torch.autograd.grad(loss, feats)
    eager_loss, eager_grad = _loss_and_grad(feats, labels, 0.1)
    assert_close(loss, eager_loss, **F32_LOSS, name="loss")
    _assert_grad(grad, eager_grad, F32_GRAD_REL)


# ---- GPU: tensor cores, large N, determinism ----------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d", [(997, 130), (2048, 256)])
def test_gpu_dtypes_match_reference(dtype, n, d):
    z = _unit_rows(n, d, dtype)
    labels = (torch.arange(n) // 6).to(DEVICE)
    loss = multipos_ce(TRITON, z, z, labels, labels, 10.0, 0, precision="ieee")
    (grad,) = torch.autograd.grad(loss, z)
    # The dense torch backend in float64 on the same rounded inputs (reference.py's row loop
    # is too slow at this N; test_multipos checks the two agree).
    z64 = z.detach().double().requires_grad_()
    ref_loss = multipos_ce(REFERENCE, z64, z64, labels, labels, 10.0, 0)
    (ref_grad,) = torch.autograd.grad(ref_loss, z64)
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    _assert_grad(grad, ref_grad, HALF_GRAD_REL.get(dtype, F32_GRAD_REL))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8192, 65536])
def test_gpu_large_n_matches_chunked(n):
    z = _unit_rows(n, 256, torch.float32)
    labels = (torch.arange(n) // 6).to(DEVICE)
    loss = multipos_ce(TRITON, z, z, labels, labels, 10.0, 0, precision="ieee")
    (grad,) = torch.autograd.grad(loss, z)
    ref_loss = multipos_ce(CHUNKED, z, z, labels, labels, 10.0, 0)
    (ref_grad,) = torch.autograd.grad(ref_loss, z)
    # Sums over up to 65536 columns in float32, in different orders: ~sqrt(N) * 2^-24 each.
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, name="loss")
    _assert_grad(grad, ref_grad, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backward_is_bitwise_deterministic(dtype):
    z = _unit_rows(4099, 256, dtype)
    labels = (torch.arange(4099) // 6).to(DEVICE)
    grads = [torch.autograd.grad(multipos_ce(TRITON, z, z, labels, labels, 10.0, 0), z)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])
