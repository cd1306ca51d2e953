"""Public multi-positive contrastive losses of StableRep / StableRep+.

``multipos_con_loss`` is the image-image loss, ``multipos_clip_loss`` the image-text term,
and ``MultiPosConLoss`` / ``MultiPosConLossMM`` the drop-in modules with the reference
implementation's calling convention. Inputs are validated here; the arithmetic is done by
the backend that ``ops.dispatch`` picks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from stablerep_fast import _ext
from stablerep_fast.ops.dispatch import LoadedBackend, resolve_backend
from stablerep_fast.ops.distributed import active_group

_LOW_PRECISION = (torch.float16, torch.bfloat16)
PRECISIONS = ("tf32", "ieee")


def multipos_con_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    *,
    normalize: bool = True,
    backend: str = "auto",
    precision: str = "tf32",
    process_group=None,
) -> torch.Tensor:
    """StableRep's multi-positive contrastive loss; images of one caption are positives.

    Args:
        feats: [N, D] raw projector outputs (float32/64, float16 or bfloat16).
        labels: [N] integer caption ids.
        temperature: tau > 0; similarities are z_i . z_j / tau.
        normalize: L2-normalise ``feats`` first (the reference does); False uses them as given.
        backend: "auto", "torch", "reference", "chunked", "triton", "cpp" or "cuda".
        precision: float32 products on GPU tensor cores, "tf32" or "ieee" (exact); backends
            without tensor cores are always exact.
        process_group: gather columns over this group; by default the world group when
            torch.distributed is initialised with more than one rank.

    Returns:
        Scalar mean over the local rows of l_i = lse_{j != i} s_ij - mean_{j in P_i} s_ij
        (0 for rows without positives); float32 for half-precision inputs.
    """
    _check_features("feats", feats)
    labels = _check_labels("labels", labels, feats)
    tau = _positive_scalar("temperature", temperature)
    _check_precision(precision)
    _check_finite("feats", feats)
    impl = resolve_backend(backend, feats.device, feats.dtype, feats.shape[0] ** 2, feats.shape[1])
    loss_fn = _with_precision(impl, precision)
    z = _prepare(feats, normalize, impl.half_inputs)
    return loss_fn(z, z, labels, labels, 1.0 / tau, 0, active_group(process_group))


def multipos_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    normalize: bool = True,
    backend: str = "auto",
    precision: str = "tf32",
    process_group=None,
) -> torch.Tensor:
    """StableRep+ image-text term: multi-positive cross-entropy both ways, averaged.

    Args:
        image_emb: [N_img, E] image embeddings.
        text_emb: [N_txt, E] text embeddings.
        image_labels: [N_img] caption ids of the images.
        text_labels: [N_txt] caption ids of the texts.
        logit_scale: the multiplier s = exp(learned log-scale) > 0, as in the reference and
            OpenCLIP; a tensor keeps its gradient.
        normalize: L2-normalise both embeddings first (the reference does).
        backend, precision, process_group: as for :func:`multipos_con_loss`.

    Returns:
        0.5 * (CE(P_v, s V T^T) + CE(P_t, s T V^T)), each averaged over its local rows, where
        P_v / P_t spread each row's target uniformly over the other side's same-caption items.
    """
    _check_features("image_emb", image_emb)
    _check_features("text_emb", text_emb)
    if text_emb.shape[1] != image_emb.shape[1] or text_emb.device != image_emb.device:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} on {image_emb.device} and text_emb "
            f"{tuple(text_emb.shape)} on {text_emb.device} need the same width and device"
        )
    image_labels = _check_labels("image_labels", image_labels, image_emb)
    text_labels = _check_labels("text_labels", text_labels, text_emb)
    scale = _check_logit_scale(logit_scale)
    _check_precision(precision)
    _check_finite("image_emb", image_emb)
    _check_finite("text_emb", text_emb)
    impl = resolve_backend(
        backend, image_emb.device, image_emb.dtype, image_emb.shape[0] * text_emb.shape[0], image_emb.shape[1]
    )
    loss_fn = _with_precision(impl, precision)
    v, t = _prepare(image_emb, normalize, impl.half_inputs), _prepare(text_emb, normalize, impl.half_inputs)
    group = active_group(process_group)
    image_to_text = loss_fn(v, t, image_labels, text_labels, scale, None, group)
    text_to_image = loss_fn(t, v, text_labels, image_labels, scale, None, group)
    return 0.5 * (image_to_text + text_to_image)


class MultiPosConLoss(nn.Module):
    """Drop-in for StableRep's ``MultiPosConLoss``.

    ``forward({"feats": [N, D], "labels": [N]})`` or ``forward(feats, labels)`` returns
    ``{"loss": scalar, "image_loss": scalar}`` (the same value).
    """

    def __init__(self, temperature: float = 0.1, *, normalize: bool = True, backend: str = "auto",
                 precision: str = "tf32", process_group=None):
        super().__init__()
        self.temperature = _positive_scalar("temperature", temperature)
        _check_precision(precision)
        self.normalize, self.backend, self.precision, self.process_group = normalize, backend, precision, process_group

    def set_temperature(self, temperature: float = 0.1) -> None:
        self.temperature = _positive_scalar("temperature", temperature)

    def forward(self, outputs: Mapping | torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        if isinstance(outputs, Mapping):
            if labels is not None:
                raise ValueError("pass labels either inside the outputs dict or as an argument, not both")
            feats, labels = _require(outputs, ("feats", "labels"))
        elif labels is None:
            raise ValueError("MultiPosConLoss(feats, labels) needs labels")
        else:
            feats = outputs
        loss = multipos_con_loss(feats, labels, self.temperature, normalize=self.normalize, backend=self.backend,
                                 precision=self.precision, process_group=self.process_group)
        return {"loss": loss, "image_loss": loss}


class MultiPosConLossMM(nn.Module):
    """Drop-in for StableRep+'s ``MultiPosConLossMM``: w1 * image loss + w2 * image-text loss.

    ``forward`` takes ``{"image_feats", "image_emb", "text_emb", "image_labels", "text_labels",
    "logit_scale"}`` and returns ``{"loss", "image_loss", "img_txt_loss"}``.
    """

    KEYS = ("image_feats", "image_emb", "text_emb", "image_labels", "text_labels", "logit_scale")

    def __init__(self, temperature: float = 0.1, w1: float = 1.0, w2: float = 1.0, *,
                 backend: str = "auto", precision: str = "tf32", process_group=None):
        super().__init__()
        self.temperature = _positive_scalar("temperature", temperature)
        _check_precision(precision)
        self.w1, self.w2 = float(w1), float(w2)
        self.backend, self.precision, self.process_group = backend, precision, process_group

    def forward(self, outputs: Mapping) -> dict:
        image_feats, image_emb, text_emb, image_labels, text_labels, logit_scale = _require(outputs, self.KEYS)
        kwargs = {"backend": self.backend, "precision": self.precision, "process_group": self.process_group}
        image_loss = multipos_con_loss(image_feats, image_labels, self.temperature, **kwargs)
        img_txt_loss = multipos_clip_loss(image_emb, text_emb, image_labels, text_labels, logit_scale, **kwargs)
        loss = self.w1 * image_loss + self.w2 * img_txt_loss
        return {"loss": loss, "image_loss": image_loss, "img_txt_loss": img_txt_loss}


def _prepare(x: torch.Tensor, normalize: bool, half_inputs: bool) -> torch.Tensor:
    """L2-normalise rows (in float32 for half-precision inputs) when asked; half-precision
    rows go back to their dtype only for backends that take them (fused GPU kernels)."""
    if x.dtype not in _LOW_PRECISION:
        return F.normalize(x, dim=1, p=2, eps=1e-12) if normalize else x
    z = F.normalize(x.float(), dim=1, p=2, eps=1e-12) if normalize else x.float()
    return z.to(x.dtype) if half_inputs else z


def _with_precision(impl: LoadedBackend, precision: str):
    return functools.partial(impl.fn, precision=precision) if impl.takes_precision else impl.fn


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _require(outputs: Mapping, keys: tuple[str, ...]) -> list:
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"outputs is missing {missing}; expected keys {list(keys)}")
    return [outputs[k] for k in keys]


def _check_features(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


def _check_labels(name: str, labels: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Validate integer labels matching ``feats`` rows; returns them as int64."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer caption ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer caption ids, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(
            f"{name} must be 1-D with one id per row: got shape {tuple(labels.shape)} "
            f"for {feats.shape[0]} rows"
        )
    if labels.device != feats.device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {feats.device}")
    return labels.long()


def _positive_scalar(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if not isinstance(value, Real) or not (0 < float(value) < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_logit_scale(logit_scale: torch.Tensor | float) -> torch.Tensor | float:
    """Checks s > 0 and finite; a tensor is returned as a 0-d tensor that keeps its gradient."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
        if not torch.compiler.is_compiling():
            _positive_scalar("logit_scale", logit_scale.detach())
        return logit_scale.reshape(())
    return _positive_scalar("logit_scale", logit_scale)


def _check_finite(name: str, x: torch.Tensor) -> None:
    """Raise on NaN/inf: one pass over memory (the compiled scan on CPU), one sync on GPU."""
    if torch.compiler.is_compiling():
        return
    if x.device.type == "cpu" and x.is_contiguous() and _ext.is_built():
        finite = _ext.extension().all_finite(x.data_ptr(), x.numel(), _ext.c_dtype(x.dtype))
    else:
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or inf")
