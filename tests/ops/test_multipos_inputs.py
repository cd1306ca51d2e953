"""Inputs at the edge of what the losses take: rows too long to square in float32, and flags
passed where numbers go."""

import pytest
import torch
import torch.nn.functional as F

import reference
from helpers import assert_close
from stablerep_fast import MultiPosConLoss, MultiPosConLossMM, multipos_clip_loss, multipos_con_loss

CPU_BACKENDS = ["reference", "chunked", "torch", "cpp", "auto"]
# float32 in, float64 reference: unit rows of D = 16 over N = 12 rows (see test_multipos.py).
F32_LOSS = dict(rtol=2e-5, atol=2e-5)
F32_GRAD_REL = 1e-4  # times the largest reference gradient entry


def _labels(n: int) -> torch.Tensor:
    return torch.arange(n) // 3  # four captions of three images


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("norm", [3e19, 1e25, 1e30])
def test_rows_whose_square_overflows_float32_normalise_like_float64(backend, norm):
    """Rows of norm above sqrt(float32 max) = 1.8e19: the loss and its gradient are those of the
    same rows normalised in float64 (before, every similarity came out 0: log(N - 1), no gradient)."""
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(12, 16, generator=g, dtype=torch.float64)
    feats = (norm * direction / direction.norm(dim=1, keepdim=True)).float().requires_grad_()
    labels = _labels(12)
    loss = multipos_con_loss(feats, labels, 0.1, backend=backend)
    (grad,) = torch.autograd.grad(loss, feats)
    f = feats.detach().double().requires_grad_()
    ref_loss = reference.multipos_con_loss(f, labels, 0.1)
    (ref_grad,) = torch.autograd.grad(ref_loss, f)
    assert abs(ref_loss.item() - torch.log(torch.tensor(11.0)).item()) > 0.1  # the reference is not the failure value
    assert_close(loss.double(), ref_loss, **F32_LOSS, name="loss")
    assert_close(grad.double(), ref_grad, rtol=F32_GRAD_REL, atol=F32_GRAD_REL * ref_grad.abs().max().item(), name="grad")


def test_the_largest_float32_and_bfloat16_rows_normalise_too():
    """Rows holding float32's largest value, and bfloat16 rows of norm 1e30 (squared in float32)."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 8, generator=g)
    feats[1] = torch.finfo(torch.float32).max * torch.sign(feats[1])
    feats[2] *= 1e35
    labels = _labels(6)
    ref = reference.multipos_con_loss(feats.double(), labels, 0.1)
    assert_close(multipos_con_loss(feats, labels, 0.1, backend="torch").double(), ref, **F32_LOSS, name="float32 loss")
    half = (1e30 * torch.randn(6, 8, generator=g)).bfloat16()
    ref = reference.multipos_con_loss(half.double(), labels, 0.1)
    assert_close(multipos_con_loss(half, labels, 0.1, backend="torch").double(), ref, **F32_LOSS, name="bfloat16 loss")


@pytest.mark.parametrize("scale", [1e-20, 1e-3, 1.0, 7.0, 1e6, 1e15])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ordinary_rows_give_exactly_the_loss_of_rows_normalised_by_torch(scale, dtype):
    """The overflow-safe normalisation changes no bit where F.normalize was right (zero rows included)."""
    g = torch.Generator().manual_seed(2)
    feats = scale * torch.randn(30, 67, generator=g, dtype=dtype)
    feats[4] = 0
    labels = torch.randint(0, 8, (30,), generator=g)
    ours = multipos_con_loss(feats, labels, 0.1, backend="torch")
    torchs = multipos_con_loss(F.normalize(feats, dim=1), labels, 0.1, backend="torch", normalize=False)
    assert torch.equal(ours, torchs), (ours.item(), torchs.item())


@pytest.mark.parametrize("flag", [True, False, torch.tensor(True)])
def test_a_bool_is_not_a_temperature_or_a_logit_scale(flag):
    feats, labels = torch.randn(6, 4), _labels(6)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        multipos_con_loss(feats, labels, flag)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        MultiPosConLoss(temperature=flag)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        MultiPosConLossMM(temperature=flag)
    with pytest.raises(ValueError, match="logit_scale must be a finite number"):
        multipos_clip_loss(feats, feats, labels, labels, flag)
