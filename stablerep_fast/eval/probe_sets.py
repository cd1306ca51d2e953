"""Labelled probe sets from the shapes generator: images whose attributes are known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stablerep_fast.generate.pipeline import to_uint8_images
from stablerep_fast.generate.shapes import LATENT_DIM, VOCABULARY, Attributes, render

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
