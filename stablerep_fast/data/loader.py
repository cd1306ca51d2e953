"""What both loader backends share: reading a batch's images through the index, the position
(``step``), ``len()``, and the counts of what was skipped. A backend only decodes and augments.

Every image is checked before it is decoded: it must start and end like a whole JPEG/PNG and
match the CRC-32 its sample's JSON records (shards written before checksums were recorded are
only checked for shape). A damaged image is logged with its member and tar, counted, and
replaced by the next image of the same caption; a caption left with fewer than m images is left
out of its batch, and a batch left with no caption is skipped; all counted in ``skipped``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from stablerep_fast import shards as fmt
from stablerep_fast.data.augment import Augment
from stablerep_fast.data.index import Member, ShardIndex, read_record
from stablerep_fast.data.sampler import GroupBatch, GroupSampler

log = logging.getLogger("stablerep_fast.data")

Image = TypeVar("Image")

_SIGNATURES = {  # (start, end) of an intact file, by format
    "jpg": (b"\xff\xd8\xff", b"\xff\xd9"),
    "png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
}


@dataclass
class SkipCounts:
    corrupt_images: int = 0  # damaged or undecodable images, replaced by another image of the caption
    skipped_captions: int = 0  # captions left out of a batch: fewer than m readable images
    skipped_batches: int = 0  # batches left with no caption at all: skipped
    low_score_captions: int = 0  # captions left out before sampling (min_score): fewer than m images scoring enough

    def __iadd__(self, other: SkipCounts) -> SkipCounts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def looks_intact(data: bytes) -> bool:
    """Whether ``data`` starts and ends like a whole JPEG or PNG (catches truncation and garbage)."""
    return any(data.startswith(head) and data.endswith(tail) for head, tail in _SIGNATURES.values())


def damage(data: bytes, member: Member, meta: Member, records: dict[Member, dict | None]) -> str | None:
    """Why the bytes ``data`` of image ``member`` cannot be trusted, or None when they can:
    ``meta`` is its sample's JSON (parsed once into ``records``), holding the recorded checksums."""
    if not looks_intact(data):
        return "truncated or not an image"
    if meta not in records:
        records[meta] = read_record(meta)
    record = records[meta]
    if record is None:
        return f"its sample record {meta.name} is damaged"
    checksums = record.get(fmt.CHECKSUM_KEY)
    if checksums is None:
        return None  # written before checksums were recorded
    k = int(fmt.split_member(member.name)[1].partition(".")[0])
    if not isinstance(checksums, list) or k >= len(checksums) or checksums[k] != fmt.image_checksum(data):
        return "checksum mismatch"
    return None


def read_batch(
    index: ShardIndex,
    batch: GroupBatch,
    views: int,
    decode: Callable[[bytes], Image | None],
    exclude: frozenset[Member] | set[Member] = frozenset(),
) -> tuple[list[Image], np.ndarray, SkipCounts, list[Member]]:
    """The first ``views`` images of each caption (in the sampler's order) that are undamaged
    (see ``damage``), not in ``exclude`` and that ``decode`` accepts (it returns None to refuse),
    view-major, with their int64 caption ids, the counts of what was skipped and the members used."""
    groups, caption_ids, used, counts = [], [], [], SkipCounts()
    for position, order in zip(batch.captions, batch.orders):
        caption = index.captions[position]
        group, members, records = [], [], {}
        for k in order:
            member = caption.images[k]
            if member in exclude:
                image, why = None, "does not decode"
            else:
                data = member.read()
                why = damage(data, member, caption.image_meta[k], records)
                image = decode(data) if why is None else None
                why = why or (None if image is not None else "does not decode")
            if why is not None:
                log.warning("corrupt image %s in %s (%s), using another image of caption %d",
                            member.name, member.path, why, caption.caption_id)  # fmt: skip
                counts.corrupt_images += 1
                continue
            group.append(image)
            members.append(member)
            if len(group) == views:
                break
        if len(group) < views:
            log.warning(
                "caption %d has fewer than %d readable images, left out of batch %d", caption.caption_id, views, batch.step
            )
            counts.skipped_captions += 1
            continue
        groups.append(group)
        used.append(members)
        caption_ids.append(caption.caption_id)
    if not groups:
        log.warning("batch %d: no caption has %d readable images; batch skipped", batch.step, views)
        counts.skipped_batches += 1
    images = [group[v] for v in range(views) for group in groups]
    members = [group[v] for v in range(views) for group in used]
    return images, np.tile(np.asarray(caption_ids, dtype=np.int64), views), counts, members


class GroupLoader:
    """Iterating yields ``(images, labels)`` from the current ``step`` to the end of its epoch:
    images [n*m, 3, S, S] float32 normalised on ``device``, labels [n*m] int64 caption ids,
    view-major (``labels == labels[:n].repeat(m)``). Iterate again for the next epoch.
    ``state_dict()`` / ``load_state_dict()`` save and restore the position; ``caption_texts(ids)``
    gives the caption of each id (the text tower's input)."""

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
        self._texts: dict[int, str] = {}
        self._by_id: dict | None = None

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

    def caption_texts(self, caption_ids: Sequence[int]) -> list[str]:
        """The caption text of each id, read from its ``KEY.json`` once and remembered."""
        if self._by_id is None:
            self._by_id = {c.caption_id: c for c in self.index.captions}
        for i in caption_ids:
            if i not in self._texts:
                self._texts[i] = self._by_id[i].info()["caption"]
        return [self._texts[i] for i in caption_ids]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, counts in self._run(self.sampler.batches(self.step)):
            self.step += 1
            self.skipped += counts
            if images is not None:  # None: a batch with no readable caption, skipped
                yield images, labels

    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, SkipCounts]]:
        """Decode and augment ``batches`` in order, one result per batch (images None for a
        batch skipped whole): the backend's part."""
        raise NotImplementedError
