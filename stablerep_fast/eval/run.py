"""``evaluate`` and ``probe_checkpoint``: frozen features -> linear probe and kNN, with their settings.

What ``stablerep-fast probe`` runs once the command line is parsed; callable from Python with
the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stablerep_fast.errors import ConfigError, check_device, first_line
from stablerep_fast.eval.data import check_image_size, load_probe_data
from stablerep_fast.eval.features import extract_features
from stablerep_fast.eval.probe import check_settings, knn_accuracy, linear_probe
from stablerep_fast.eval.splits import ProbeData, Split


@dataclass
class ProbeConfig:
    """How to probe; ``sweep`` None: the method's default learning rates or L2 strengths."""

    method: str = "lbfgs"
    sweep: tuple[float, ...] | None = None
    epochs: int = 90  # sgd
    batch_size: int = 256  # sgd, and feature extraction
    knn_k: int = 20
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_settings(method=self.method, sweep=self.sweep, epochs=self.epochs, batch_size=self.batch_size,
                       val_fraction=self.val_fraction, knn_k=self.knn_k)  # fmt: skip


def evaluate(encoder: nn.Module | None, data: ProbeData, config: ProbeConfig, *, image_size: int | None = None) -> dict:
    """Probe and kNN accuracy; ``encoder`` maps images to features (None when ``data`` holds features)."""
    device = check_device(config.device)
    train, test = data.train, data.test
    if not (train.is_features and test.is_features):
        if encoder is None or image_size is None:
            raise ConfigError("the probe data holds images, not features: pass an encoder and its image_size "
                              "(stablerep-fast probe: --checkpoint), or give a features .npz")  # fmt: skip
        features = dict(image_size=image_size, batch_size=config.batch_size, device=device)
        train = Split(extract_features(encoder, train.x, **features), train.y)
        test = Split(extract_features(encoder, test.x, **features), test.y)
    probe = linear_probe(train.x, train.y, test.x, test.y, method=config.method, sweep=config.sweep,
                         epochs=config.epochs, batch_size=config.batch_size, val_fraction=config.val_fraction,
                         seed=config.seed)  # fmt: skip
    return {
        "probe_acc": probe.accuracy,
        "knn_acc": knn_accuracy(train.x, train.y, test.x, test.y, k=config.knn_k),
        "method": probe.method,
        "best": probe.best,
        "val_acc": {str(k): v for k, v in probe.val_accuracy.items()},
        "train_size": len(train.y),
        "test_size": len(test.y),
        "feature_dim": int(train.x.shape[1]),
        "skipped_images": len(data.skipped),  # unreadable image files left out (named in the log)
    }


def probe_checkpoint(
    data: str,
    checkpoint: str | Path | None = None,
    config: ProbeConfig | None = None,
    *,
    image_size: int | None = None,
    per_class: int = 100,
) -> dict:
    """``evaluate`` of a ``train`` checkpoint's frozen backbone on ``data`` (see load_probe_data).

    checkpoint: None when ``data`` holds features already (a features .npz)
    config:     how to probe (default ProbeConfig()); its seed also draws the shapes probe set
    image_size: the probe images' side (default: the checkpoint's training size, else 64)
    per_class:  shapes: training images per class
    """
    config = config or ProbeConfig()
    check_device(config.device)  # before the checkpoint and the data are read
    if image_size is not None:
        check_image_size(image_size)
    encoder = None
    if checkpoint is not None:
        from stablerep_fast.train import load_model  # only here: probing features needs no trainer

        model, train_config = load_model(checkpoint)
        encoder = model.backbone
        if image_size is not None and image_size != train_config.image_size:
            _check_backbone_takes(encoder, image_size, f"{checkpoint} (trained at {train_config.image_size} px)")
        image_size = image_size or train_config.image_size
    probe_data = load_probe_data(data, image_size=image_size or 64, per_class=per_class, seed=config.seed)
    return evaluate(encoder, probe_data, config, image_size=image_size)


def _check_backbone_takes(encoder: nn.Module, image_size: int, what: str) -> None:
    """ConfigError naming ``what`` when ``encoder`` fails on one ``image_size``-px image (a ViT
    built for one size refuses others; a CNN takes any)."""
    try:
        with torch.inference_mode():
            encoder.eval()(torch.zeros(1, 3, image_size, image_size))
    except (AssertionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"the backbone of {what} does not take {image_size}-px images ({first_line(exc)}); "
                          "leave --image-size unset to probe at its training size")  # fmt: skip
