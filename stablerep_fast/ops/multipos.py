"""Public multi-positive contrastive losses of StableRep / StableRep+.

``multipos_con_loss`` is the image-image loss, ``multipos_clip_loss`` the image-text term,
and ``MultiPosConLoss`` / ``MultiPosConLossMM`` the drop-in modules with the reference
implementation's calling convention. Inputs are validated here; the arithmetic is done by
the backend that ``ops.dispatch`` picks.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import torch
from torch import nn

from stablerep_fast import _ext
from stablerep_fast.ops.backend import Backend
from stablerep_fast.ops.dispatch import resolve_backend
from stablerep_fast.ops.distributed import active_group

_LOW_PRECISION = (torch.float16, torch.bfloat16)
PRECISIONS = ("tf32", "ieee")
# Logits are similarities times 1/temperature (or the CLIP logit scale). Above this multiplier
# float32 logits of unit vectors carry rounding errors of order one under TF32 (1e4 x 2^-11 = 5),
# and a temperature like 1e-40 overflows float32 (inf, then NaN): every backend refuses it.
MIN_TEMPERATURE = 1e-4
MAX_LOGIT_SCALE = 1.0 / MIN_TEMPERATURE


def multipos_con_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
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
        temperature: tau >= MIN_TEMPERATURE (1e-4); similarities are z_i . z_j / tau. A tensor
            that requires grad gets its gradient (a learnable temperature).
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
    scale = 1.0 / _check_temperature(temperature)
    impl, group, (z,), (labels,) = _setup(backend, precision, normalize, process_group,
                                          ("feats", feats, "labels", labels))
    return impl.loss(z, None, labels, None, scale, 0, group, precision)


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
        logit_scale: the multiplier s = exp(learned log-scale), 0 < s <= MAX_LOGIT_SCALE (1e4),
            as in the reference and OpenCLIP; a tensor keeps its gradient.
        normalize: L2-normalise both embeddings first (the reference does).
        backend, precision, process_group: as for :func:`multipos_con_loss`.

    Returns:
        0.5 * (CE(P_v, s V T^T) + CE(P_t, s T V^T)), each averaged over its local rows, where
        P_v / P_t spread each row's target uniformly over the other side's same-caption items.
    """
    scale = _scalar("logit_scale", logit_scale, lambda s: 0 < s <= MAX_LOGIT_SCALE, f"> 0 and <= {MAX_LOGIT_SCALE:g}")
    impl, group, (v, t), (vl, tl) = _setup(
        backend, precision, normalize, process_group,
        ("image_emb", image_emb, "image_labels", image_labels), ("text_emb", text_emb, "text_labels", text_labels),
    )
    image_to_text = impl.loss(v, t, vl, tl, scale, None, group, precision)
    text_to_image = impl.loss(t, v, tl, vl, scale, None, group, precision)
    return 0.5 * (image_to_text + text_to_image)


def _setup(backend: str, precision: str, normalize: bool, process_group, *inputs) -> tuple:
    """Both losses' preamble: check every (features name, features, labels name, labels) of
    ``inputs``, pick the backend for rows = the first's and columns = the last's (of every
    rank), normalise. Returns (backend record, process group or None, features, int64 labels).
    """
    _check_precision(precision)
    labels = []
    for name, x, labels_name, y in inputs:
        _check_features(name, x)
        labels.append(_check_labels(labels_name, y, x))
    (first_name, first, *_), (last_name, last, *_) = inputs[0], inputs[-1]
    if last.shape[1] != first.shape[1] or last.device != first.device:
        raise ValueError(
            f"{first_name} {tuple(first.shape)} on {first.device} and {last_name} "
            f"{tuple(last.shape)} on {last.device} need the same width and device"
        )
    for name, x, *_ in inputs:
        _check_finite(name, x)
    group = active_group(process_group)
    world = 1 if group is None else torch.distributed.get_world_size(group)
    logits = first.shape[0] * last.shape[0] * world
    impl = resolve_backend(backend, first.device, first.dtype, logits, first.shape[1], precision)
    return impl, group, [_prepare(x, normalize, impl) for _, x, *_ in inputs], labels


class MultiPosConLoss(nn.Module):
    """Drop-in for StableRep's ``MultiPosConLoss``.

    ``forward({"feats": [N, D], "labels": [N]})`` or ``forward(feats, labels)`` returns
    ``{"loss": scalar, "image_loss": scalar}`` (the same value).
    """

    def __init__(self, temperature: float | torch.Tensor = 0.1, *, normalize: bool = True, backend: str = "auto",
                 precision: str = "tf32", process_group=None):
        super().__init__()
        _check_temperature(temperature)
        _check_precision(precision)
        self.temperature = temperature  # a Parameter stays one (learnable)
        self.normalize, self.backend, self.precision, self.process_group = normalize, backend, precision, process_group

    def set_temperature(self, temperature: float | torch.Tensor = 0.1) -> None:
        _check_temperature(temperature)
        self.temperature = temperature

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

    def __init__(self, temperature: float | torch.Tensor = 0.1, w1: float = 1.0, w2: float = 1.0, *,
                 backend: str = "auto", precision: str = "tf32", process_group=None):
        super().__init__()
        _check_temperature(temperature)
        _check_precision(precision)
        self.temperature = temperature  # a Parameter stays one (learnable)
        self.w1, self.w2 = float(w1), float(w2)
        self.backend, self.precision, self.process_group = backend, precision, process_group

    def forward(self, outputs: Mapping) -> dict:
        image_feats, image_emb, text_emb, image_labels, text_labels, logit_scale = _require(outputs, self.KEYS)
        kwargs = {"backend": self.backend, "precision": self.precision, "process_group": self.process_group}
        image_loss = multipos_con_loss(image_feats, image_labels, self.temperature, **kwargs)
        img_txt_loss = multipos_clip_loss(image_emb, text_emb, image_labels, text_labels, logit_scale, **kwargs)
        loss = self.w1 * image_loss + self.w2 * img_txt_loss
        return {"loss": loss, "image_loss": image_loss, "img_txt_loss": img_txt_loss}


def _prepare(x: torch.Tensor, normalize: bool, impl: Backend) -> torch.Tensor:
    """L2-normalise rows (in float32 for half-precision inputs) when asked; half-precision
    rows go back to their dtype only for backends that take them (fused GPU kernels)."""
    if x.dtype not in _LOW_PRECISION:
        return _unit_rows(x) if normalize else x
    z = _unit_rows(x.float()) if normalize else x.float()
    return z.to(x.dtype) if impl.half_inputs else z


def _unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1, eps=eps)`` that also holds for rows whose squared norm overflows
    (float32 rows of norm above 1.8e19 would otherwise become 0: every similarity 0, no gradient).
    Each row is first scaled by the power of two that brings its largest entry to at most 1, an
    exact scaling that leaves the normalised row's bits as F.normalize gives them."""
    peak = x.detach().abs().amax(dim=1, keepdim=True)
    scale = torch.exp2(-torch.log2(peak).ceil().clamp(min=0))  # 1 for rows with entries <= 1 (and zero rows)
    y = x * scale
    return y / torch.maximum(torch.linalg.vector_norm(y, dim=1, keepdim=True), eps * scale)


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


def _check_temperature(temperature: float | torch.Tensor) -> torch.Tensor | float:
    """Checks MIN_TEMPERATURE <= tau < inf; a tensor comes back 0-d and keeps its gradient."""
    return _scalar("temperature", temperature, lambda t: MIN_TEMPERATURE <= t < float("inf"),
                   f">= {MIN_TEMPERATURE:g}")


def _scalar(name: str, value, valid, rule: str) -> torch.Tensor | float:
    """``value`` (a number or one-element tensor) checked by ``valid``; ValueError saying ``rule``
    otherwise. A tensor is returned as a 0-d tensor that keeps its gradient; while compiling,
    its value is not read (that would break the graph)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        if torch.compiler.is_compiling():
            return value.reshape(())
        number = value.detach().item()
    else:
        number = value
    if isinstance(number, bool) or not isinstance(number, Real) or not valid(float(number)):
        raise ValueError(f"{name} must be a finite number {rule}, got {number!r}")
    return value.reshape(()) if isinstance(value, torch.Tensor) else float(number)


def _check_finite(name: str, x: torch.Tensor) -> None:
    """Raise on NaN/inf: one pass over memory (the compiled scan on CPU), one sync on GPU."""
    if torch.compiler.is_compiling():
        return
    if x.device.type == "cpu" and x.is_contiguous() and _ext.is_built():
        finite = _ext.extension().all_finite(data_ptr=x.data_ptr(), numel=x.numel(), dtype=_ext.c_dtype(x.dtype))
    else:
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or inf")
