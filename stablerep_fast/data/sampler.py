"""The one sampler both loader backends share: n captions per batch, m of each caption's K images.

Epoch e shuffles the eligible captions (those with at least m images) with ``(seed, e)``; rank r
takes the r-th of ``world_size`` equal contiguous slices, so ranks are disjoint and have the same
number of batches; the remainder that fills no batch is dropped (len() counts full batches).
Within batch b every caption gets a random order of all its images, drawn with
``(seed, e, r, b)``: a loader takes the first m it can decode, so a corrupt image is replaced by
the next one of the same caption. A global ``step`` (batches since epoch 0) is the whole position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

log = logging.getLogger("stablerep_fast.data")


@dataclass(frozen=True)
class GroupBatch:
    step: int
    captions: np.ndarray  # [n] positions in the index's caption list
    orders: list[np.ndarray]  # per caption, all its image numbers in the order to try them
    seed: int  # for the backend's per-image augmentation randomness


class GroupSampler:
    def __init__(
        self,
        images_per_caption: Sequence[int],
        captions_per_batch: int,
        views: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if captions_per_batch < 1 or views < 1:
            raise ValueError(f"captions_per_batch ({captions_per_batch}) and views ({views}) must be >= 1")
        self.counts = np.asarray(images_per_caption, dtype=np.int64)
        self.eligible = np.flatnonzero(self.counts >= views)
        self.n, self.m = captions_per_batch, views
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = len(self.eligible) // world_size
        if self.per_rank < self.n:
            raise ValueError(
                f"{len(self.eligible)} captions with >= {views} images, split over {world_size} ranks, "
                f"cannot fill one batch of {captions_per_batch} captions"
            )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.per_rank // self.n

    def epoch_captions(self, epoch: int) -> np.ndarray:
        """This rank's captions for ``epoch``, in order (positions in the caption list)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.eligible)
        return order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def batches(self, step: int) -> Iterator[GroupBatch]:
        """The batches from global ``step`` to the end of its epoch."""
        epoch, first = divmod(step, len(self))
        captions = self.epoch_captions(epoch)
        for b in range(first, len(self)):
            yield self._batch(epoch, b, captions[b * self.n : (b + 1) * self.n])

    def _batch(self, epoch: int, b: int, captions: np.ndarray) -> GroupBatch:
        rng = np.random.default_rng([self.seed, epoch, self.rank, b])
        counts = self.counts[captions]
        keys = rng.random((len(captions), int(counts.max())))
        keys += np.arange(keys.shape[1]) >= counts[:, None]  # images a caption lacks sort last
        orders = [row[:count] for row, count in zip(np.argsort(keys, axis=1), counts)]
        return GroupBatch(epoch * len(self) + b, captions, orders, int(rng.integers(2**31)))


def warn_left_out(sampler: GroupSampler) -> None:
    """Log how many captions have fewer than m images (never sampled), if any."""
    left_out = len(sampler.counts) - len(sampler.eligible)
    if left_out:
        log.warning("%d captions have fewer than %d images and are never sampled", left_out, sampler.m)
