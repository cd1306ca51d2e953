"""The in-memory backend: every image decoded once into RAM, each batch gathered and augmented
in the training process, batched (kornia), on the device the batch goes to.

For datasets that fit in memory (``fits_in_memory``). On a small CPU machine the torch
backend's worker process takes a core from the model and augments image by image; here the
whole batch is augmented in a few vectorised calls between steps and the model keeps every core.
The m-of-K choice is the shared ``GroupSampler``'s, so the groups are the other backends' for the
same seed (when no image is damaged); the augmentation parameters are the same ``Augment``, drawn
per image; the pixels differ (kornia's kernels and RNG).

Damaged images are checked (``loader.damage``) and decoded once, when the loader is built: each is
named in the log, counted once in ``skipped.corrupt_images``, and sampled as if its caption never
had it; a caption left with fewer than m images is never sampled (as with the other backends).
``MemoryLoader.from_arrays`` takes images already in memory (real images, one per "caption":
SimCLR-style training repeats each one m times and lets the augmentation make the views).
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from stablerep_fast.data.augment import MEAN, STD, Augment
from stablerep_fast.data.index import ShardIndex
from stablerep_fast.data.loader import GroupLoader, SkipCounts, damage
from stablerep_fast.data.sampler import GroupBatch, GroupSampler, warn_left_out
from stablerep_fast.data.torch_loader import decode
from stablerep_fast.errors import DataError

log = logging.getLogger("stablerep_fast.data")

# "auto" takes this backend on CPU when the decoded images take at most this many bytes: an
# eighth of the machine's memory, and never more than 4 GiB.
MEMORY_BUDGET = min(4 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)


def build_batch_transform(augment: Augment, size: int) -> nn.Module:
    """float [B, 3, H, W] in [0, 1] -> [B, 3, size, size], each image with its own parameters."""
    if not augment.random:
        return nn.Sequential(K.Resize(size, side="short", antialias=True), K.CenterCrop(size))
    kernel = Augment.blur_kernel(size)
    return nn.Sequential(
        K.RandomResizedCrop((size, size), scale=augment.crop_scale, ratio=augment.crop_ratio),
        K.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue, p=augment.jitter_p),
        K.RandomGrayscale(p=augment.grayscale_p),
        K.RandomGaussianBlur((kernel, kernel), augment.blur_sigma, p=augment.blur_p),
        K.RandomHorizontalFlip(p=augment.flip_p),
    )


def fits_in_memory(index: ShardIndex, budget: int = MEMORY_BUDGET) -> bool:
    """Whether ``index``'s images, decoded, take at most ``budget`` bytes (sized by its first image)."""
    for caption in index.captions:
        for member in caption.images:
            image = decode(member.read())
            if image is not None:
                return image.numel() * sum(index.images_per_caption()) <= budget
    return False


def decode_index(index: ShardIndex) -> tuple[torch.Tensor, list[int], SkipCounts]:
    """Every image of ``index``, decoded: uint8 [C, K, 3, H, W] (caption c's first ``counts[c]``
    real, the rest zeros), the counts, and how many damaged images were left out (each logged)."""
    per_caption, skipped = [], SkipCounts()
    for caption in index.captions:
        images, records = [], {}
        for member, meta in zip(caption.images, caption.image_meta):
            data = member.read()
            why = damage(data, member, meta, records)
            image = decode(data) if why is None else None
            if image is None:
                log.warning("corrupt image %s in %s (%s), left out of caption %d", member.name, member.path,
                            why or "does not decode", caption.caption_id)  # fmt: skip
                skipped.corrupt_images += 1
                continue
            images.append(image)
        per_caption.append(images)
    shapes = {tuple(image.shape) for images in per_caption for image in images}
    if len(shapes) > 1:
        raise DataError(f"images of {index.shards[0]} ... differ in size ({sorted(shapes)[:3]}); the memory "
                        "backend needs one size: use backend='torch'")  # fmt: skip
    if not shapes:
        raise DataError(f"no image of {index.shards[0]} ... decodes")
    counts = [len(images) for images in per_caption]
    stacked = torch.zeros((len(per_caption), max(counts), *shapes.pop()), dtype=torch.uint8)
    for c, images in enumerate(per_caption):
        if images:
            stacked[c, : len(images)] = torch.stack(images)
    return stacked, counts, skipped


class MemoryLoader(GroupLoader):
    """A ``GroupLoader`` over images held in memory: ``images`` uint8 [C, K, 3, H, W] (caption c's
    first ``counts[c]`` images are real, the rest padding), ``caption_ids`` [C] int64."""

    def __init__(
        self,
        images: torch.Tensor,
        counts: Sequence[int],
        caption_ids: Sequence[int],
        sampler: GroupSampler,
        *,
        image_size: int,
        augment: Augment,
        device: torch.device,
        index: ShardIndex | None = None,
        texts: Sequence[str] | None = None,
    ):
        super().__init__(index, sampler, image_size=image_size, augment=augment, device=device, num_workers=0)
        self.images, self.counts = images, np.asarray(counts, dtype=np.int64)
        self.caption_ids = np.asarray(caption_ids, dtype=np.int64)
        if texts is not None:
            self._texts = dict(zip(self.caption_ids.tolist(), texts))
        self.transform = build_batch_transform(augment, image_size).to(device)
        self._mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    @classmethod
    def from_index(cls, index: ShardIndex, captions_per_batch: int, images_per_caption: int, *, seed: int = 0,
                   rank: int = 0, world_size: int = 1, **options) -> MemoryLoader:  # fmt: skip
        """Decode every image of ``index`` once (``decode_index``: damaged ones named, counted, left out)."""
        images, counts, skipped = decode_index(index)
        sampler = GroupSampler(counts, captions_per_batch, images_per_caption, seed=seed, rank=rank, world_size=world_size)
        warn_left_out(sampler)
        loader = cls(images, counts, [c.caption_id for c in index.captions], sampler, index=index, **options)
        loader.skipped += skipped
        return loader

    @classmethod
    def from_arrays(cls, images: np.ndarray | torch.Tensor, captions_per_batch: int, images_per_caption: int, *,
                    texts: Sequence[str] | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                    **options) -> MemoryLoader:  # fmt: skip
        """Images already in memory, uint8 [C, K, H, W, 3] (K per caption) or [C, H, W, 3] (one image
        per caption, repeated m times: the views differ only by augmentation). Caption ids 0..C-1."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim not in (4, 5) or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [C, K, H, W, 3] or [C, H, W, 3], got {images.dtype} {list(images.shape)}")
        if images.ndim == 4:
            images = images[:, None].expand(-1, images_per_caption, -1, -1, -1)
        images = images.permute(0, 1, 4, 2, 3)
        counts = [images.shape[1]] * images.shape[0]
        sampler = GroupSampler(counts, captions_per_batch, images_per_caption, seed=seed, rank=rank, world_size=world_size)
        return cls(images, counts, np.arange(len(counts)), sampler, texts=texts, **options)

    def caption_texts(self, caption_ids: Sequence[int]) -> list[str]:
        if self.index is None:
            missing = [i for i in caption_ids if i not in self._texts]
            if missing:
                raise DataError(f"no caption text for ids {missing[:5]}: build the loader with texts=")
            return [self._texts[i] for i in caption_ids]
        return super().caption_texts(caption_ids)

    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, SkipCounts]]:
        m = self.sampler.m
        for batch in batches:
            captions = np.tile(batch.captions, m)  # view-major: view v of caption i at v * n + i
            views = np.stack([order[:m] for order in batch.orders], axis=1).reshape(-1)
            images = self.images[torch.from_numpy(captions), torch.from_numpy(views)].to(self.device)
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the training process's RNG stream is left alone
                torch.manual_seed(batch.seed)
                images = self.transform(images.float().div_(255))
            images = images.sub_(self._mean).div_(self._std)
            yield images, torch.from_numpy(self.caption_ids[captions]).to(self.device), SkipCounts()
