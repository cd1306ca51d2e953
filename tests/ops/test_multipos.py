"""multipos_con_loss / multipos_clip_loss and the drop-in modules against tests/reference.py."""

import dataclasses
import math

import pytest
import torch

import reference
import stablerep_fast
from helpers import assert_close
from stablerep_fast import MultiPosConLoss, MultiPosConLossMM, multipos_clip_loss, multipos_con_loss
from stablerep_fast.ops import multipos_torch

# float64 in, float64 out: only summation order differs from the row-by-row reference.
F64 = dict(rtol=1e-10, atol=1e-12)
# float32: unit-vector dot products over D <= 130 and N <= 100 rows accumulate ~1e-6 error.
F32_LOSS = dict(rtol=2e-5, atol=2e-5)
F32_GRAD_REL = 1e-4  # times the largest reference gradient entry

# Every backend that runs on CPU in float64/float32 (the fused ones have their own files too).
BACKENDS = ["reference", "chunked", "chunked-tiny", "torch", "auto", "cpp"]
SHAPES = [  # (N, D, number of captions)
    (2, 1, 1),
    (7, 3, 3),
    (33, 17, 10),
    (64, 130, 12),
    (97, 5, 40),
]


@pytest.fixture
def backend_name(request, monkeypatch):
    """Backend names plus "chunked-tiny": chunks of a few rows, so every chunk seam is crossed."""
    name = request.param
    if name == "chunked-tiny":
        monkeypatch.setattr(multipos_torch, "CHUNK_ELEMENTS", 64)
        return "chunked"
    return name


def _inputs(n, d, captions, dtype=torch.float64, scale=1.0):
    feats = (scale * torch.randn(n, d, dtype=torch.float64)).to(dtype).requires_grad_()
    labels = torch.randint(0, captions, (n,))
    return feats, labels


def _reference_loss_and_grad(feats, labels, temperature, normalize=True):
    f = feats.detach().double().requires_grad_()
    loss = reference.multipos_con_loss(f, labels, temperature, normalize_feats=normalize)
    (grad,) = torch.autograd.grad(loss, f)
    return loss.detach(), grad


def _loss_and_grad(feats, labels, temperature, **kwargs):
    feats.grad = None
    loss = multipos_con_loss(feats, labels, temperature, **kwargs)
    loss.backward()
    return loss.detach(), feats.grad


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
@pytest.mark.parametrize("n,d,captions", SHAPES)
def test_con_loss_float64_matches_reference(backend_name, n, d, captions):
    feats, labels = _inputs(n, d, captions)
    loss, grad = _loss_and_grad(feats, labels, 0.1, backend=backend_name)
    ref_loss, ref_grad = _reference_loss_and_grad(feats, labels, 0.1)
    assert loss.dtype == torch.float64
    assert_close(loss, ref_loss, **F64, name="loss")
    assert_close(grad, ref_grad, **F64, name="grad")


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
@pytest.mark.parametrize("n,d,captions", SHAPES[1:])
def test_con_loss_float32_matches_reference(backend_name, n, d, captions):
    feats, labels = _inputs(n, d, captions, dtype=torch.float32)
    loss, grad = _loss_and_grad(feats, labels, 0.1, backend=backend_name)
    ref_loss, ref_grad = _reference_loss_and_grad(feats, labels, 0.1)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    assert_close(grad, ref_grad, rtol=0, atol=F32_GRAD_REL * ref_grad.abs().max().item(), name="grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend_name", ["reference", "chunked", "cpp"], indirect=True)
def test_con_loss_half_precision_computes_in_float32(dtype, backend_name):
    feats, labels = _inputs(40, 24, 8, dtype=dtype)
    loss, grad = _loss_and_grad(feats, labels, 0.1, backend=backend_name)
    # Same (rounded) inputs in float64: only float32 compute error remains.
    ref_loss, ref_grad = _reference_loss_and_grad(feats, labels, 0.1)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, ref_loss, **F32_LOSS, name="loss")
    # The gradient is rounded to the input dtype: 2^-8 (bf16) / 2^-11 (fp16) relative.
    rel = 2**-7 if dtype == torch.bfloat16 else 2**-10
    assert_close(grad, ref_grad, rtol=rel, atol=rel * ref_grad.abs().max().item(), name="grad")


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
def test_no_positives_anywhere_gives_zero_loss_and_gradient(backend_name):
    feats = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    loss, grad = _loss_and_grad(feats, torch.arange(9), 0.1, backend=backend_name)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
def test_single_row_gives_zero(backend_name):
    feats = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    loss, grad = _loss_and_grad(feats, torch.zeros(1, dtype=torch.long), 0.1, backend=backend_name)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
def test_all_one_caption(backend_name):
    feats, _ = _inputs(20, 6, 1)
    labels = torch.full((20,), 7)
    loss, grad = _loss_and_grad(feats, labels, 0.1, backend=backend_name)
    ref_loss, ref_grad = _reference_loss_and_grad(feats, labels, 0.1)
    # Every other row is a positive: l_i = lse_i - mean_j s_ij >= 0 (log-sum-exp >= mean).
    assert loss.item() >= math.log(19) - 1e-12
    assert_close(loss, ref_loss, **F64, name="loss")
    assert_close(grad, ref_grad, **F64, name="grad")


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
def test_singletons_mixed_with_groups(backend_name):
    feats, _ = _inputs(12, 8, 1)
    labels = torch.tensor([100, 5, 5, 5, -3, 42, 42, 7, 8, 9, 5, 42])  # 100, -3, 7, 8, 9: singletons
    loss, grad = _loss_and_grad(feats, labels, 0.1, backend=backend_name)
    ref_loss, ref_grad = _reference_loss_and_grad(feats, labels, 0.1)
    assert_close(loss, ref_loss, **F64, name="loss")
    assert_close(grad, ref_grad, **F64, name="grad")
    # Singleton rows still count in the mean but only receive gradient as others' negatives.
    loss_groups_only = reference.multipos_con_loss(feats.detach(), labels, 0.1)
    assert_close(loss, loss_groups_only, **F64, name="loss (anchors without positives count in N)")


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
@pytest.mark.parametrize("normalize", [True, False])
def test_small_temperature_with_large_norms_is_finite_and_exact(backend_name, normalize):
    # normalize=False with norms ~30 and tau = 0.01 gives logits ~1e5: exp overflows if unstable.
    feats, labels = _inputs(24, 10, 6, scale=1e4 if normalize else 10.0)
    loss, grad = _loss_and_grad(feats, labels, 0.01, backend=backend_name, normalize=normalize)
    ref_loss, ref_grad = _reference_loss_and_grad(feats, labels, 0.01, normalize=normalize)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_close(loss, ref_loss, rtol=1e-10, atol=1e-8, name="loss")
    assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9 * ref_grad.abs().max().item(), name="grad")


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
def test_learnable_temperature_gets_its_gradient(backend_name):
    feats, labels = _inputs(33, 17, 10)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    loss = multipos_con_loss(feats, labels, tau, backend=backend_name)
    grads = torch.autograd.grad(loss, (feats, tau))
    f, t = feats.detach().clone().requires_grad_(), tau.detach().clone().requires_grad_()
    ref = reference.multipos_con_loss(f, labels, t)
    ref_grads = torch.autograd.grad(ref, (f, t))
    assert_close(loss, ref, **F64, name="loss")
    for got, want, name in zip(grads, ref_grads, ("d feats", "d temperature")):
        assert_close(got, want, **F64, name=name)


def test_modules_keep_a_temperature_parameter_learnable():
    feats, labels = _inputs(16, 8, 4)
    module = MultiPosConLoss(temperature=torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64)))
    assert [name for name, _ in module.named_parameters()] == ["temperature"]
    module(feats, labels)["loss"].backward()
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    reference.multipos_con_loss(feats.detach(), labels, t).backward()
    assert_close(module.temperature.grad, t.grad, **F64, name="d temperature")


# The Triton interpreter's numpy warns where the kernels mean to produce inf (exp2 of masked logits).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["auto", *stablerep_fast.available_backends("cpu", torch.float32)])
def test_temperature_below_the_minimum_is_refused_by_every_backend(backend):
    feats, labels = torch.randn(24, 10), torch.arange(24) // 4
    for tau in (1e-40, torch.tensor(1e-40), torch.tensor(0.5e-4, requires_grad=True)):
        with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0.0001"):
            multipos_con_loss(feats, labels, tau, backend=backend)
    with pytest.raises(ValueError, match=r"logit_scale must be a finite number > 0 and <= 10000"):
        multipos_clip_loss(feats, feats[:6], labels, labels[:6], 1e40, backend=backend)
    # At the minimum: finite, and the float32 value agrees with float64 to float32 accuracy at
    # logits of 1e4 (relative 2^-24 of each logit).
    feats.requires_grad_()
    loss = multipos_con_loss(feats, labels, stablerep_fast.ops.multipos.MIN_TEMPERATURE, backend=backend)
    (grad,) = torch.autograd.grad(loss, feats)
    f64 = feats.detach().double().requires_grad_()
    ref = reference.multipos_con_loss(f64, labels, 1e-4)
    (ref_grad,) = torch.autograd.grad(ref, f64)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_close(loss, ref, rtol=1e-5, atol=1e-2, name="loss at the minimum temperature")
    assert_close(grad, ref_grad, rtol=0, atol=1e-2 * ref_grad.abs().max().item(), name="grad")


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
def test_chunked_gradcheck(chunk, monkeypatch):
    z = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 0])
    monkeypatch.setattr(multipos_torch, "CHUNK_ELEMENTS", chunk * 11)  # chunks of `chunk` rows

    def f(z):
        return multipos_torch.CHUNKED.loss(z, None, labels, None, 7.0, 0, None, "ieee")

    assert torch.autograd.gradcheck(f, (z,))


def test_chunked_gradcheck_symmetric_with_learnable_scale(monkeypatch):
    # Rows are the columns (one symmetric backward pass) and the scale needs its gradient.
    z = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 0])
    monkeypatch.setattr(multipos_torch, "CHUNK_ELEMENTS", 3 * 11)
    assert torch.autograd.gradcheck(lambda z, s: multipos_torch.CHUNKED.loss(z, None, labels, None, s, 0, None, "ieee"),
                                    (z, scale))


def test_chunked_gradcheck_rows_against_other_columns_with_scale(monkeypatch):
    # Distinct rows/columns, an excluded diagonal and a learnable scale: the general form the
    # distributed and image-text paths use.
    rows = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    cols = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    row_labels, col_labels = torch.tensor([1, 2, 2, 9]), torch.tensor([0, 1, 2, 1, 2, 2, 9, 1, 3])
    monkeypatch.setattr(multipos_torch, "CHUNK_ELEMENTS", 3 * 9)  # chunks of 3 rows

    def f(rows, cols, scale):
        return multipos_torch.CHUNKED.loss(rows, cols, row_labels, col_labels, scale, 3, None, "ieee")

    assert torch.autograd.gradcheck(f, (rows, cols, scale))


def test_reference_backend_gradcheck():
    feats = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    assert torch.autograd.gradcheck(lambda f: multipos_con_loss(f, labels, 0.2, backend="reference"), (feats,))


def test_torch_backend_switches_to_chunked_when_large(monkeypatch):
    from stablerep_fast.ops import dispatch

    calls = []
    real = multipos_torch.CHUNKED
    spy = dataclasses.replace(real, lse=lambda *a: calls.append(1) or real.lse(*a))
    monkeypatch.setattr(multipos_torch, "CHUNKED", spy)
    monkeypatch.setattr(dispatch, "CHUNKED", spy)
    monkeypatch.setattr(dispatch, "DENSE_MAX_LOGITS", 100)
    feats, labels = _inputs(11, 3, 4)
    loss = multipos_con_loss(feats, labels, backend="torch")  # 121 logits > 100
    assert calls == [1]
    assert_close(loss, reference.multipos_con_loss(feats.detach(), labels, 0.1), **F64, name="chunked loss")
    multipos_con_loss(feats[:10], labels[:10], backend="torch")  # 100 logits: dense
    assert calls == [1]


# ---- image-text term -------------------------------------------------------------------------

def _clip_inputs(captions=5, images_per_caption=3, e=12, dtype=torch.float64):
    image_labels = torch.arange(captions).repeat(images_per_caption)
    text_labels = torch.cat([torch.arange(captions), torch.tensor([captions + 10])])  # one text without images
    image_emb = torch.randn(len(image_labels), e, dtype=dtype, requires_grad=True)
    text_emb = torch.randn(len(text_labels), e, dtype=dtype, requires_grad=True)
    return image_emb, text_emb, image_labels, text_labels


@pytest.mark.parametrize("backend_name", BACKENDS, indirect=True)
def test_clip_loss_matches_reference_with_scale_gradient(backend_name):
    image_emb, text_emb, image_labels, text_labels = _clip_inputs()
    scale = torch.tensor(14.3, dtype=torch.float64, requires_grad=True)
    loss = multipos_clip_loss(image_emb, text_emb, image_labels, text_labels, scale, backend=backend_name)
    grads = torch.autograd.grad(loss, (image_emb, text_emb, scale))
    inputs = [x.detach().clone().requires_grad_() for x in (image_emb, text_emb, scale)]
    ref = reference.multipos_clip_loss(inputs[0], inputs[1], image_labels, text_labels, inputs[2])
    ref_grads = torch.autograd.grad(ref, inputs)
    assert_close(loss, ref, **F64, name="loss")
    for got, want, name in zip(grads, ref_grads, ("d image_emb", "d text_emb", "d logit_scale")):
        assert_close(got, want, **F64, name=name)


def test_clip_loss_accepts_python_float_scale():
    image_emb, text_emb, image_labels, text_labels = _clip_inputs()
    loss = multipos_clip_loss(image_emb, text_emb, image_labels, text_labels, 10.0)
    ref = reference.multipos_clip_loss(image_emb.detach(), text_emb.detach(), image_labels, text_labels, 10.0)
    assert_close(loss, ref, **F64, name="loss")


# ---- drop-in modules -------------------------------------------------------------------------

def test_multiposconloss_module_conventions():
    feats, labels = _inputs(16, 8, 4)
    module = MultiPosConLoss(temperature=0.2)
    out = module({"feats": feats, "labels": labels})
    assert set(out) == {"loss", "image_loss"} and out["loss"] is out["image_loss"]
    assert_close(out["loss"], reference.multipos_con_loss(feats.detach(), labels, 0.2), **F64, name="dict call")
    assert_close(module(feats, labels)["loss"], out["loss"], **F64, name="positional call")
    module.set_temperature(0.5)
    assert_close(module(feats, labels)["loss"], reference.multipos_con_loss(feats.detach(), labels, 0.5), **F64)
    with pytest.raises(ValueError, match="needs labels"):
        module(feats)
    with pytest.raises(KeyError, match="labels"):
        module({"feats": feats})


def test_multiposconlossmm_combines_terms_with_weights():
    image_emb, text_emb, image_labels, text_labels = _clip_inputs()
    image_feats = torch.randn(len(image_labels), 7, dtype=torch.float64)
    outputs = dict(image_feats=image_feats, image_emb=image_emb, text_emb=text_emb,
                   image_labels=image_labels, text_labels=text_labels, logit_scale=torch.tensor(20.0))
    out = MultiPosConLossMM(temperature=0.1, w1=0.7, w2=1.9)(outputs)
    image_loss = reference.multipos_con_loss(image_feats, image_labels, 0.1)
    img_txt = reference.multipos_clip_loss(image_emb.detach(), text_emb.detach(), image_labels, text_labels, 20.0)
    assert_close(out["image_loss"], image_loss, **F64, name="image_loss")
    assert_close(out["img_txt_loss"], img_txt, **F64, name="img_txt_loss")
    assert_close(out["loss"], 0.7 * image_loss + 1.9 * img_txt, **F64, name="loss")
    with pytest.raises(KeyError, match="logit_scale"):
        MultiPosConLossMM()({k: v for k, v in outputs.items() if k != "logit_scale"})


# ---- input validation and backend selection ----------------------------------------------------

@pytest.mark.parametrize(
    "feats,labels,temperature,error,match",
    [
        (torch.randn(4, 3), torch.arange(5), 0.1, ValueError, "one id per row"),
        (torch.randn(4), torch.arange(4), 0.1, ValueError, "2-D"),
        (torch.randn(2, 4, 3), torch.arange(2), 0.1, ValueError, "2-D"),
        (torch.randn(0, 3), torch.arange(0), 0.1, ValueError, "at least one row"),
        (torch.randn(4, 3), torch.zeros(4), 0.1, TypeError, "integer caption ids"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.bool), 0.1, TypeError, "integer caption ids"),
        (torch.arange(12).view(4, 3), torch.arange(4), 0.1, TypeError, "floating point"),
        (torch.randn(4, 3), torch.arange(4), 0.0, ValueError, "temperature"),
        (torch.randn(4, 3), torch.arange(4), -0.1, ValueError, "temperature"),
        (torch.randn(4, 3), torch.arange(4), float("nan"), ValueError, "temperature"),
    ],
)
def test_bad_inputs_raise_clear_errors(feats, labels, temperature, error, match):
    with pytest.raises(error, match=match):
        multipos_con_loss(feats, labels, temperature)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_non_finite_features_are_rejected(bad, dtype):
    feats = torch.randn(6, 5).to(dtype)
    feats[4, 2] = bad
    with pytest.raises(ValueError, match="feats contains NaN or inf"):
        multipos_con_loss(feats, torch.arange(6) // 2)
    with pytest.raises(ValueError, match="NaN or inf"):  # non-contiguous input takes the torch check
        multipos_con_loss(feats.T.contiguous().T, torch.arange(6) // 2)


def test_unknown_and_unavailable_backends():
    feats, labels = torch.randn(4, 3), torch.arange(4)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        multipos_con_loss(feats, labels, backend="fast")
    unavailable = [b for b in ("triton", "cpp", "cuda") if b not in stablerep_fast.available_backends("cpu")]
    for name in unavailable:
        with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run"):
            multipos_con_loss(feats, labels, backend=name)


def test_clip_loss_validation():
    image_emb, text_emb, image_labels, text_labels = _clip_inputs()
    with pytest.raises(ValueError, match="same width"):
        multipos_clip_loss(image_emb, text_emb[:, :5], image_labels, text_labels, 10.0)
    with pytest.raises(ValueError, match="logit_scale"):
        multipos_clip_loss(image_emb, text_emb, image_labels, text_labels, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="text_labels"):
        multipos_clip_loss(image_emb, text_emb, image_labels, text_labels[:-1], 10.0)


def test_available_backends_on_cpu_include_torch_variants():
    names = stablerep_fast.available_backends("cpu", torch.float32)
    assert {"torch", "reference", "chunked"} <= set(names)


def test_auto_passes_over_backends_that_cannot_take_the_width(monkeypatch):
    from stablerep_fast.ops import dispatch

    narrow = dataclasses.replace(multipos_torch.CHUNKED, name="narrow", max_d=256)
    monkeypatch.setitem(dispatch._RECORDS, "narrow", narrow)
    monkeypatch.setitem(dispatch.AUTO_ORDER, "cpu", ("narrow",))
    dev = torch.device("cpu")
    assert dispatch.resolve_backend("auto", dev, torch.float32, 10**6, 256).name == "narrow"
    # Past the width: "torch", which is the chunked kernels at 10^7 logits, the dense reference at 10^3.
    assert dispatch.resolve_backend("auto", dev, torch.float32, 10**7, 257).name == "chunked"
    assert dispatch.resolve_backend("auto", dev, torch.float32, 10**3, 257).name == "reference"
