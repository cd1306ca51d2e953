"""Writing shards: one tar per shard, published atomically, then its .idx and done marker.

The layout and names are ``stablerep_fast.shards``'. A shard's tar is written under a temporary
name (``stablerep_fast.storage``: a local folder or an fsspec URL), then published under its
name only if no other process published it first; a crash never leaves a truncated tar behind.
Only a shard with a done marker (created exclusively, last) and a tar of the size it records
counts as done, and ``clear_shard`` removes what is left of an unfinished one (only files this
package writes).
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from stablerep_fast import shards, storage
from stablerep_fast.atomic import file_lock, is_temp
from stablerep_fast.errors import GenerateError, LockError, OutputError
from stablerep_fast.generate.farm.claims import ClaimLost

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
    """Writes one shard: members go to a temporary tar; ``commit`` makes it visible.
    ``dataset``: the settings that define the images (dataset.json's), recorded in the done
    marker so that the shard can never be taken for one of another configuration. ``holder``:
    the claim holder's id (dynamic split), recorded in the done marker with the host."""

    def __init__(self, out: storage.Location, shard: int, *, image_format: str, quality: int, rank: int = 0,
                 dataset: dict | None = None, holder: str | None = None):  # fmt: skip
        self.out = out
        self.shard = shard
        self.image_format = image_format
        self.quality = quality
        self.rank = rank
        self.dataset = dataset
        self.holder = holder
        self.path = shards.shard_file(self.out, shard, shards.TAR_SUFFIX)
        self._file = storage.PublishedFile(self.path, exclusive=True)
        self.tmp = self._file.tmp
        self.started = time.perf_counter()
        self.index: list[list[shards.IndexEntry]] = []  # per sample: (ext, offset, size, name)
        self.images = 0
        self.scores: list[float] = []  # of every image, when the samples record scores
        self.regenerated = 0  # images redrawn (an attempt > 0 kept)
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
        """Encode and append samples (each: its json with the images' checksums, txt and K images)."""
        for sample in samples:
            images = [encode_image(image, self.image_format, self.quality) for image in sample.images]
            metadata = {**sample.metadata, shards.CHECKSUM_KEY: [shards.image_checksum(data) for data in images]}
            members = [("json", json.dumps(metadata, sort_keys=True).encode()), ("txt", sample.caption.encode())]
            members += [(shards.image_ext(k, self.image_format), data) for k, data in enumerate(images)]
            self.index.append([self._add_member(shards.member_name(sample.key, ext), data) for ext, data in members])
            self.images += len(sample.images)
            self.scores += sample.metadata.get(shards.SCORES_KEY, [])
            self.regenerated += sum(a > 0 for a in sample.metadata.get("attempts", []))

    def commit(self, still_ours: Callable[[], bool] | None = None) -> dict:
        """Close the tar and publish it, then its index and, last, its done marker. ``still_ours``:
        asked just before publishing (a claim not taken over); ClaimLost, with nothing published,
        when it says no or another process published the shard first."""
        self._tar.close()
        if still_ours is not None and not still_ours():
            self._file.abort()
            raise ClaimLost(f"{self.path}: the claim on this shard was taken over; nothing published")
        if not self._file.commit():
            raise ClaimLost(f"{self.path} was published by another process first (two processes with one rank?); "
                            "nothing overwritten")  # fmt: skip
        index = shards.format_index(self.index)
        storage.write_bytes(shards.shard_file(self.out, self.shard, shards.INDEX_SUFFIX), index)
        done = {
            "shard": self.shard,
            "captions": len(self.index),
            "images": self.images,
            "bytes": storage.size(self.path),
            "seconds": round(time.perf_counter() - self.started, 3),
            "finished": round(time.time(), 3),
            "rank": self.rank,
            "host": socket.gethostname(),
            "holder": self.holder,
            "dataset": self.dataset,
            "index_bytes": len(index),
            "index_crc32": shards.index_checksum(index),
        }
        if self.scores:
            done.update(scores=shards.score_histogram(self.scores), regenerated=self.regenerated)
        if not shards.write_done(self.out, self.shard, done, exclusive=True):
            raise ClaimLost(f"{self.path}: another process wrote its done marker first")
        return done

    def abort(self) -> None:
        """Drop the temporary tar (after an error; also when the disk is full and closing fails)."""
        try:
            self._tar.close()
        except OSError:
            pass  # the tar is being dropped: only its removal matters
        finally:
            self._file.abort()


@contextmanager
def shard_lock(out: storage.Location, shard: int) -> Iterator[None]:
    """Hold the lock of ``shard`` while writing it (static split); LockError at once if another
    process holds it (two processes given the same rank). The lock file is removed when released.
    A URL folder has no locks (``flock`` is local): there, one process per rank is the rule."""
    if storage.is_url(out):
        yield
        return
    path = shards.shard_file(out, shard, shards.LOCK_SUFFIX)

    def held() -> None:
        raise LockError(f"another process is writing {shards.shard_stem(shard)} in {out} (it holds {path.name}); "
                        "run one process per rank, or wait for that one to finish")  # fmt: skip

    with file_lock(path, on_wait=held, remove=True):
        yield


def check_output_folder(out: storage.Location, record: dict, assign: str | None = None) -> None:
    """Refuse (touching nothing) an ``out`` that is a file, whose dataset.json records another
    configuration than ``record`` or another split than ``assign``, that holds shards whose done
    markers record another configuration, or that has no dataset.json and holds anything but
    such shards and the package's temporary files."""
    if storage.isfile(out):
        raise OutputError(f"--out {out} is a file; give a folder (new, or a dataset folder of stablerep-fast)")
    if not storage.isdir(out):
        return
    names = os.listdir(out) if not storage.is_url(out) else storage.listdir(out)  # locally, sub-folders count too
    has_dataset = shards.is_dataset(out)  # after listing: a farm peer writes dataset.json before any shard file
    record = json.loads(json.dumps(record))  # compare as it reads back
    if has_dataset:
        _check_dataset_json(out, record, assign)
    vouched = set()  # shards whose done marker records this configuration
    for shard in shards.listed_shards(names, shards.DONE_SUFFIX):
        marker = shards.shard_file(out, shard, shards.DONE_SUFFIX)
        try:
            made_with = shards.read_done(marker).get("dataset")
        except (OSError, ValueError):
            continue  # a damaged marker: its shard is not done, and is redone by its owner
        if made_with is None and has_dataset:
            continue  # written before done markers recorded the configuration; dataset.json vouches for it
        if made_with != record:
            diff = _diff(made_with, record) if isinstance(made_with, dict) else "not recorded in it"
            raise GenerateError(f"{marker} belongs to a dataset made with another configuration ({diff}); use another --out")
        vouched.add(shard)
    if has_dataset:
        return

    def vouched_for(name: str) -> bool:  # a temporary file, a lock, a claim, or a file of a vouched shard
        parsed = shards.parse_shard_name(name)
        return is_temp(name) or shards.parse_claim_name(name) is not None or (
            parsed is not None and (parsed[1] == shards.LOCK_SUFFIX or parsed[0] in vouched))  # fmt: skip

    foreign = sorted(n for n in names if not (shards.is_package_file(n) and vouched_for(n)))
    if foreign:
        raise OutputError(f"--out {out} holds files stablerep-fast did not write or cannot vouch for "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) and no dataset.json; "
                          "use an empty or new folder")  # fmt: skip


def rewrite_index(out: storage.Location, shard: int, done: dict) -> None:
    """Write the .idx of done ``shard`` (``done``: its done marker) again, from its tar's headers:
    the bytes its writer wrote. ValueError naming the tar, with nothing written, when that is
    unreadable or not the tar the marker describes."""
    data = shards.index_from_tar(shards.shard_file(out, shard, shards.TAR_SUFFIX), done)
    storage.write_bytes(shards.shard_file(out, shard, shards.INDEX_SUFFIX), data)


def clear_shard(out: storage.Location, shard: int) -> None:
    """Remove every file this package wrote of an unfinished shard (its owner is about to redo it)."""
    for path in shards.shard_files(out, shard):
        storage.remove(path)


def write_scores_summary(out: storage.Location) -> dict | None:
    """Rewrite ``out/dataset.json`` (atomically) with its ``score_histogram``: the score histograms
    of every done shard merged (``shards.merge_score_histograms``), with the shards counted and the
    images redrawn; returns it. None, writing nothing, when no done shard records scores. Each run
    rewrites it at its end from the done markers then present: the last run to finish counts all."""
    listed = storage.list_files(out)
    done, _ = shards.done_shards(out, listed)
    scored = [record for record in done.values() if isinstance(record.get("scores"), dict)]
    if not scored:
        return None
    summary = {**shards.merge_score_histograms(r["scores"] for r in scored), "shards": len(scored),
               "regenerated": sum(int(r.get("regenerated", 0)) for r in scored),
               "bin_edges": [i / shards.SCORE_BINS for i in range(shards.SCORE_BINS + 1)]}  # fmt: skip
    dataset = {**shards.read_dataset(out), shards.SCORE_HISTOGRAM_FIELD: summary}
    storage.write_bytes(shards.dataset_file(out), json.dumps(dataset, indent=1, sort_keys=True).encode())
    return summary


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


def ensure_dataset_json(out: storage.Location, record: dict, assign: str | None = None) -> None:
    """Create ``out/dataset.json`` with ``record`` (and the split ``assign``, when given) or
    check that the one there is equal.

    The first writer publishes it exclusively (``atomic_write(..., exclusive=True)``), so
    concurrent workers never see a partial file or overwrite each other.
    """
    path = shards.dataset_file(out)
    record = json.loads(json.dumps(record))  # compare as it reads back
    if not storage.exists(path):
        written = record if assign is None else {**record, shards.ASSIGN_FIELD: assign}
        storage.create(path, json.dumps(written, indent=1, sort_keys=True).encode())
    _check_dataset_json(out, record, assign)


def _check_dataset_json(out: storage.Location, record: dict, assign: str | None) -> None:
    """Refuse a dataset.json with other settings than ``record``, or another split than ``assign``
    (a folder written before the split was recorded takes either)."""
    path = shards.dataset_file(out)
    try:
        existing = shards.read_dataset(out)
    except (OSError, ValueError) as exc:
        raise GenerateError(f"cannot read {path}: {exc}") from exc
    there = existing.get(shards.ASSIGN_FIELD)
    existing = {key: value for key, value in existing.items() if key not in shards.NOT_SETTINGS}
    if existing != record:
        raise GenerateError(f"{out} holds a dataset made with a different configuration ({_diff(existing, record)}); "
                            "use another --out")  # fmt: skip
    if None not in (there, assign) and there != assign:
        raise GenerateError(f"{out} is generated with --assign {there} ({path}), this process has --assign {assign}: "
                            f"the two would redo each other's shards; give every process --assign {there}")  # fmt: skip


def _diff(there: dict, now: dict) -> str:
    """``key: value there, value now`` for each key whose value differs."""
    changed = sorted(k for k in there.keys() | now.keys() if there.get(k) != now.get(k))
    return ", ".join(f"{k}: {there.get(k)!r} there, {now.get(k)!r} now" for k in changed)
