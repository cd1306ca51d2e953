"""Labelled probe sets: the shapes generator's images, whose attributes are known, and real
handwritten digits (scikit-learn's 1,797 scans, bundled with it: nothing to download).

The digit scans come with one fixed train/test split (stratified, a third of each class for
testing, seed ``DIGIT_SPLIT_SEED``), apart from every setting a run tunes; choose settings on
``real_digits(size, validation=True)`` (a held-out part of the training split) and report the
test split once. ``few_shot`` keeps k training images per class for the k-shot probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stablerep_fast._deps import require_extra
from stablerep_fast.eval.splits import ProbeData, Split, stratified_split
from stablerep_fast.generate.models.protocol import to_uint8_images
from stablerep_fast.generate.models.shapes import LATENT_DIM, VOCABULARY, Attributes, render

_PROBE_STREAM = 0x5EED  # keeps probe sets apart from every generation run's noise


@dataclass(frozen=True)
class ProbeSet:
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N], indices into class_names
    class_names: tuple[str, ...]
    captions: list[str]  # each names all five attributes


def make_probe_set(
    n_per_class: int, *, label: str = "shape", seed: int = 0, resolution: int = 64, size: int | None = None
) -> ProbeSet:
    """A labelled set for linear probing: ``n_per_class`` images per value of attribute
    ``label`` ("shape", "colour", "texture", "size" or "background"), the other attributes and
    the nuisance variables drawn at random. Its randomness is a stream of its own, apart from
    every generation run; use different seeds for the probe's train and test sets."""
    if label not in VOCABULARY:
        raise ValueError(f"label must be one of {list(VOCABULARY)}, got {label!r}")
    rng = np.random.default_rng([_PROBE_STREAM, seed])
    class_names = VOCABULARY[label]
    captions, latents, labels = [], [], []
    for class_index, value in enumerate(class_names):
        for _ in range(n_per_class):
            picked = {name: choices[rng.integers(len(choices))] for name, choices in VOCABULARY.items()}
            picked[label] = value
            captions.append(Attributes(**picked).caption)
            latents.append(rng.standard_normal(LATENT_DIM))
            labels.append(class_index)
    rendered = torch.from_numpy(np.stack([render(c, z, resolution) for c, z in zip(captions, latents)]))
    images = to_uint8_images(rendered, size or resolution)
    return ProbeSet(images, np.array(labels, dtype=np.int64), class_names, captions)


DIGIT_CLASSES = tuple(str(d) for d in range(10))
DIGIT_TEST_FRACTION = 1 / 3
DIGIT_SPLIT_SEED = 0  # fixed: the test split never moves with a run's seed or settings
DIGIT_INK_LEVELS = 16  # the scans' grey levels: 0 (paper) to 16 (ink)


def digit_scans(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's digit scans: images uint8 [1797, size, size, 3], grey, ink bright
    (as the digits generator draws), resized bilinearly from 8 x 8; labels int64 [1797], 0-9."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    require_extra("eval", {"sklearn": "scikit-learn"})
    from sklearn.datasets import load_digits

    scans = load_digits()
    images = torch.as_tensor(scans.images, dtype=torch.float32)[:, None] / DIGIT_INK_LEVELS
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    grey = (images.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0]
    return grey[..., None].expand(-1, -1, -1, 3).numpy().copy(), np.asarray(scans.target, dtype=np.int64)


def real_digits(size: int = 32, *, validation: bool = False, val_fraction: float = 0.2, seed: int = 0) -> ProbeData:
    """The digit scans at ``size`` pixels, split into train (2/3) and test (1/3) the same way
    every time. ``validation``: the training split alone, cut by ``ProbeData.validation_split``
    (``val_fraction`` of each class, ``seed``) into a smaller training split and a validation
    split in place of the test split."""
    images, labels = digit_scans(size)
    split = stratified_split(torch.as_tensor(labels), DIGIT_TEST_FRACTION, DIGIT_SPLIT_SEED)
    train, test = (np.sort(rows.numpy()) for rows in split)
    data = ProbeData(Split(images[train], labels[train]), Split(images[test], labels[test]), DIGIT_CLASSES)
    return data.validation_split(val_fraction, seed) if validation else data


def few_shot(data: ProbeData, shots: int = 10, seed: int = 0) -> ProbeData:
    """``data`` with ``shots`` training rows per class (chosen with ``seed``) and its test split
    unchanged: the k-shot probe's data."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(data.train.y):
        rows = np.flatnonzero(data.train.y == label)
        if len(rows) < shots:
            raise ValueError(f"few_shot: class {data.class_names[label]} has {len(rows)} training rows, "
                             f"fewer than {shots} shots; ask for fewer shots")  # fmt: skip
        keep.append(rng.choice(rows, size=shots, replace=False))
    rows = np.sort(np.concatenate(keep))
    return ProbeData(Split(data.train.x[rows], data.train.y[rows]), data.test, data.class_names, data.skipped)
