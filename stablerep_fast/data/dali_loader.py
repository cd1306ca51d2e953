"""The DALI backend: an external source fed by the shared sampler (Python reads exactly the m
chosen images of each caption through the index, so groups match the torch backend), then DALI
decodes with the random-crop ROI and augments. A reader thread reads the next batches' files
while the consumer trains, and one pipeline serves every pass (reset between epochs). On a GPU
the decoder is "mixed" (nvJPEG, only the crop window decoded) and every augmentation runs on the
GPU; the batch reaches torch by DLPack and one device-to-device copy, never through host
memory. With ``device="cpu"`` the same graph runs CPU-only (``device_id=None``), which is how CI tests it.

Python checks each image before feeding it (whole JPEG/PNG, recorded CRC-32; see loader.py), so
damage on disk never reaches the decoder. An image the decoder still refuses (a shard written
before checksums were recorded, or an encoder's bad file) fails DALI's whole batch: the loader
then decodes that batch's images on the CPU with PIL, logs and counts the ones that fail, and
rebuilds the pipeline from that batch without them; if PIL decodes them all, the batch is
skipped (counted), and a second such batch in a row is an error (not a damaged file). The rule
does not depend on where DALI decodes, so "mixed" (GPU) decoding is handled the same way.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def

from stablerep_fast.data.ahead import run_ahead
from stablerep_fast.data.augment import MEAN, STD, Augment
from stablerep_fast.data.index import Member
from stablerep_fast.data.loader import GroupLoader, SkipCounts, read_batch
from stablerep_fast.data.sampler import GroupBatch
from stablerep_fast.data.torch_loader import decode as cpu_decode

log = logging.getLogger("stablerep_fast.data")


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


@dataclass
class _Fed:
    """A batch read for the pipeline: what comes back with its images, and what went in."""

    step: int
    labels: np.ndarray
    counts: SkipCounts
    members: list[Member]  # empty: no readable caption, nothing fed


class DaliLoader(GroupLoader):
    """One DALI pipeline for the loader's life: built at the first pass, reset between passes,
    rebuilt only after a decoder failure. A reader thread feeds it, so file reads overlap
    training. Augmentation randomness comes from one seed at the build: a pass resumed at step s
    forms the same groups as an uninterrupted run, and the same images with ``augment="none"``."""

    prefetch = 2  # batches DALI works ahead, and batches the reader holds beyond those

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.undecodable: set[Member] = set()  # images DALI's decoder refused, never fed again
        self._unexplained = -2  # the last batch DALI failed on although PIL decodes all its images
        self._pipe = None
        self._reader: Iterator[tuple[GroupBatch, list[np.ndarray], _Fed]] | None = None  # this pass's files, read ahead
        self._reader_failed = False  # reading raised (not DALI's decoder)
        self._pending: deque[_Fed] = deque()  # read and fed to DALI, not yet returned, in order

    def _read(self, batch: GroupBatch) -> tuple[list[np.ndarray], _Fed]:
        images, labels, counts, members = read_batch(self.index, batch, self.sampler.m, _as_array, self.undecodable)
        return images, _Fed(batch.step, labels, counts, members)

    def _source(self) -> list[np.ndarray]:
        """DALI's external source: the reader's next batch with images (batches with none are
        only queued in ``_pending``); StopIteration ends the pass."""
        while True:
            if self._reader is None:
                raise StopIteration
            try:
                _, images, fed = next(self._reader)
            except StopIteration:
                raise
            except BaseException:
                self._reader_failed = True
                raise
            self._pending.append(fed)
            if images:
                return images

    def _pipeline(self):
        if self._pipe is None:
            device_id = None  # a CPU-only pipeline
            if self.device.type == "cuda":
                device_id = torch.cuda.current_device() if self.device.index is None else self.device.index
            self._pipe = _pipeline(
                self._source,
                self.augment,
                self.image_size,
                "cpu" if device_id is None else "mixed",
                batch_size=self.sampler.n * self.sampler.m,
                num_threads=max(1, self.num_workers),
                device_id=device_id,
                prefetch_queue_depth=self.prefetch,
                seed=int(np.random.default_rng([self.sampler.seed, self.sampler.rank, self.step]).integers(2**31)),
            )
            self._pipe.build()
        return self._pipe

    def _run(self, batches: Iterator[GroupBatch]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, SkipCounts]]:
        while True:  # a decoder failure rebuilds the pipeline from the failing batch
            restart = yield from self._pass(batches)
            if restart is None:
                return
            batches = self.sampler.batches(restart)

    def _pass(self, batches: Iterator[GroupBatch]):
        """Run the pipeline over ``batches``; returns None at their end, or the step to rebuild
        from after a decoder failure (see the module docstring)."""
        pipe = self._pipeline()
        self._reader, self._reader_failed = run_ahead(batches, self._read, self.prefetch), False
        ended = False  # the source ran dry: the pipeline only needs a reset for the next pass
        try:
            while True:
                try:
                    (images,) = pipe.run()
                except StopIteration:
                    ended = True
                    yield from self._skipped()  # batches skipped whole at the end
                    return None
                except RuntimeError as exc:  # DALI's decoder refused an image of the oldest fed batch
                    if not self._pending or self._reader_failed:
                        raise
                    self._pipe = None
                    yield from self._skipped()
                    return (yield from self._decoder_failed(self._pending[0], exc))
                yield from self._skipped()
                fed = self._pending.popleft()
                # DALI reuses its output buffers: copy before the next run (device to device on GPU).
                images = torch.from_dlpack(images.as_tensor()).clone()
                yield images, torch.from_numpy(fed.labels).to(self.device), fed.counts
        except GeneratorExit:  # the consumer stopped early: the pipeline is drained and kept below
            raise
        except BaseException:
            self._pipe = None  # a failed run may leave DALI mid-batch: the next pass builds afresh
            raise
        finally:
            self._reader.close()
            self._reader = None
            if self._pipe is not None:
                self._reset(pipe, drain=not ended)
            self._pending.clear()

    def _skipped(self):
        """Results for the oldest pending batches that had no readable caption (nothing fed)."""
        while self._pending and not self._pending[0].members:
            fed = self._pending.popleft()
            yield None, torch.from_numpy(fed.labels), fed.counts

    def _decoder_failed(self, failed: _Fed, exc: RuntimeError):
        """After DALI failed on ``failed``: the step to rebuild from (the same batch without the
        images PIL cannot decode either, or the next one when PIL decodes them all)."""
        if self._find_undecodable(failed, exc):
            return failed.step
        if failed.step == self._unexplained + 1:  # twice in a row: not a damaged file
            raise RuntimeError(f"DALI failed on batches {self._unexplained} and {failed.step}, whose images all "
                               "decode on the CPU") from exc  # fmt: skip
        self._unexplained = failed.step
        failed.counts.skipped_batches += 1
        yield None, torch.from_numpy(failed.labels), failed.counts
        return failed.step + 1

    def _reset(self, pipe, drain: bool) -> None:
        """Make the pipeline ready for the next pass. ``drain``: the pass stopped early, so first
        take the batches DALI already works on (the reader is closed: the source ends the pass)."""
        try:
            while drain:
                pipe.run()
        except StopIteration:
            pass
        except RuntimeError:  # a decoder failure while draining: build afresh next time
            self._pipe = None
            return
        pipe.reset()

    def _find_undecodable(self, failed: _Fed, exc: RuntimeError) -> bool:
        """Decode the failed batch's images with PIL; the ones that fail join ``undecodable``.
        False when PIL decodes them all (the batch is then skipped)."""
        found = [member for member in dict.fromkeys(failed.members) if cpu_decode(member.read()) is None]
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not found:
            log.error("DALI failed on batch %d (%s) but every image of it decodes on the CPU; batch skipped",
                      failed.step, first_line)  # fmt: skip
            return False
        for member in found:
            log.error("DALI cannot decode %s in %s; batch %d is read again without it", member.name, member.path, failed.step)
        self.undecodable.update(found)
        return True
