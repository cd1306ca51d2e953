"""WebDataset shards written atomically, with DALI index files, done markers and dataset.json.

Layout of an output folder (one sample per caption, key = caption index, 9 digits, no dots):

    dataset.json                 the settings that define the images (see ``dataset_record``)
    shard-000000.tar             000000042.json  {caption, caption_index, seeds, guidance, ...}
                                 000000042.txt   the caption
                                 000000042.0.jpg ... 000000042.{K-1}.jpg
    shard-000000.idx             DALI (wds2idx) index: "v1.2 <samples>", then one line per
                                 sample of "<ext> <data offset> <size> <member name>" groups
    shard-000000.done.json       written last: {shard, captions, images, bytes, seconds, rank}

A shard is written as ``shard-XXXXXX.tar.tmp-<pid>-<random>``, fsynced and renamed, so a crash never
leaves a truncated ``.tar`` behind; only a shard with a done marker (and a tar of the size it
records) counts as done, anything else of that shard is removed and redone.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stablerep_fast.generate.config import GenerateError

DATASET_FILE = "dataset.json"
DATASET_VERSION = 1
INDEX_VERSION = "v1.2"
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG"}


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def sample_key(caption_index: int) -> str:
    return f"{caption_index:09d}"


@dataclass
class Sample:
    key: str
    caption: str
    metadata: dict
    images: np.ndarray  # uint8 [K, S, S, 3]


def _tmp_path(path: Path) -> Path:
    """A unique temporary name beside ``path`` (unique across processes and threads)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _tmp_path(path)
    _fsync_write(tmp, data)
    os.replace(tmp, path)


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
        self.path = self.out / f"{shard_name(shard)}.tar"
        self.tmp = _tmp_path(self.path)
        self.started = time.perf_counter()
        self.index: list[list[tuple[str, int, int, str]]] = []  # per sample: (ext, offset, size, name)
        self.images = 0
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)

    def _add_member(self, name: str, data: bytes) -> tuple[str, int, int, str]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # constant: a resumed or re-run shard is byte-identical
        self._tar.addfile(info, io.BytesIO(data))
        blocks = -(-len(data) // tarfile.BLOCKSIZE)
        offset = self._tar.offset - blocks * tarfile.BLOCKSIZE  # where the member's data starts
        return name.split(".", 1)[1], offset, len(data), name

    def add(self, samples: list[Sample]) -> None:
        """Encode and append samples (each: its json, txt and K images)."""
        for sample in samples:
            members = [
                (f"{sample.key}.json", json.dumps(sample.metadata, sort_keys=True).encode()),
                (f"{sample.key}.txt", sample.caption.encode()),
            ]
            members += [
                (f"{sample.key}.{k}.{self.image_format}", encode_image(image, self.image_format, self.quality))
                for k, image in enumerate(sample.images)
            ]
            self.index.append([self._add_member(name, data) for name, data in members])
            self.images += len(sample.images)

    def commit(self) -> dict:
        """Close, fsync and rename the tar, then write its index and, last, its done marker."""
        self._tar.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        lines = [f"{INDEX_VERSION} {len(self.index)}"]
        lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in self.index]
        _atomic_write(self.out / f"{shard_name(self.shard)}.idx", ("\n".join(lines) + "\n").encode())
        done = {
            "shard": self.shard,
            "captions": len(self.index),
            "images": self.images,
            "bytes": self.path.stat().st_size,
            "seconds": round(time.perf_counter() - self.started, 3),
            "rank": self.rank,
        }
        _atomic_write(self.out / f"{shard_name(self.shard)}.done.json", json.dumps(done).encode())
        return done

    def abort(self) -> None:
        """Drop the temporary tar (after an error)."""
        self._tar.close()
        self.tmp.unlink(missing_ok=True)


def is_done(out: Path, shard: int) -> bool:
    """True when the shard's done marker exists and its tar has the size the marker records."""
    marker = Path(out) / f"{shard_name(shard)}.done.json"
    tar = Path(out) / f"{shard_name(shard)}.tar"
    try:
        return tar.stat().st_size == json.loads(marker.read_text())["bytes"]
    except (OSError, ValueError, KeyError):
        return False


def clear_shard(out: Path, shard: int) -> None:
    """Remove every file of an unfinished shard (its owner is about to redo it)."""
    for path in Path(out).glob(f"{shard_name(shard)}.*"):
        path.unlink(missing_ok=True)


def dataset_record(settings: dict, *, captions_sha256: str, num_captions: int, duplicates: int, num_shards: int) -> dict:
    """The dataset.json content: the settings that define the images, plus the captions'
    hash and counts. The loader reads ``images_per_caption`` and ``image_format`` from it."""
    return {
        "version": DATASET_VERSION,
        **settings,
        "captions_sha256": captions_sha256,
        "num_captions": num_captions,
        "duplicates": duplicates,
        "num_shards": num_shards,
    }


def ensure_dataset_json(out: Path, record: dict) -> None:
    """Create ``out/dataset.json`` with ``record`` or check that the one there is equal.

    The first writer publishes it with a hard link from a complete temporary file, which fails
    if the file exists, so concurrent workers never see a partial file or overwrite each other.
    """
    path = Path(out) / DATASET_FILE
    record = json.loads(json.dumps(record))  # compare as it reads back
    if not path.exists():
        tmp = _tmp_path(path)
        _fsync_write(tmp, json.dumps(record, indent=1, sort_keys=True).encode())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GenerateError(f"cannot read {path}: {exc}") from exc
    if existing != record:
        changed = sorted(k for k in existing.keys() | record.keys() if existing.get(k) != record.get(k))
        diff = ", ".join(f"{k}: {existing.get(k)!r} there, {record.get(k)!r} now" for k in changed)
        raise GenerateError(f"{out} holds a dataset made with a different configuration ({diff}); use another --out")
