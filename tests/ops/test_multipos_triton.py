"""The Triton backend against tests/reference.py (float64) and the chunked torch kernels.

Without a GPU, conftest.py sets TRITON_INTERPRET=1 and the kernels run on CPU through
Triton's interpreter (slow: small shapes only, with N and D off the 64-wide tiles). There,
tl.dot computes tf32 exactly, so float32 results are checked at float32 tolerances. The
GPU-marked tests add large N, every dtype on the tensor cores and determinism.
"""

from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

import reference
from helpers import assert_close
from stablerep_fast import available_backends, multipos_clip_loss, multipos_con_loss
from stablerep_fast.ops.backend import Backend
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
# each logit (|s| <= 1/tau = 10); the interpreter computes tf32 exactly. The GPU numerics
# tests below hold these on CPU under the tensor cores' rounding.
TF32_LOSS = dict(rtol=5e-3, atol=5e-3)
TF32_GRAD_REL = 2e-2
API_LOSS = F32_LOSS if DEVICE.type == "cpu" else TF32_LOSS
API_GRAD_REL = F32_GRAD_REL if DEVICE.type == "cpu" else TF32_GRAD_REL
# Half inputs: the loss is float32 compute on exact products; the gradient comes back in the
# input dtype, rounded to 2^-8 (bf16) / 2^-11 (fp16) relative.
HALF_GRAD_REL = {torch.bfloat16: 2**-7, torch.float16: 2**-10}
# bfloat16's default p @ b rounds each weight p_ij to bfloat16 once (2^-9 relative; "ieee" keeps
# p as hi + lo parts instead, at a second product's cost). The scale's gradient, a difference
# of two near-equal sums over all pairs, then carries ~2^-8 of itself (measured 0.28% below;
# the same pass in naive bf16 PyTorch is off by far more, see the clustered test).
BF16_ONE_PRODUCT_SCALE_REL = 2**-7
# Kernels against the chunked kernels on the same inputs in float64, relative to the largest
# output entry: float32 dots (ieee) ~1e-6; p @ b carries p as hi + lo parts: bf16 (~16
# bits), tf32 for fp16 (~22 bits); bf16's one product rounds p to 8 bits (2^-9 relative).
KERNEL_REL = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-5}
BF16_ONE_PRODUCT_KERNEL_REL = 2**-8

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
    # Through the Function for precision="ieee": tf32 would put ~1e5 * 2^-11 into a logit.
    feats, labels = _feats(24, 10, 6, scale=1e4 if normalize else 10.0)
    z = F.normalize(feats, dim=1) if normalize else feats
    loss = TRITON.loss(z, None, labels, None, 100.0, 0, None, "ieee")
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


HALF_MODES = [(torch.bfloat16, "tf32"), (torch.bfloat16, "ieee"), (torch.float16, "tf32")]


@pytest.mark.parametrize("dtype,precision", HALF_MODES)
def test_half_inputs_symmetric_pass(dtype, precision):
    z = _unit_rows(70, 40, dtype)
    labels = (torch.arange(70) // 6).to(DEVICE)
    loss = TRITON.loss(z, None, labels, None, 10.0, 0, None, precision)
    (grad,) = torch.autograd.grad(loss, z)
    ref_loss, (ref_grad,) = _reference_ce(z, z, labels, labels, 10.0, 0, ["rows"])
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    _assert_grad(grad, ref_grad, HALF_GRAD_REL[dtype])


@pytest.mark.parametrize("dtype,precision", HALF_MODES)
def test_half_inputs_rows_against_other_columns(dtype, precision):
    # As on one rank of several: columns 40..59 are these rows (own labels), the rest others'.
    rows = _unit_rows(20, 24, dtype)
    cols = torch.cat([_unit_rows(40, 24, dtype), rows, _unit_rows(15, 24, dtype)]).detach().requires_grad_()
    row_labels = (torch.arange(20) % 7).to(DEVICE)
    col_labels = torch.cat([torch.arange(40) % 9, row_labels.cpu(), torch.arange(15) % 5]).to(DEVICE)
    scale = torch.tensor(12.0, device=DEVICE, requires_grad=True)
    loss = TRITON.loss(rows, cols, row_labels, col_labels, scale, 40, None, precision)
    grads = torch.autograd.grad(loss, (rows, cols, scale))
    ref_loss, ref_grads = _reference_ce(rows, cols, row_labels, col_labels, scale, 40, ["rows", "cols", "scale"])
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    one_product = dtype == torch.bfloat16 and precision == "tf32"
    scale_rel = BF16_ONE_PRODUCT_SCALE_REL if one_product else F32_GRAD_REL
    for got, want, name in zip(grads, ref_grads, ("d rows", "d cols", "d scale")):
        _assert_grad(got, want, HALF_GRAD_REL[dtype] if name != "d scale" else scale_rel, name)


def test_bf16_gradient_on_clustered_features_against_naive_bf16():
    # Softmax mass sits on the positives, so the gradient is a small difference of two large
    # sums and rounding errors in the weights p_ij are amplified. The default rounds each p_ij
    # to bf16 once (measured 12% here; 44% when the rounding truncates); "ieee" carries p as hi
    # + lo parts, leaving only the final bf16 rounding of the gradient (measured 0.2%, 2^-9).
    # Naive bf16 PyTorch (the reference loss evaluated in bf16) is off by 147%.
    z = _unit_rows(64, 32, torch.bfloat16, clusters=8, spread=0.1)
    labels = (torch.arange(64) % 8).to(DEVICE)
    _, (ref_grad,) = _reference_ce(z, z, labels, labels, 10.0, 0, ["rows"])

    def error(grad):
        return ((grad.cpu().double() - ref_grad).norm() / ref_grad.norm()).item()

    z_bf16 = z.detach().cpu().requires_grad_()
    naive = reference.multipos_ce_blocks(z_bf16, z_bf16, labels.cpu(), labels.cpu(), 10.0, 0)
    naive_err = error(torch.autograd.grad(naive, z_bf16)[0])
    errors = {}
    for precision in ("tf32", "ieee"):
        loss = TRITON.loss(z, None, labels, None, 10.0, 0, None, precision)
        errors[precision] = error(torch.autograd.grad(loss, z)[0])
    assert errors["ieee"] < 2**-7, f"relative gradient error {errors['ieee']:.2e} with p in two parts"
    assert errors["tf32"] < naive_err / 8, f"one product: {errors['tf32']:.2e}, naive bf16: {naive_err:.2e}"


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


@pytest.mark.parametrize("dtype,precision", HALF_MODES)
def test_weighted_sum_kernel_half(dtype, precision):
    _check_weighted_sum(70, 75, 130, dtype, "u+v", 3, precision)


@pytest.mark.parametrize("d", [300, 1030])
def test_kernels_wide_d(d):
    # D > 256: K chunks in the scores and several output column blocks.
    _check_weighted_sum(20, 70, d, torch.float32, "u+v", 1)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="a GPU runs these tile settings in every test")
@pytest.mark.parametrize("dtype,precision", [(torch.float32, "tf32"), (torch.float32, "ieee"),
                                             (torch.bfloat16, "tf32"), (torch.float16, "tf32")])
@pytest.mark.parametrize("d", [100, 300])
def test_kernels_with_the_gpu_tile_settings(monkeypatch, dtype, precision, d):
    # The interpreter normally gets large tiles (it costs ~2 ms per program and loop step);
    # here the kernels run with the tiles, K chunks and output slices a GPU gets.
    real = multipos_triton.launch_meta

    def gpu_meta(variant, arch=90, interpret=True):  # UPCAST: the interpreter's bfloat16 dot needs float32
        return {**real(variant, arch, interpret=False), "UPCAST": True}

    monkeypatch.setattr(multipos_triton, "launch_meta", gpu_meta)
    a, b, scale = _kernel_inputs(40, 45, d, dtype)
    got = TRITON.lse(a, b, scale, 3, precision)
    assert_close(got, CHUNKED.lse(*_f64(a, b, scale), 3, "ieee"), rtol=1e-6, atol=1e-5, name="lse")
    _check_weighted_sum(40, 45, d, dtype, "u+v", 3, precision)


def _check_weighted_sum(na, nb, d, dtype, terms, diag, precision="ieee"):
    a, b, scale = _kernel_inputs(na, nb, d, dtype)
    back = None if diag is None else -diag
    u = v = lse_a = lse_b = None
    if "u" in terms:
        u, lse_a = torch.rand(na, device=DEVICE), TRITON.lse(a, b, scale, diag, "ieee")
        lse_a[::4] = float("inf")  # rows whose softmax vanishes (anchors without positives)
    if "v" in terms:
        v, lse_b = torch.rand(nb, device=DEVICE), TRITON.lse(b, a, scale, back, "ieee")
        lse_b[1::3] = float("inf")
    got = TRITON.weighted_sum(a, b, u, lse_a, v, lse_b, scale, diag, precision)
    want = CHUNKED.weighted_sum(*_f64(a, b, u, lse_a, v, lse_b, scale), diag, "ieee")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = BF16_ONE_PRODUCT_KERNEL_REL if (dtype, precision) == (torch.bfloat16, "tf32") else KERNEL_REL[dtype]
    assert_close(got, want, rtol=0, atol=rel * want.abs().max().item(), name="weighted_sum")


# ---- what the launchers compile ------------------------------------------------------------------

def test_every_launch_of_the_public_losses_is_enumerated(monkeypatch):
    # test_triton_aot compiles public_variants() for sm_80/sm_90: it must hold every kernel
    # specialisation the public losses launch.
    launched = []
    real = multipos_triton.launch_meta
    monkeypatch.setattr(multipos_triton, "launch_meta",
                        lambda v, arch=90, interpret=False: launched.append(v) or real(v, arch, interpret))
    labels = (torch.arange(12) // 3).to(DEVICE)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for precision in ("tf32", "ieee"):
            feats, image_emb, text_emb = (torch.randn(12, 64, dtype=dtype, device=DEVICE, requires_grad=True)
                                          for _ in range(3))
            multipos_con_loss(feats, labels, 0.1, backend="triton", precision=precision).backward()
            multipos_clip_loss(image_emb, text_emb, labels, labels, 10.0, backend="triton",
                               precision=precision).backward()
    assert set(launched) == set(multipos_triton.public_variants(widths=(64,)))


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


# ---- GPU numerics, emulated on CPU ------------------------------------------------------------
# The interpreter ignores input_precision and upcasts bfloat16 dots, so the tests above never
# see the tensor cores' rounding. GpuRoundedKernels computes what the kernels compute on a GPU
# (in torch, row block by row block): float32 operands of every tl.dot rounded to tf32
# (10-bit mantissa), bfloat16 / float16 operands exact (their products are exact in float32),
# float32 accumulation, p rounded to bfloat16 once for bfloat16 b (as hi + lo bfloat16 parts
# with precision="ieee"; tf32 parts for float16). Run
# through the real fused Function, the loss and gradient must meet the tolerances the GPU
# tests state, at StableRep's batch (N = 8192, 6 images per caption, D = 256).


def _tf32(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """float32 -> the nearest tf32 (ties to even), or truncated (the low 13 bits dropped)."""
    bits = x.contiguous().view(torch.int32)
    if rounding == "nearest":
        bits = bits + 0xFFF + ((bits >> 13) & 1)
    return (bits & -0x2000).view(torch.float32)


@dataclass(frozen=True)
class GpuRoundedKernels:
    """The two kernels of multipos_triton with the GPU's operand rounding (see above).

    ``rounding``: how float32 becomes tf32, "nearest" or "truncate" (a tensor core reading
    float32 bits as tf32 ignores the low 13 bits; Triton's PTX has no conversion before the
    tf32 mma / wgmma)."""

    rounding: str = "nearest"
    block: int = 1024

    def backend(self) -> Backend:
        return Backend(f"gpu-rounded-{self.rounding}", "the Triton kernels' GPU arithmetic, emulated", self.lse,
                       self.weighted_sum, half_inputs=True, precisions=("tf32", "ieee"))

    def _exact_or_tf32(self, x: torch.Tensor, tf32: bool) -> torch.Tensor:
        return _tf32(x.float(), self.rounding) if tf32 else x.float()

    def _scores(self, a, b, scale, precision):
        tf32 = a.dtype == torch.float32 and precision == "tf32"
        return (self._exact_or_tf32(a, tf32) @ self._exact_or_tf32(b, tf32).T) * scale.float()

    def _p_at_b(self, p, b, precision):
        if b.dtype == torch.bfloat16 and precision != "ieee":  # p rounded to bfloat16 once
            return p.to(torch.bfloat16).float() @ b.float()
        if b.dtype == torch.bfloat16:
            hi = p.to(torch.bfloat16).float()
            return hi @ b.float() + (p - hi).to(torch.bfloat16).float() @ b.float()
        if b.dtype == torch.float16:  # b exact in tf32; hi = p's leading tf32 bits, lo = the rest
            hi = _tf32(p, "truncate")
            return hi @ b.float() + _tf32(p - hi, self.rounding) @ b.float()
        tf32 = precision == "tf32"
        return self._exact_or_tf32(p, tf32) @ self._exact_or_tf32(b, tf32)

    def _excluded(self, i0, rows, nb, diag):
        own = torch.zeros(rows, nb, dtype=torch.bool)
        if diag is not None:
            i = torch.arange(rows)
            keep = (i0 + i + diag >= 0) & (i0 + i + diag < nb)
            own[i[keep], i0 + i[keep] + diag] = True
        return own

    def lse(self, a, b, scale, diag, precision):
        out = []
        for i0 in range(0, a.shape[0], self.block):
            s = self._scores(a[i0 : i0 + self.block], b, scale, precision)
            out.append(torch.logsumexp(s.masked_fill(self._excluded(i0, s.shape[0], b.shape[0], diag), -torch.inf), 1))
        return torch.cat(out)

    def weighted_sum(self, a, b, u, lse_a, v, lse_b, scale, diag, precision):
        out = []
        for i0 in range(0, a.shape[0], self.block):
            rows = slice(i0, i0 + self.block)
            s = self._scores(a[rows], b, scale, precision)
            p = torch.zeros_like(s)
            if u is not None:
                p += u[rows, None] * torch.exp(s - lse_a[rows, None])
            if v is not None:
                p += v[None, :] * torch.exp(s - lse_b[None, :])
            out.append(self._p_at_b(p.masked_fill(self._excluded(i0, s.shape[0], b.shape[0], diag), 0.0), b, precision))
        return torch.cat(out)


@lru_cache(maxsize=2)
def _caption_batch(n, d, half):
    """Unit rows of StableRep's batch shape: 6 images per caption, each near its caption's
    centre (cosine ~0.8 within a caption), as a trained encoder's features. ``half``: values
    exact in both bfloat16 and float16 (bfloat16-rounded, magnitudes below 2^-14 zeroed), so
    the two share one float64 reference."""
    g = torch.Generator().manual_seed(n)
    labels = torch.arange(n) // 6
    centres = torch.randn(labels[-1] + 1, d, generator=g, dtype=torch.float64)
    z = F.normalize(centres[labels] + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    if half:
        z = z.to(torch.bfloat16).double()
        z[z.abs() < 2**-14] = 0.0
        assert torch.equal(z.to(torch.float16).double(), z)
    return z, labels


@lru_cache(maxsize=2)
def _float64_reference(n, d, half, tau):
    """Loss and gradient of tests/reference.py in float64 on the batch."""
    z, labels = _caption_batch(n, d, half)
    z64 = z.double().requires_grad_()
    loss = reference.multipos_ce_blocks(z64, z64, labels, labels, 1.0 / tau, 0)
    (grad,) = torch.autograd.grad(loss, z64)
    return loss.detach(), grad


def test_blocked_reference_matches_row_by_row_reference():
    z, labels = _caption_batch(60, 12, False)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    rows = reference.multipos_ce_rows(z1, z1, labels, labels, 20.0, 0)
    blocks = reference.multipos_ce_blocks(z2, z2, labels, labels, 20.0, 0, block=16)
    rows.backward()
    blocks.backward()
    assert_close(blocks, rows, rtol=1e-12, atol=1e-12, name="loss")
    assert_close(z2.grad, z1.grad, rtol=1e-10, atol=1e-12, name="grad")


GPU_MODES = {  # name: (input dtype, precision, tf32 rounding, loss tolerance, gradient tolerance)
    "tf32": (torch.float32, "tf32", "nearest", TF32_LOSS, TF32_GRAD_REL),
    "tf32-truncated": (torch.float32, "tf32", "truncate", TF32_LOSS, TF32_GRAD_REL),
    "ieee": (torch.float32, "ieee", "nearest", F32_LOSS, F32_GRAD_REL),
    "bf16": (torch.bfloat16, "tf32", "nearest", F32_LOSS, HALF_GRAD_REL[torch.bfloat16]),
    "bf16-ieee": (torch.bfloat16, "ieee", "nearest", F32_LOSS, HALF_GRAD_REL[torch.bfloat16]),
    "fp16": (torch.float16, "tf32", "nearest", F32_LOSS, HALF_GRAD_REL[torch.float16]),
}


# Every mode at N = 2048, tau = 0.1; the tensor-core modes at StableRep's N = 8192 and the
# sharper tau = 0.05 (~1 min on 2 cores: two float64 references, four emulations).
GPU_CASES = [(2048, 0.1, mode) for mode in GPU_MODES] + [
    (8192, 0.05, mode) for mode in GPU_MODES if mode not in ("ieee", "bf16-ieee")
]


@pytest.mark.parametrize("n,tau,mode", GPU_CASES)
def test_gpu_rounding_meets_the_stated_tolerances(n, tau, mode):
    dtype, precision, rounding, loss_tol, grad_rel = GPU_MODES[mode]
    half = dtype != torch.float32
    z, labels = _caption_batch(n, 256, half)
    z = z.to(dtype).requires_grad_()
    backend = GpuRoundedKernels(rounding).backend()
    loss = backend.loss(z, None, labels, None, 1.0 / tau, 0, None, precision)
    (grad,) = torch.autograd.grad(loss, z)
    ref_loss, ref_grad = _float64_reference(n, 256, half, tau)
    assert grad.dtype == dtype
    assert_close(loss, ref_loss, **loss_tol, name=f"loss ({mode})")
    _assert_grad(grad, ref_grad, grad_rel, f"grad ({mode})")


# ---- GPU: tensor cores, large N, determinism ----------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d", [(997, 130), (2048, 256)])
def test_gpu_dtypes_match_reference(dtype, n, d):
    z = _unit_rows(n, d, dtype)
    labels = (torch.arange(n) // 6).to(DEVICE)
    loss = TRITON.loss(z, None, labels, None, 10.0, 0, None, "ieee")
    (grad,) = torch.autograd.grad(loss, z)
    # The dense torch backend in float64 on the same rounded inputs (reference.py's row loop
    # is too slow at this N; test_multipos checks the two agree).
    z64 = z.detach().double().requires_grad_()
    ref_loss = REFERENCE.loss(z64, None, labels, None, 10.0, 0, None, "ieee")
    (ref_grad,) = torch.autograd.grad(ref_loss, z64)
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    _assert_grad(grad, ref_grad, HALF_GRAD_REL.get(dtype, F32_GRAD_REL))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8192, 65536])
def test_gpu_large_n_matches_chunked(n):
    z = _unit_rows(n, 256, torch.float32)
    labels = (torch.arange(n) // 6).to(DEVICE)
    loss = TRITON.loss(z, None, labels, None, 10.0, 0, None, "ieee")
    (grad,) = torch.autograd.grad(loss, z)
    ref_loss = CHUNKED.loss(z, None, labels, None, 10.0, 0, None, "ieee")
    (ref_grad,) = torch.autograd.grad(ref_loss, z)
    # Sums over up to 65536 columns in float32, in different orders: ~sqrt(N) * 2^-24 each.
    assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, name="loss")
    _assert_grad(grad, ref_grad, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backward_is_bitwise_deterministic(dtype):
    z = _unit_rows(4099, 256, dtype)
    labels = (torch.arange(4099) // 6).to(DEVICE)
    grads = [torch.autograd.grad(TRITON.loss(z, None, labels, None, 10.0, 0, None, "tf32"), z)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])
