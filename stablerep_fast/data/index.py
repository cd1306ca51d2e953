"""The one module that reads shards: list them, read ``dataset.json``, find each caption's images.

The format (names, members, .idx, done markers) is ``stablerep_fast.shards``'. ``open_index``
takes a folder, a list of folders generated from the same captions with different seeds (their
images are pooled per caption; folders that hold the same images are refused, as their "positives"
would be copies of each other), or a brace pattern over folders or tars; each may be a path or
an fsspec URL (``stablerep_fast.storage``: s3://, gs://, file://, memory://). Images are byte ranges
inside the tars, so a loader reads exactly the members it decodes; a sample's caption id comes
from its key, so indexing reads no member at all when the shard has its .idx. A shard whose .idx
is missing or damaged (checked against its done marker and its tar's size) is indexed from its
tar's headers instead, with a warning naming it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from stablerep_fast import shards as fmt
from stablerep_fast import storage
from stablerep_fast.errors import DataError

log = logging.getLogger("stablerep_fast.data")

# dataset.json fields that do not change which images a folder holds: the shard layout, K (image
# k of a caption depends only on the seed, the caption and k), how processes split the shards, and
# the histogram of the scores (a summary of the images, rewritten as shards finish).
LAYOUT_FIELDS = ("shard_size", "num_shards", "images_per_caption", *fmt.NOT_SETTINGS)


class ShardError(DataError):
    """A shard that cannot be read (truncated, unreadable index); the message names its path."""


@dataclass(frozen=True)
class Member:
    """One tar member as a byte range: ``path`` (the tar), data ``offset`` and ``size``, ``name``."""

    path: str  # a path or URL
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        return storage.read_range(self.path, self.offset, self.size)


@dataclass
class Caption:
    caption_id: int  # global: the caption's index in the captions file
    images: list[Member]  # pooled over all folders, in folder order then k
    meta: Member  # KEY.json of the first folder
    image_meta: list[Member] = field(default_factory=list)  # per image, the KEY.json of its sample

    def info(self) -> dict:
        """The generation record ``KEY.json`` (caption text, seeds, ...): the first of its
        folders' records that reads; ShardError when none does."""
        for meta in dict.fromkeys([self.meta, *self.image_meta]):
            record = read_record(meta)
            if record is not None:
                return record
        raise ShardError(f"caption {self.caption_id}: every {self.meta.name} is damaged ({self.meta.path}, ...)")


def read_record(meta: Member) -> dict | None:
    """A sample's JSON record, or None when it is damaged (not JSON, not a mapping)."""
    try:
        record = json.loads(meta.read())
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


@dataclass
class ShardIndex:
    captions: list[Caption]  # sorted by caption_id
    configs: list[dict]  # dataset.json of each folder
    shards: list[str]
    missing_members: int = 0  # images dataset.json promises but no tar holds
    skipped_shards: list[str] = field(default_factory=list)  # truncated or unfinished

    def __len__(self) -> int:
        return len(self.captions)

    def images_per_caption(self) -> list[int]:
        return [len(c.images) for c in self.captions]


def expand_braces(pattern: str) -> list[str]:
    """``a{0..2}b{x,y}`` -> a0bx a0by a1bx ...; numeric ranges keep zero padding (``{000..010}``)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def open_index(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> ShardIndex:
    """Index ``shards`` (folder, list of folders, or brace pattern over folders or tars).
    Folders that hold the same images (a folder and its copy, a path given twice) are refused
    (DataError): pooled, their images would be byte-identical "positives"."""
    folders = _tars_by_folder(shards)
    by_caption: dict[int, Caption] = {}
    index = ShardIndex(captions=[], configs=[], shards=[])
    for folder, tars in folders.items():
        config = fmt.read_dataset(folder)
        _check_same_captions(index.configs, config, folder)
        _check_other_images(zip(folders, index.configs), config, folder)
        index.configs.append(config)
        for tar in tars:
            try:
                samples = _read_shard(tar, config)
            except ShardError as exc:
                log.error("skipping shard: %s", exc)
                index.skipped_shards.append(tar)
                continue
            index.shards.append(tar)
            index.missing_members += _add_samples(by_caption, samples, config, tar)
    index.captions = [by_caption[i] for i in sorted(by_caption)]
    if not index.captions:
        skipped = f" (skipped as damaged: {', '.join(index.skipped_shards[:3])})" if index.skipped_shards else ""
        raise DataError(f"no readable shards in {shards!r}{skipped}")
    return index


def _check_same_captions(configs: list[dict], config: dict, folder: str) -> None:
    """Folders are pooled per caption id, which only means something for the same captions."""
    if configs and configs[0].get("captions_sha256") != config.get("captions_sha256"):
        raise ValueError(f"{folder} was generated from other captions than the folders before it (captions_sha256 differs)")


def _check_other_images(earlier: Iterable[tuple[str, dict]], config: dict, folder: str) -> None:
    """Refuse ``folder`` when an ``earlier`` (folder, dataset.json) holds the same images: the same
    dataset.json but for the shard layout and K (a copy, or a second run with the same seed)."""

    def images(record: dict) -> dict:
        return {key: value for key, value in record.items() if key not in LAYOUT_FIELDS}

    for other, other_config in earlier:
        if images(other_config) == images(config):
            raise DataError(f"{other} and {folder} hold the same images (same captions, model and seed "
                            f"{config.get('seed')!r} in dataset.json): pooled, each caption's positives would be copies; "
                            "pool folders generated with different --seed")  # fmt: skip


def _tars_by_folder(shards) -> dict[str, list[str]]:
    """The finished tars to read, grouped by the folder that holds their dataset.json; DataError
    for a path given twice."""
    if isinstance(shards, (str, os.PathLike)):
        paths = expand_braces(os.fspath(shards))
    else:
        paths = [os.fspath(p) for p in shards]
    twice = sorted(path for path, count in Counter(paths).items() if count > 1)
    if twice:
        raise DataError(f"{twice[0]} is given twice in the data: its images would be pooled with themselves; give it once")
    folders: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        if storage.isdir(path):
            names = fnmatch.filter(storage.listdir(path), fmt.SHARD_GLOB)
            folders[path].extend(_finished(sorted(storage.join(path, name) for name in names)))
        elif path.endswith(fmt.TAR_SUFFIX) and storage.isfile(path):
            folders[storage.parent(path)].extend(_finished([path]))
        else:
            raise FileNotFoundError(f"{path}: neither a shard folder nor a {fmt.TAR_SUFFIX} file")
    return folders


def _finished(tars: Iterable[str]) -> list[str]:
    """Tars whose done marker exists; the others are reported and left out."""
    done = []
    for tar in tars:
        if storage.exists(fmt.sibling(tar, fmt.DONE_SUFFIX)):
            done.append(tar)
        else:
            log.warning("skipping %s: no done marker (generation unfinished?)", tar)
    return done


def _read_shard(tar: str, config: dict) -> dict[str, dict[str, Member]]:
    """{key: {extension: Member}} from the shard's .idx (or a tar scan when that is missing or
    damaged), checked against its done marker (size, and the configuration it was made with:
    ``config``'s)."""
    tar_size = storage.size(tar)
    try:
        done = fmt.read_done(fmt.sibling(tar, fmt.DONE_SUFFIX))
    except (OSError, ValueError) as exc:
        raise ShardError(f"unreadable done marker: {exc}") from None
    if tar_size != done["bytes"]:
        raise ShardError(f"truncated tar {tar}: {tar_size} bytes, its done marker records {done['bytes']}")
    made_with = done.get("dataset")  # absent in markers written before it was recorded
    config = {key: value for key, value in config.items() if key not in fmt.NOT_SETTINGS}  # not in done markers
    if made_with is not None and made_with != config:
        changed = sorted(k for k in config if not isinstance(made_with, dict) or made_with.get(k) != config.get(k))
        raise ShardError(f"{tar} was made with another configuration than its folder's dataset.json ({', '.join(changed)})")
    samples: dict[str, dict[str, Member]] = defaultdict(dict)
    for _, offset, size, name in _index_entries(tar, tar_size, done):
        key, ext = fmt.split_member(name)
        samples[key][ext] = Member(tar, offset, size, name)
    return samples


def _index_entries(tar: str, tar_size: int, done: dict) -> list[fmt.IndexEntry]:
    """The members the shard's .idx lists; read from the tar's headers, with a warning naming the
    .idx, when that is missing or damaged; ShardError when the tar cannot stand in for it either
    (unreadable, or not the tar its done marker ``done`` describes)."""
    idx = fmt.sibling(tar, fmt.INDEX_SUFFIX)
    try:
        return fmt.checked_index(storage.read_bytes(idx), idx, tar_size, done)
    except FileNotFoundError:
        problem = f"{idx} is missing"
    except ValueError as exc:
        problem = f"damaged index {exc}"
    try:
        data = fmt.index_from_tar(tar, done)
    except ValueError as exc:
        raise ShardError(f"{problem}, and {exc}") from None
    log.warning("%s; indexed from the tar's headers instead (slower to open; remove the .idx and run generate on "
                "the folder again to rewrite it)", problem)  # fmt: skip
    return fmt.parse_index(data, tar)


def _add_samples(by_caption: dict[int, Caption], samples: dict[str, dict[str, Member]], config: dict, tar: str) -> int:
    """Pool the images of ``samples`` into ``by_caption``; returns how many promised images are missing."""
    expected, image_format = int(config["images_per_caption"]), config["image_format"]
    missing = 0
    for key, members in samples.items():
        if "json" not in members:
            log.warning("%s: sample %s has no %s.json, skipped", tar, key, key)
            missing += expected
            continue
        try:
            caption_id = fmt.caption_id(key)
        except ValueError:
            log.warning("%s: sample %s is not keyed by a caption id, skipped", tar, key)
            missing += expected
            continue
        images = [members.get(fmt.image_ext(k, image_format)) for k in range(expected)]
        absent = [k for k, member in enumerate(images) if member is None]
        if absent:
            log.warning("%s: sample %s lacks images %s", tar, key, absent)
            missing += len(absent)
        caption = by_caption.setdefault(caption_id, Caption(caption_id, [], members["json"]))
        present = [member for member in images if member is not None]
        caption.images.extend(present)
        caption.image_meta.extend([members["json"]] * len(present))
    return missing


def filter_by_score(index: ShardIndex, min_score: float, views: int) -> tuple[ShardIndex, int, int]:
    """``index`` without the images whose recorded score (``generate --score``: the ``scores`` of
    their sample's KEY.json) is below ``min_score``, and without the captions left with fewer than
    ``views`` (m) images, so every group stays whole; (that index, images left out, captions left
    out). Nothing is rewritten. DataError naming the sample when an image has no score."""
    records: dict[Member, dict | None] = {}
    kept, low_images, low_captions = [], 0, 0
    for caption in index.captions:
        images, metas = [], []
        for member, meta in zip(caption.images, caption.image_meta):
            if meta not in records:
                records[meta] = read_record(meta)
            scores = (records[meta] or {}).get(fmt.SCORES_KEY)
            k = int(fmt.split_member(member.name)[1].partition(".")[0])
            if not isinstance(scores, list) or k >= len(scores):
                raise DataError(f"{meta.name} in {meta.path} records no score for image {k}: min_score needs shards "
                                "generated with --score NAME; generate them so, or leave min_score unset")  # fmt: skip
            if scores[k] >= min_score:
                images.append(member)
                metas.append(meta)
            else:
                low_images += 1
        if len(images) >= views:
            kept.append(Caption(caption.caption_id, images, caption.meta, metas))
        else:
            low_captions += 1
    if not kept:
        raise DataError(f"min_score {min_score}: no caption of {index.shards[0]}, ... keeps {views} images scoring at "
                        "least that; lower min_score")  # fmt: skip
    filtered = ShardIndex(kept, index.configs, index.shards, index.missing_members, index.skipped_shards)
    return filtered, low_images, low_captions
