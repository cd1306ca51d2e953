"""Evaluation stage: frozen features -> linear probe (paper protocol or fast L-BFGS) and kNN.

    evaluate(encoder, data, config) -> dict     probe + kNN accuracy of an encoder on ProbeData
    probe_checkpoint(data, checkpoint, config)  the same for a ``train`` checkpoint's backbone
    load_probe_data(source)                     ImageFolder tree, .npz, or "shapes[:ATTRIBUTE]"
    extract_features, linear_probe, knn_accuracy
"""

from __future__ import annotations

from stablerep_fast._deps import require_extra

require_extra("eval")  # before the imports that need it: one line, not a traceback

from stablerep_fast.eval.data import load_probe_data
from stablerep_fast.eval.features import extract_features
from stablerep_fast.eval.probe import METHODS, ProbeResult, knn_accuracy, linear_probe
from stablerep_fast.eval.run import ProbeConfig, evaluate, probe_checkpoint
from stablerep_fast.eval.splits import ProbeData, Split

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
    "probe_checkpoint",
]
