"""The DALI backend: an external source fed by the shared sampler (Python reads exactly the m
chosen images of each caption through the index, so groups match the torch backend), then DALI
decodes with the random-crop ROI and augments. On a GPU the decoder is "mixed" (nvJPEG, only
the crop window decoded) and every augmentation runs on the GPU; the batch reaches torch by
DLPack and one device-to-device copy, never through host memory. With ``device="cpu"`` the same
graph runs CPU-only (``device_id=None``), which is how CI tests it.

Python checks that each image starts and ends like a whole JPEG/PNG before feeding it; damage
that passes that check (inside the entropy-coded data) is up to DALI's decoder, which either
decodes it with artefacts or raises for the batch.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def

from stablerep_fast.data.augment import MEAN, STD, Augment
from stablerep_fast.data.loader import GroupLoader, SkipCounts, read_batch
from stablerep_fast.data.sampler import GroupBatch


def _as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _color(images, augment: Augment):
    """ColorJitter (p = jitter_p) then grayscale (p = grayscale_p) as one colour twist: a factor
    of 1 (hue 0) where jitter is not applied, saturation 0 where grayscale is."""
    jitter = fn.random.coin_flip(probability=augment.jitter_p)
    gray = fn.random.coin_flip(probability=augment.grayscale_p)

    def factor(strength: float):
        return 1.0 + jitter * fn.random.uniform(range=(-strength, strength))

    return fn.color_twist(
        images,
        brightness=factor(augment.brightness),
        contrast=factor(augment.contrast),
        saturation=factor(augment.saturation) * (1 - gray),
        hue=jitter * fn.random.uniform(range=(-360.0 * augment.hue, 360.0 * augment.hue)),
    )


@pipeline_def(enable_conditionals=True)
def _pipeline(source, augment: Augment, size: int, decoder: str):
    encoded = fn.external_source(source=source, batch=True, dtype=types.UINT8)
    mirror = 0
    if augment.random:
        images = fn.decoders.image_random_crop(
            encoded,
            device=decoder,
            output_type=types.RGB,
            random_area=augment.crop_scale,
            random_aspect_ratio=augment.crop_ratio,
        )
        images = fn.resize(images, resize_x=size, resize_y=size)
        images = _color(images, augment)
        if fn.random.coin_flip(probability=augment.blur_p):
            sigma = fn.random.uniform(range=augment.blur_sigma)
            images = fn.gaussian_blur(images, sigma=sigma, window_size=Augment.blur_kernel(size))
        mirror = fn.random.coin_flip(probability=augment.flip_p)
    else:
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=size)
    return fn.crop_mirror_normalize(
        images,
        crop=(size, size),
        mirror=mirror,
        mean=[255 * x for x in MEAN],
        std=[255 * x for x in STD],
        output_layout="CHW",
        dtype=types.FLOAT,
    )


class DaliLoader(GroupLoader):
    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, SkipCounts]]:
        # One pipeline per pass: the external source is this pass's generator, and a pass that
        # stops early leaves no prefetched batches behind for the next one.
        pending: deque[tuple[np.ndarray, SkipCounts]] = deque()  # fed, not yet returned, in order

        def feed():
            for batch in batches:
                images, labels, counts = read_batch(self.index, batch, self.sampler.m, _as_array)
                pending.append((labels, counts))
                yield images

        device_id = None  # a CPU-only pipeline
        if self.device.type == "cuda":
            device_id = torch.cuda.current_device() if self.device.index is None else self.device.index
        pipe = _pipeline(
            feed(),
            self.augment,
            self.image_size,
            "cpu" if device_id is None else "mixed",
            batch_size=self.sampler.n * self.sampler.m,
            num_threads=max(1, self.num_workers),
            device_id=device_id,
            seed=int(np.random.default_rng([self.sampler.seed, self.sampler.rank, self.step]).integers(2**31)),
        )
        pipe.build()
        while True:
            try:
                (images,) = pipe.run()
            except StopIteration:
                return
            labels, counts = pending.popleft()
            # DALI reuses its output buffers: copy before the next run (device to device on GPU).
            images = torch.from_dlpack(images.as_tensor()).clone()
            yield images, torch.from_numpy(labels).to(self.device), counts
