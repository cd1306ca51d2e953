"""Evaluation stage: frozen features -> linear probe (paper protocol or fast L-BFGS) and kNN.

    evaluate(encoder, data, config) -> dict     probe + kNN accuracy of an encoder on ProbeData
    load_probe_data(source)                     ImageFolder tree, .npz, or "shapes[:ATTRIBUTE]"
    extract_features, linear_probe, knn_accuracy
"""

from __future__ import annotations

from stablerep_fast._deps import require_extra

require_extra("eval")  # before the imports that need it: one line, not a traceback

from dataclasses import dataclass

from torch import nn

from stablerep_fast.eval.data import ProbeData, Split, load_probe_data
from stablerep_fast.eval.features import extract_features
from stablerep_fast.eval.probe import METHODS, ProbeResult, knn_accuracy, linear_probe


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


def evaluate(encoder: nn.Module | None, data: ProbeData, config: ProbeConfig, *, image_size: int | None = None) -> dict:
    """Probe and kNN accuracy; ``encoder`` maps images to features (None when ``data`` holds features)."""
    train, test = data.train, data.test
    if not (train.is_features and test.is_features):
        if encoder is None or image_size is None:
            raise ValueError("image data needs an encoder and its image_size")
        features = dict(image_size=image_size, batch_size=config.batch_size, device=config.device)
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


__all__ = [
    "METHODS",
    "ProbeConfig",
    "ProbeData",
    "ProbeResult",
    "Split",
    "evaluate",
    "extract_features",
    "knn_accuracy",
    "linear_probe",
    "load_probe_data",
]
