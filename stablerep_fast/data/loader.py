"""What both loader backends share: reading a batch's images through the index, the position
(``step``), ``len()``, and the counts of what was skipped. A backend only decodes and augments."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

from stablerep_fast.data.augment import Augment
from stablerep_fast.data.index import ShardIndex
from stablerep_fast.data.sampler import GroupBatch, GroupSampler

log = logging.getLogger("stablerep_fast.data")

Image = TypeVar("Image")

_SIGNATURES = {  # (start, end) of an intact file, by format
    "jpg": (b"\xff\xd8\xff", b"\xff\xd9"),
    "png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
}


@dataclass
class SkipCounts:
    corrupt_images: int = 0  # unreadable images, replaced by another image of the caption
    skipped_captions: int = 0  # captions left out of a batch: fewer than m readable images

    def __iadd__(self, other: SkipCounts) -> SkipCounts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def looks_intact(data: bytes) -> bool:
    """Whether ``data`` starts and ends like a whole JPEG or PNG (catches truncation and garbage)."""
    return any(data.startswith(head) and data.endswith(tail) for head, tail in _SIGNATURES.values())


def read_batch(
    index: ShardIndex, batch: GroupBatch, views: int, decode: Callable[[bytes], Image | None]
) -> tuple[list[Image], np.ndarray, SkipCounts]:
    """The first ``views`` images of each caption (in the sampler's order) that are intact and that
    ``decode`` accepts (it returns None to refuse), view-major, with their int64 caption ids."""
    groups, caption_ids, counts = [], [], SkipCounts()
    for position, order in zip(batch.captions, batch.orders):
        caption = index.captions[position]
        group = []
        for k in order:
            member = caption.images[k]
            data = member.read()
            image = decode(data) if looks_intact(data) else None
            if image is None:
                log.warning(
                    "corrupt image %s in %s, using another image of caption %d", member.name, member.path, caption.caption_id
                )
                counts.corrupt_images += 1
                continue
            group.append(image)
            if len(group) == views:
                break
        if len(group) < views:
            log.warning(
                "caption %d has fewer than %d readable images, left out of batch %d", caption.caption_id, views, batch.step
            )
            counts.skipped_captions += 1
            continue
        groups.append(group)
        caption_ids.append(caption.caption_id)
    images = [group[v] for v in range(views) for group in groups]
    return images, np.tile(np.asarray(caption_ids, dtype=np.int64), views), counts


class GroupLoader:
    """Iterating yields ``(images, labels)`` from the current ``step`` to the end of its epoch:
    images [n*m, 3, S, S] float32 normalised on ``device``, labels [n*m] int64 caption ids,
    view-major (``labels == labels[:n].repeat(m)``). Iterate again for the next epoch.
    ``state_dict()`` / ``load_state_dict()`` save and restore the position."""

    def __init__(
        self,
        index: ShardIndex,
        sampler: GroupSampler,
        *,
        image_size: int,
        augment: Augment,
        device: torch.device,
        num_workers: int,
    ):
        self.index, self.sampler = index, sampler
        self.image_size, self.augment, self.device, self.num_workers = image_size, augment, device, num_workers
        self.step = 0
        self.skipped = SkipCounts()

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.step // len(self)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, counts in self._run(self.sampler.batches(self.step)):
            self.step += 1
            self.skipped += counts
            yield images, labels

    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, SkipCounts]]:
        """Decode and augment ``batches`` in order: the backend's part."""
        raise NotImplementedError
