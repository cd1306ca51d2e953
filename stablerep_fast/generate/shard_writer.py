"""Writing shards: one tar per shard, published atomically, then its .idx and done marker.

The layout and names are ``stablerep_fast.shards``'. A shard's tar is written under a temporary
name (``stablerep_fast.atomic``), fsynced and renamed, so a crash never leaves a truncated tar
behind; only a shard with a done marker (and a tar of the size it records) counts as done, and
``clear_shard`` removes what is left of an unfinished one (only files this package writes).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stablerep_fast import shards
from stablerep_fast.atomic import AtomicFile, atomic_write
from stablerep_fast.generate.config import GenerateError

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG"}


@dataclass
class Sample:
    key: str  # shards.sample_key(caption id)
    caption: str
    metadata: dict
    images: np.ndarray  # uint8 [K, S, S, 3]


def encode_image(image: np.ndarray, image_format: str, quality: int) -> bytes:
    """uint8 [S, S, 3] -> JPEG or PNG bytes."""
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format == "jpg" else {}
    Image.fromarray(image).save(buffer, format=PIL_FORMATS[image_format], **options)
    return buffer.getvalue()


class ShardWriter:
    """Writes one shard: members go to a temporary tar; ``commit`` makes it visible."""

    def __init__(self, out: Path, shard: int, *, image_format: str, quality: int, rank: int = 0):
        self.out = Path(out)
        self.shard = shard
        self.image_format = image_format
        self.quality = quality
        self.rank = rank
        self.path = shards.shard_file(self.out, shard, shards.TAR_SUFFIX)
        self._file = AtomicFile(self.path)
        self.tmp = self._file.tmp
        self.started = time.perf_counter()
        self.index: list[list[shards.IndexEntry]] = []  # per sample: (ext, offset, size, name)
        self.images = 0
        self._tar = tarfile.open(fileobj=self._file.file, mode="w", format=tarfile.USTAR_FORMAT)

    def _add_member(self, name: str, data: bytes) -> shards.IndexEntry:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # constant: a resumed or re-run shard is byte-identical
        self._tar.addfile(info, io.BytesIO(data))
        blocks = -(-len(data) // tarfile.BLOCKSIZE)
        offset = self._tar.offset - blocks * tarfile.BLOCKSIZE  # where the member's data starts
        return shards.split_member(name)[1], offset, len(data), name

    def add(self, samples: list[Sample]) -> None:
        """Encode and append samples (each: its json, txt and K images)."""
        for sample in samples:
            members = [
                ("json", json.dumps(sample.metadata, sort_keys=True).encode()),
                ("txt", sample.caption.encode()),
            ]
            members += [
                (shards.image_ext(k, self.image_format), encode_image(image, self.image_format, self.quality))
                for k, image in enumerate(sample.images)
            ]
            self.index.append([self._add_member(shards.member_name(sample.key, ext), data) for ext, data in members])
            self.images += len(sample.images)

    def commit(self) -> dict:
        """Close, fsync and rename the tar, then write its index and, last, its done marker."""
        self._tar.close()
        self._file.commit()
        atomic_write(shards.shard_file(self.out, self.shard, shards.INDEX_SUFFIX), shards.format_index(self.index))
        done = {
            "shard": self.shard,
            "captions": len(self.index),
            "images": self.images,
            "bytes": self.path.stat().st_size,
            "seconds": round(time.perf_counter() - self.started, 3),
            "rank": self.rank,
        }
        shards.write_done(self.out, self.shard, done)
        return done

    def abort(self) -> None:
        """Drop the temporary tar (after an error)."""
        self._tar.close()
        self._file.abort()


def clear_shard(out: Path, shard: int) -> None:
    """Remove every file this package wrote of an unfinished shard (its owner is about to redo it)."""
    for path in shards.shard_files(out, shard):
        path.unlink(missing_ok=True)


def dataset_record(settings: dict, *, captions_sha256: str, num_captions: int, duplicates: int, num_shards: int) -> dict:
    """The dataset.json content: the settings that define the images, plus the captions'
    hash and counts. The loader reads ``images_per_caption`` and ``image_format`` from it."""
    return {
        "version": shards.DATASET_VERSION,
        **settings,
        "captions_sha256": captions_sha256,
        "num_captions": num_captions,
        "duplicates": duplicates,
        "num_shards": num_shards,
    }


def ensure_dataset_json(out: Path, record: dict) -> None:
    """Create ``out/dataset.json`` with ``record`` or check that the one there is equal.

    The first writer publishes it exclusively (``atomic_write(..., exclusive=True)``), so
    concurrent workers never see a partial file or overwrite each other.
    """
    path = shards.dataset_file(out)
    record = json.loads(json.dumps(record))  # compare as it reads back
    if not path.exists():
        atomic_write(path, json.dumps(record, indent=1, sort_keys=True).encode(), exclusive=True)
    try:
        existing = shards.read_dataset(out)
    except (OSError, ValueError) as exc:
        raise GenerateError(f"cannot read {path}: {exc}") from exc
    if existing != record:
        changed = sorted(k for k in existing.keys() | record.keys() if existing.get(k) != record.get(k))
        diff = ", ".join(f"{k}: {existing.get(k)!r} there, {record.get(k)!r} now" for k in changed)
        raise GenerateError(f"{out} holds a dataset made with a different configuration ({diff}); use another --out")
