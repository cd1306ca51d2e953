"""Splits of labelled rows and what both the data sources and the classifiers check on them.

``Split`` holds images or features with their labels, ``ProbeData`` a train and a test split
with the class names (what every probe source returns); ``check_splits`` is the one check of a
train/test pair (labels are class numbers, one per row, finite features of one width, every
test class among the training classes);
``stratified_split`` carves a validation split from a training split, per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stablerep_fast.errors import DataError


@dataclass
class Split:
    x: np.ndarray  # uint8 images [N, H, W, 3] or float features [N, D]
    y: np.ndarray  # int64 [N]

    @property
    def is_features(self) -> bool:
        return self.x.ndim == 2


@dataclass
class ProbeData:
    train: Split
    test: Split
    class_names: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)  # unreadable image files, left out

    def validation_split(self, fraction: float = 0.2, seed: int = 0) -> ProbeData:
        """The training split alone, cut (stratified) into a smaller training split and, in place
        of the test split, a validation split: for choosing settings without seeing test images."""
        fit, val = (rows.numpy() for rows in stratified_split(torch.as_tensor(self.train.y), fraction, seed))
        pick = lambda rows: Split(self.train.x[rows], self.train.y[rows])  # noqa: E731
        return ProbeData(pick(fit), pick(val), self.class_names, self.skipped)


def check_labels(y, where: str) -> np.ndarray:
    """int64 class labels from ``y`` [N]; DataError naming ``where`` unless they are whole numbers >= 0."""
    y = np.asarray(y)
    numeric = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    if y.ndim != 1 or not numeric:
        raise DataError(f"{where}: labels must be a 1-d array of class numbers, got {y.dtype} {list(y.shape)}")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~(np.isfinite(y) & (y == np.round(y)))
        if bad.any():
            raise DataError(f"{where}: {int(bad.sum())} labels are not whole numbers (e.g. {y[bad][0]}); "
                            "labels must be class numbers 0..C-1")  # fmt: skip
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: negative labels (e.g. {y.min()}); labels must be class numbers 0..C-1")
    return y.astype(np.int64)


def check_splits(train_x, train_y, test_x, test_y, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The int64 labels of a train and a test split, after checking (DataError naming ``where``)
    that each split is non-empty with one label per row, features are finite, both splits
    have the same feature width and every test class has training rows."""
    labels = []
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        y = check_labels(y, f"{where} ({name} labels)")
        if len(x) == 0 or len(x) != len(y):
            raise DataError(f"{where}: the {name} split has {len(x)} rows and {len(y)} labels; it needs one label per row, "
                            "and at least one row")  # fmt: skip
        if np.asarray(x).ndim == 2 and not np.isfinite(np.asarray(x)).all():
            rows = int((~np.isfinite(np.asarray(x))).any(axis=1).sum())
            raise DataError(f"{where}: {rows} {name} feature rows hold NaN or inf; fix or drop them")
        labels.append(y)
    if np.asarray(train_x).shape[1:] != np.asarray(test_x).shape[1:]:
        raise DataError(f"{where}: train rows are {list(np.shape(train_x)[1:])} but test rows {list(np.shape(test_x)[1:])}; "
                        "both splits need the same feature width (or image shape)")  # fmt: skip
    unseen = np.setdiff1d(labels[1], labels[0])
    if len(unseen):
        raise DataError(f"{where}: test classes {unseen.tolist()} have no training rows, so a probe cannot predict them; "
                        "add training rows of these classes or drop their test rows")  # fmt: skip
    return labels[0], labels[1]


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (fit, validation): ``val_fraction`` of each class (at least one) for validation."""
    g = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for c in y.unique():
        rows = (y == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        cut = max(1, round(val_fraction * len(rows))) if len(rows) > 1 else 0
        val.append(rows[:cut])
        fit.append(rows[cut:])
    return torch.cat(fit), torch.cat(val)
