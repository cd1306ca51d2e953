"""Training data: shards (or a generator, online) -> batches of n captions x m images per caption.

    build_loader      the loader (backends "dali", "torch", "memory", "auto"; source=a generator: online)
    OnlineConfig      how online batches are generated (captions, views, generator device)
    open_index        the shard index both backends read through (captions, their images)
    GroupSampler      the n x m-of-K sampler both backends share
"""

from __future__ import annotations

from stablerep_fast._deps import require_extra

require_extra("data")  # before the imports that need it: one line, not a traceback

import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Sequence

import torch

from stablerep_fast.data.augment import AUGMENTS, Augment
from stablerep_fast.data.index import ShardError, ShardIndex, filter_by_score, open_index
from stablerep_fast.data.loader import GroupLoader, SkipCounts
from stablerep_fast.data.online import PREFIX, OnlineConfig, OnlineLoader, build_online_loader
from stablerep_fast.data.sampler import GroupSampler, warn_left_out
from stablerep_fast.errors import ConfigError
from stablerep_fast.storage import is_url

if TYPE_CHECKING:
    from stablerep_fast.generate import Generator

log = logging.getLogger("stablerep_fast.data")

BACKENDS = ("dali", "torch", "memory")
_NEEDS = {"dali": ("nvidia.dali", "NVIDIA DALI: pip install 'stablerep_fast[dali]'"),
          "memory": ("kornia", "kornia: pip install 'stablerep_fast[data]'")}  # fmt: skip


def available_backends() -> list[str]:
    """The loader backends installed here (the torch one always is)."""
    return [name for name in BACKENDS if name not in _NEEDS or importlib.util.find_spec(_NEEDS[name][0]) is not None]


def build_loader(
    shards: str | os.PathLike | Sequence[str | os.PathLike] | None,
    captions_per_batch: int,
    images_per_caption: int,
    image_size: int = 224,
    backend: str = "auto",
    device: str | torch.device | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    augment: str | dict | Augment = "stablerep",
    *,
    source: str | os.PathLike | Generator | None = None,
    online: OnlineConfig | dict | None = None,
    min_score: float | None = None,
) -> GroupLoader:
    """A loader of StableRep batches from generated shards, or generated while training.

    shards:              a shard folder, a list of folders generated from the same captions with
                         different seeds (images pooled per caption), or a brace pattern over
                         folders or tars ("out/seed{0..3}", "out/shard-{000000..000099}.tar");
                         paths or fsspec URLs ("s3://bucket/data", read by the torch backend)
    captions_per_batch:  n, captions per batch on this rank
    images_per_caption:  m, images per caption, drawn without replacement from its K
    image_size:          S, the side of the square crops
    backend:             "dali", "torch", "memory" (every image decoded once into RAM, batches augmented
                         in this process), or "auto": dali on a GPU when installed; on a CPU memory
                         when the decoded images fit in data.memory.MEMORY_BUDGET; else torch
    device:              where batches land; None = "cuda" when a GPU is visible, else "cpu"
    seed:                shuffling, choice of the m images, augmentation randomness
    rank, world_size:    ranks get disjoint captions and the same number of batches
    num_workers:         DataLoader workers (torch) or DALI threads; None = min(8, CPUs)
    augment:             an Augment (every parameter settable), a mapping of its fields, or a
                         preset name: "stablerep" (the paper's recipe) or "none" (resize + centre crop)
    source:              online generation instead of shards (``shards`` None; ``shards="generator:MODEL"``
                         means the same): a Generator, "shapes", a Stable Diffusion folder or
                         "pkg.module:Class"; every batch is generated fresh (data/online.py)
    online:              OnlineConfig or a mapping of its fields: captions, views, latent_std,
                         resolution, generator device, ... (used only with ``source``)
    min_score:           leave out images whose recorded consistency score (``generate --score``) is
                         below it, and captions left with fewer than m images (counted in
                         ``skipped.low_score_captions``); the shards are not rewritten

    Iterating yields images [n*m, 3, S, S] float32 normalised on ``device`` and labels [n*m]
    int64 caption ids, view-major (``labels == labels[:n].repeat(m)``); one pass is one epoch
    from the current position. ``len()``, ``step``, ``epoch``, ``state_dict()`` and
    ``load_state_dict()`` give the position; ``skipped`` counts corrupt images and left-out
    captions. Captions with fewer than m images are left out of the sampling.
    """
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(shards, str) and shards.startswith(PREFIX):
        shards, source = None, shards[len(PREFIX) :]
    options = _check_inputs(image_size, augment, num_workers)
    if (shards is None) == (source is None):
        raise ValueError("give build_loader either shards or source= (a generator), not both or neither")
    if source is not None:
        if min_score is not None:
            raise ValueError("min_score filters stored shards by their recorded scores; online generation has none")
        if backend not in ("auto", "torch"):
            raise ValueError(f"online generation augments with the torch transforms; backend {backend!r} cannot run it")
        return build_online_loader(source, captions_per_batch, images_per_caption, config=OnlineConfig.parse(online),
                                   device=device, seed=seed, rank=rank, world_size=world_size, **options)  # fmt: skip
    requested, backend = backend, _resolve_backend(backend, device)
    index, low_captions = open_index(shards), 0
    if min_score is not None:
        index, low_images, low_captions = filter_by_score(index, min_score, images_per_caption)
        log.warning("min_score %g: %d images below it left out, and %d captions left with fewer than %d images",
                 min_score, low_images, low_captions, images_per_caption)  # fmt: skip
    if requested == "auto" and device.type == "cpu" and "memory" in available_backends():
        from stablerep_fast.data.memory import fits_in_memory

        backend = "memory" if fits_in_memory(index) else "torch"
    if backend == "dali" and any(is_url(tar) for tar in index.shards):  # DALI's reader opens local files only
        if requested != "auto":
            raise ConfigError(f"backend 'dali' reads shards from local disks only, not {index.shards[0]}; "
                              "use backend='torch' (or 'auto'), or copy the shards to a local disk")  # fmt: skip
        backend = "torch"
    if backend == "memory":
        from stablerep_fast.data.memory import MemoryLoader

        options.pop("num_workers")
        loader = MemoryLoader.from_index(index, captions_per_batch, images_per_caption, seed=seed, rank=rank,
                                         world_size=world_size, device=device, **options)  # fmt: skip
        loader.skipped.low_score_captions = low_captions
        return loader
    sampler = GroupSampler(
        index.images_per_caption(), captions_per_batch, images_per_caption, seed=seed, rank=rank, world_size=world_size
    )
    warn_left_out(sampler)
    if backend == "dali":
        from stablerep_fast.data.dali_loader import DaliLoader as Loader
    else:
        from stablerep_fast.data.torch_loader import TorchLoader as Loader
    loader = Loader(index, sampler, device=device, **options)
    loader.skipped.low_score_captions = low_captions
    return loader


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "dali" if device.type == "cuda" and "dali" in available_backends() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {['auto', *BACKENDS]}")
    if backend not in available_backends():
        raise RuntimeError(f"backend {backend!r} needs {_NEEDS[backend][1]}")
    return backend


def _check_inputs(image_size: int, augment: str | dict | Augment, num_workers: int | None) -> dict:
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if num_workers is None:
        num_workers = min(8, len(os.sched_getaffinity(0)))
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return dict(image_size=image_size, augment=Augment.parse(augment), num_workers=num_workers)


__all__ = [
    "AUGMENTS",
    "Augment",
    "BACKENDS",
    "GroupLoader",
    "GroupSampler",
    "OnlineConfig",
    "OnlineLoader",
    "ShardError",
    "ShardIndex",
    "SkipCounts",
    "available_backends",
    "build_loader",
    "open_index",
]
