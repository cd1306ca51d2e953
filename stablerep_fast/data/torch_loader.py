"""The torch backend: DataLoader workers read, decode (PIL) and augment (torchvision transforms
v2) whole batches as uint8; the main process moves them to the device and normalises
there, so the workers ship a quarter of the bytes and the arithmetic runs where the batch goes."""

from __future__ import annotations

import io
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from stablerep_fast.data.augment import MEAN, STD, Augment
from stablerep_fast.data.index import ShardIndex
from stablerep_fast.data.loader import GroupLoader, SkipCounts, read_batch
from stablerep_fast.data.sampler import GroupBatch


def build_transform(augment: Augment, size: int) -> T.Compose:
    """uint8 [3, H, W] -> uint8 [3, size, size]."""
    if not augment.random:
        return T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)])
    jitter = T.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue)
    blur = T.GaussianBlur(Augment.blur_kernel(size), augment.blur_sigma)
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=augment.crop_scale, ratio=augment.crop_ratio, antialias=True),
            T.RandomApply([jitter], p=augment.jitter_p),
            T.RandomGrayscale(p=augment.grayscale_p),
            T.RandomApply([blur], p=augment.blur_p),
            T.RandomHorizontalFlip(p=augment.flip_p),
        ]
    )


def augment_images(images: Sequence[torch.Tensor], transform: T.Compose, seed: int) -> torch.Tensor:
    """uint8 [3, H, W] images -> uint8 [N, 3, S, S], each through ``transform``, with the torch
    RNG seeded with ``seed`` first (the same augmentations whichever process runs them)."""
    torch.manual_seed(seed)
    return torch.stack([transform(image) for image in images])


def normalize(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> float32 on ``device``, ImageNet-normalised there."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    return images.to(device, non_blocking=True).float().sub_(mean).div_(std)


def decode(data: bytes) -> torch.Tensor | None:
    """uint8 [3, H, W] RGB, or None when the bytes do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.array(image.convert("RGB"))  # writable, as torch wants
    except (OSError, SyntaxError, ValueError):  # PIL's errors for unreadable or damaged files
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1)


class _Batches(Dataset):
    """Maps a GroupBatch to (uint8 images [n*m, 3, S, S], labels [n*m], SkipCounts)."""

    def __init__(self, index: ShardIndex, views: int, transform: T.Compose):
        self.index, self.views, self.transform = index, views, transform

    def __getitem__(self, batch: GroupBatch) -> tuple[torch.Tensor | None, torch.Tensor, SkipCounts]:
        images, labels, counts, _ = read_batch(self.index, batch, self.views, decode)
        stacked = augment_images(images, self.transform, batch.seed) if images else None
        return stacked, torch.from_numpy(labels), counts


def _as_is(sample):
    return sample


def in_workers(dataset: Dataset, batches: Iterator[GroupBatch], num_workers: int, device: torch.device,
               prefetch: int = 2) -> DataLoader:  # fmt: skip
    """``dataset[batch]`` for each of ``batches``, in order, computed by ``num_workers`` worker
    processes (0: in this process), up to ``prefetch`` batches ahead per worker."""
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=prefetch if num_workers else None,
    )


class TorchLoader(GroupLoader):
    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, SkipCounts]]:
        dataset = _Batches(self.index, self.sampler.m, build_transform(self.augment, self.image_size))
        for images, labels, counts in in_workers(dataset, batches, self.num_workers, self.device):
            if images is not None:
                images = normalize(images, self.device)
            yield images, labels.to(self.device, non_blocking=True), counts
