"""Classifiers on frozen features: the linear probe (two ways) and kNN.

``method="sgd"`` is the paper's protocol on cached features: BatchNorm without affine + a
linear layer, SGD momentum 0.9, no weight decay, cosine schedule, learning rate swept.
``method="lbfgs"`` is the fast path: standardised features, full-batch L-BFGS multinomial
logistic regression, L2 strength swept. Either way the sweep is scored on a validation split
carved from the training set, the best setting is refitted on the whole training set, and the
test accuracy of that refit is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stablerep_fast.errors import ConfigError, DataError
from stablerep_fast.eval.splits import check_splits, stratified_split

SGD_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
LBFGS_L2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
METHODS = ("lbfgs", "sgd")


@dataclass
class ProbeResult:
    accuracy: float  # test accuracy of the refit with the best setting
    method: str
    best: float  # the learning rate (sgd) or L2 strength (lbfgs) chosen on validation
    val_accuracy: dict[float, float] = field(default_factory=dict)  # the sweep


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
    method: str = "lbfgs", sweep: tuple[float, ...] | None = None, epochs: int = 90, batch_size: int = 256,
    val_fraction: float = 0.2, seed: int = 0,
) -> ProbeResult:  # fmt: skip
    """Linear-probe accuracy of features [N, D] with labels [N] (see the module docstring).
    ``sweep``: learning rates (sgd) or L2 strengths (lbfgs); ``epochs``/``batch_size``: sgd only."""
    check_settings(method=method, sweep=sweep, epochs=epochs, batch_size=batch_size, val_fraction=val_fraction)
    train_y, test_y = check_splits(train_x, train_y, test_x, test_y, "linear_probe")
    classes = int(max(train_y.max(), test_y.max())) + 1
    fit: Callable[[torch.Tensor, torch.Tensor, float], Callable[[torch.Tensor], torch.Tensor]]
    if method == "sgd":
        sweep = sweep or SGD_LRS
        fit = lambda x, y, lr: _fit_sgd(x, y, classes, lr, epochs, batch_size, seed)  # noqa: E731
    else:
        sweep = sweep or LBFGS_L2
        fit = lambda x, y, l2: _fit_lbfgs(x, y, classes, l2)  # noqa: E731
    x, y = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(train_y, dtype=torch.int64)
    fit_rows, val_rows = stratified_split(y, val_fraction, seed)
    if len(val_rows) == 0 and len(sweep) > 1:
        raise DataError(f"linear_probe: no class has 2 training rows, so none can be held out to choose among the sweep "
                        f"{list(sweep)}; give at least 2 training rows per class (shapes: --per-class 2) or sweep one "
                        "setting")  # fmt: skip
    val_accuracy = {h: _accuracy(fit(x[fit_rows], y[fit_rows], h), x[val_rows], y[val_rows]) for h in sweep}
    best = max(sweep, key=lambda h: (val_accuracy[h], -sweep.index(h)))
    test = _accuracy(fit(x, y, best), torch.as_tensor(test_x, dtype=torch.float32), torch.as_tensor(test_y))
    return ProbeResult(test, method, best, val_accuracy)


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 20,
    temperature: float = 0.07,
) -> float:  # fmt: skip
    """Weighted kNN on cosine similarity: the k nearest training points vote exp(sim / T)."""
    check_settings(knn_k=k)
    train_y, test_y = check_splits(train_x, train_y, test_x, test_y, "knn_accuracy")
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    test = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.int64)
    classes = int(max(labels.max(), int(test_y.max()))) + 1
    sims, idx = (test @ train.T).topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), classes).scatter_add_(1, labels[idx], (sims / temperature).exp())
    return float((votes.argmax(1) == torch.as_tensor(test_y)).float().mean())


def check_settings(
    *, method: str = METHODS[0], sweep: tuple[float, ...] | None = None, epochs: int = 1, batch_size: int = 1,
    val_fraction: float = 0.2, knn_k: int = 1,
) -> None:  # fmt: skip
    """ConfigError naming the first probe setting that cannot work (each named as its setting
    and its ``stablerep-fast probe`` flag)."""
    bad_sweep = [h for h in sweep or () if not (math.isfinite(h) and h > 0)]
    checks = [
        (method in METHODS, f"method (--method) must be one of {METHODS}, got {method!r}"),
        (not bad_sweep, f"sweep (--sweep) values are learning rates (sgd) or L2 strengths (lbfgs) and must be > 0, "
                        f"got {list(sweep or ())}"),
        (epochs >= 1, f"epochs (--epochs) must be >= 1, got {epochs}"),
        (batch_size >= 1, f"batch_size (--batch-size) must be >= 1, got {batch_size}"),
        (0 < val_fraction < 1, f"val_fraction must be in (0, 1), got {val_fraction}"),
        (knn_k >= 1, f"knn_k (--knn-k) must be >= 1 (the neighbours that vote), got {knn_k}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _accuracy(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((predict(x).argmax(1) == y).float().mean())


def _fit_sgd(x, y, classes: int, lr: float, epochs: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False), nn.Linear(x.shape[1], classes))
    nn.init.normal_(model[1].weight, std=0.01)
    nn.init.zeros_(model[1].bias)
    steps_per_epoch = -(-len(x) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < 2:  # BatchNorm needs two rows
                continue
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def _fit_lbfgs(x, y, classes: int, l2: float, max_iter: int = 100):
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda t: ((t - mean) / std) @ weight + bias
