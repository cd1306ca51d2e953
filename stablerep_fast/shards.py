"""The on-disk format of a generated dataset: the one place that names its files and members.

``stablerep_fast.generate`` writes it and ``stablerep_fast.data`` reads it, both through here.
A dataset folder (one sample per caption; a sample's key is its caption id, 9 digits, no dots):

    dataset.json                 the settings that define the images (K = images_per_caption,
                                 image_format, seed, model, ..., captions_sha256, num_shards), and
                                 ``assign``: how processes split the shards (every one must use it)
    shard-000000.tar             000000042.json  {caption, caption_index, seeds, crc32, ...}
                                 000000042.txt   the caption
                                 000000042.0.jpg ... 000000042.{K-1}.jpg
    shard-000000.idx             DALI (wds2idx) index: "v1.2 <samples>", then one line per
                                 sample of "<ext> <data offset> <size> <member name>" groups
    shard-000000.done.json       written last: {shard, captions, images, bytes, seconds, rank,
                                 dataset: the settings of dataset.json that define the images,
                                 index_bytes, index_crc32: the size and CRC-32 of its .idx}
    shard-000000.lock            held (``flock``) by the process writing the shard (static split)
    shard-000000.claim-0.json    a farm's claim on the shard (dynamic split, ``generate/farm/claims.py``):
                                 {holder, host, pid, rank, claimed, renewed, lease, ...}; a takeover
                                 creates claim-1, claim-2, ...; kept after the shard is done

A folder is a path or an fsspec URL (``stablerep_fast.storage``). Every file is published
atomically (a temporary name, then a rename or move); a shard counts as done only
when its done marker exists and its tar has the size the marker records. The .idx can always be
rebuilt from the tar (``scan_tar``): a damaged one is read around by the loader and rewritten by
the next ``generate`` run. A sample's JSON holds ``crc32``: the CRC-32 of each of its K image
files, which readers check before decoding.
Nothing else in a folder belongs to the package (``is_package_file``), so nothing else is ever
removed or overwritten.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from stablerep_fast import storage
from stablerep_fast.atomic import is_temp
from stablerep_fast.errors import DataError

Folder = str | os.PathLike  # a path or an fsspec URL

DATASET_FILE = "dataset.json"
DATASET_VERSION = 1
# In dataset.json, beside the settings: "dynamic" (claims) or "static" (locks), the one split every
# process writing the folder uses; not part of what a done marker records (it does not change images).
ASSIGN_FIELD = "assign"
SHARD_PREFIX = "shard-"
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".idx"
DONE_SUFFIX = ".done.json"  # {"bytes": tar size, counts, seconds}, written after the tar is complete
LOCK_SUFFIX = ".lock"  # flock'ed by the shard's writer; never removed while a writer may hold it
CLAIM_PATTERN = re.compile(rf"{SHARD_PREFIX}(\d{{6,}})\.claim-(\d+)\.json")  # shard, generation
SHARD_PATTERN = re.compile(rf"{SHARD_PREFIX}(\d{{6,}})(\..+)")  # shard, suffix
SHARD_SUFFIXES = (TAR_SUFFIX, INDEX_SUFFIX, DONE_SUFFIX)
SHARD_GLOB = f"{SHARD_PREFIX}*{TAR_SUFFIX}"
INDEX_VERSION = "v1.2"  # wds2idx: "v1.2 SAMPLES", then per sample "EXT OFFSET SIZE NAME" repeated
KEY_DIGITS = 9
CHECKSUM_KEY = "crc32"  # in a sample's JSON: [crc32 of image 0, ..., image K-1]
SCORES_KEY = "scores"  # in a sample's JSON (generate --score): [score of image 0, ..., image K-1]
# In dataset.json (generate --score), beside the settings: the scores' histogram over the done
# shards, rewritten after every run; not compared on resume and not part of a done marker's record.
SCORE_HISTOGRAM_FIELD = "score_histogram"
# The fields of dataset.json that are no generation setting (a done marker records the rest).
NOT_SETTINGS = (ASSIGN_FIELD, SCORE_HISTOGRAM_FIELD)
SCORE_BINS = 20  # histogram bins over [0, 1]; scores outside count in the end bins

IndexEntry = tuple[str, int, int, str]  # (extension, data offset, size, member name)


# Shard files.
def shard_stem(shard: int) -> str:
    """``shard-000042``: the name of shard 42's files without their suffix."""
    return f"{SHARD_PREFIX}{shard:06d}"


def shard_file(folder: Folder, shard: int, suffix: str) -> Path | str:
    """The file of ``shard`` with ``suffix`` (TAR_SUFFIX, INDEX_SUFFIX or DONE_SUFFIX): a Path
    in a local folder, a URL in a URL's."""
    return in_folder(folder, f"{shard_stem(shard)}{suffix}")


def in_folder(folder: Folder, name: str) -> Path | str:
    """``name`` inside ``folder``: a Path for a local folder, a URL for a URL."""
    return storage.join(folder, name) if storage.is_url(folder) else Path(folder) / name


def claim_name(shard: int, generation: int) -> str:
    """``shard-000042.claim-3.json``: generation 3 of shard 42's claim (0 first, +1 per takeover)."""
    return f"{shard_stem(shard)}.claim-{generation}.json"


def parse_claim_name(name: str) -> tuple[int, int] | None:
    """(shard, generation) of a claim file's name; None for any other name."""
    match = CLAIM_PATTERN.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_shard_name(name: str) -> tuple[int, str] | None:
    """(shard, suffix) of the name of a shard's tar, .idx, done marker or lock
    (``shard-000042.done.json`` -> (42, ".done.json")); None for any other name (claims and
    temporary files included)."""
    match = SHARD_PATTERN.fullmatch(name)
    if match is None or match.group(2) not in (*SHARD_SUFFIXES, LOCK_SUFFIX):
        return None
    return int(match.group(1)), match.group(2)


def listed_shards(listing: Iterable[str], suffix: str) -> list[int]:
    """The shards that have a file with ``suffix`` among ``listing`` (a folder's file names), sorted."""
    return sorted(parsed[0] for parsed in map(parse_shard_name, listing) if parsed is not None and parsed[1] == suffix)


def sibling(tar: str | os.PathLike, suffix: str) -> str:
    """The file beside ``tar`` of the same shard with ``suffix`` (its .idx or done marker)."""
    tar = os.fspath(tar)
    if not tar.endswith(TAR_SUFFIX):
        raise ValueError(f"{tar}: not a {TAR_SUFFIX} file")
    return tar[: -len(TAR_SUFFIX)] + suffix


def shard_files(folder: Folder, shard: int, listing: list[str] | None = None) -> list[Path | str]:
    """The files of ``shard`` in ``folder`` that this package writes and that exist: its tar,
    .idx and done marker and their temporary files (not its claims). Nothing else matches,
    whatever its name. ``listing``: the folder's file names when already listed."""
    stem = shard_stem(shard)
    names = {stem + suffix for suffix in SHARD_SUFFIXES}
    found = []
    for name in storage.listdir(folder) if listing is None else listing:
        if name in names or (is_temp(name) and any(name.startswith(n + ".") for n in names)):
            found.append(in_folder(folder, name))
    return sorted(found)


def is_package_file(name: str) -> bool:
    """Whether a file named ``name`` in a dataset folder is one this package writes:
    dataset.json, a shard's tar, .idx, done marker, lock or claim, or a temporary file of one of them."""
    if is_temp(name):
        name = name.rsplit(".", 2)[0]  # NAME.<pid>-<random>.srf-tmp -> NAME
    return name == DATASET_FILE or parse_claim_name(name) is not None or parse_shard_name(name) is not None


# Samples and members.
def sample_key(caption_id: int) -> str:
    """The key of caption ``caption_id``'s sample: its id, zero-padded to KEY_DIGITS."""
    return f"{caption_id:0{KEY_DIGITS}d}"


def caption_id(key: str) -> int:
    """The caption id a sample key holds; ValueError for a key this package did not write."""
    if not re.fullmatch(r"\d+", key):
        raise ValueError(f"sample key {key!r} is not a caption id")
    return int(key)


def image_ext(k: int, image_format: str) -> str:
    """The member extension of a sample's image ``k``: ``"3.jpg"``."""
    return f"{k}.{image_format}"


def image_checksum(data: bytes) -> int:
    """The checksum recorded for an image file's bytes (CRC-32: about 1 GB/s, catches any burst)."""
    return zlib.crc32(data)


def member_name(key: str, ext: str) -> str:
    return f"{key}.{ext}"


def split_member(name: str) -> tuple[str, str]:
    """Member name -> (key, extension); as DALI and WebDataset read it, the extension is all
    after the first dot of the base name."""
    key, _, ext = os.path.basename(name).partition(".")
    return key, ext


# The .idx file.
def format_index(samples: list[list[IndexEntry]]) -> bytes:
    """The .idx text of a shard: per sample, its members' (ext, offset, size, name)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in samples]
    return ("\n".join(lines) + "\n").encode()


def read_index(path: str | os.PathLike) -> list[IndexEntry]:
    """The members an .idx file (a path or URL) lists; ValueError naming the file if it is not one."""
    return parse_index(storage.read_bytes(path), path)


def parse_index(data: bytes, path: str | os.PathLike) -> list[IndexEntry]:
    """The members the .idx text ``data`` (of the file ``path``) lists; ValueError naming the
    file if it is not an index."""
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an index (not text)") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise ValueError(f"{path}: expected a wds2idx {INDEX_VERSION} index, header is {header}")
    if int(header[1]) != len(lines) - 1:
        raise ValueError(f"{path}: its header counts {header[1]} samples, it lists {len(lines) - 1}")
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) % 4 or not fields:
            raise ValueError(f"{path}: line {number} does not hold groups of 'ext offset size name'")
        for i in range(0, len(fields), 4):
            ext, offset, size, name = fields[i : i + 4]
            if not (offset.isdigit() and size.isdigit()):
                raise ValueError(f"{path}: line {number}: offset {offset!r} and size {size!r} are not byte counts")
            entries.append((ext, int(offset), int(size), name))
    return entries


def checked_index(data: bytes, path: str | os.PathLike, tar_size: int, done: Mapping) -> list[IndexEntry]:
    """``parse_index``, then checked against the shard: the size and CRC-32 its done marker
    ``done`` records (when it does), its sample and member counts, and member byte ranges that
    follow each other in a tar of ``tar_size`` bytes as tar lays them out; ValueError saying what
    is wrong."""
    recorded = (done.get("index_bytes"), done.get("index_crc32"))
    if recorded != (None, None) and recorded != (len(data), index_checksum(data)):
        raise ValueError(f"{path}: {len(data)} bytes of CRC-32 {index_checksum(data)}, its done marker records "
                         f"{recorded[0]} bytes of CRC-32 {recorded[1]}")  # fmt: skip
    entries = parse_index(data, path)
    samples = len(index_samples(entries))
    captions, images = done.get("captions"), done.get("images")
    if isinstance(captions, int) and isinstance(images, int) and (samples, len(entries)) != (captions, 2 * captions + images):
        raise ValueError(f"{path}: lists {samples} samples of {len(entries)} members, its done marker records "
                         f"{captions} captions and {images} images")  # fmt: skip
    start = tarfile.BLOCKSIZE  # the first member's data follows its header
    for _, offset, size, name in entries:
        if offset % tarfile.BLOCKSIZE or offset < start or offset + size > tar_size:
            raise ValueError(f"{path}: {name} at bytes {offset}+{size} is not where a member of the {tar_size}-byte "
                             "tar can be")  # fmt: skip
        start = offset + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE + tarfile.BLOCKSIZE
    return entries


def index_checksum(data: bytes) -> int:
    """The checksum a done marker records of its shard's .idx (CRC-32)."""
    return zlib.crc32(data)


def index_samples(entries: list[IndexEntry]) -> list[list[IndexEntry]]:
    """Members grouped by sample, as an .idx lists them: runs of one key, in tar order."""
    samples: list[list[IndexEntry]] = []
    for entry in entries:
        if samples and split_member(samples[-1][0][3])[0] == split_member(entry[3])[0]:
            samples[-1].append(entry)
        else:
            samples.append([entry])
    return samples


def scan_tar(path: str | os.PathLike) -> list[IndexEntry]:
    """The members of a shard's tar (a path or URL) read from its headers (``index_from_tar``
    makes its .idx of them). ValueError naming the tar when it is truncated or not a tar."""
    with storage.open_read(path) as f:
        try:
            with tarfile.open(fileobj=f) as archive:
                entries = [(split_member(m.name)[1], m.offset_data, m.size, m.name) for m in archive if m.isfile()]
                end = archive.offset
        except (tarfile.TarError, EOFError) as exc:
            raise ValueError(f"truncated or unreadable tar {path}: {exc}") from None
        f.seek(end)  # tarfile stops quietly at a cut between members: check the end blocks
        if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
            raise ValueError(f"truncated tar {path}: no end-of-archive blocks after byte {end}")
    return entries


def index_from_tar(tar: str | os.PathLike, done: Mapping) -> bytes:
    """The .idx of a done shard rebuilt from its tar's headers: the bytes its writer wrote, checked
    against its done marker ``done`` as a written one is (``checked_index``). ValueError naming the
    tar when it is unreadable or not the tar the marker describes."""
    data = format_index(index_samples(scan_tar(tar)))
    try:
        checked_index(data, "its index", done["bytes"], done)
    except ValueError as exc:
        raise ValueError(f"{tar} is not the tar its done marker describes ({exc})") from None
    return data


def index_problem(folder: Folder, shard: int, done: Mapping, listing: Mapping[str, tuple[int, float | None]]) -> str | None:
    """What is wrong with the .idx of done ``shard`` as far as ``listing`` (the folder's files,
    ``storage.list_files``) shows without reading it: missing, or another size than its done
    marker ``done`` records; None when nothing shows."""
    name = shard_stem(shard) + INDEX_SUFFIX
    if name not in listing:
        return f"{name} is missing"
    recorded = done.get("index_bytes")
    if isinstance(recorded, int) and listing[name][0] != recorded:
        return f"{name} has {listing[name][0]} bytes, its done marker records {recorded}"
    return None


# The done marker.
def write_done(folder: Folder, shard: int, record: dict, *, exclusive: bool = False) -> bool:
    """Publish the done marker of ``shard``: the last file a shard gets. ``exclusive``: only if
    it has none yet (False when another writer was first)."""
    data = json.dumps(record).encode()
    location = shard_file(folder, shard, DONE_SUFFIX)
    if exclusive:
        return storage.create(location, data)
    storage.write_bytes(location, data)
    return True


def read_done(path: str | os.PathLike) -> dict:
    """A done marker's record (``bytes``: the size of its tar); ValueError naming the file when
    it is not one."""
    return _done_record(_read_json(path), path)


def _done_record(record, path: str | os.PathLike) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), int):
        raise ValueError(f"{path}: not a done marker (no byte count)")
    return record


def is_done(folder: Folder, shard: int, listing: Mapping[str, tuple[int, float | None]] | None = None) -> bool:
    """True when the shard's done marker exists and its tar has the size the marker records.
    ``listing``: the folder's files when already listed (``storage.list_files``): a shard whose
    tar or marker is not in it is not done, and the tar's size is read from it."""
    stem = shard_stem(shard)
    if listing is not None and not (stem + TAR_SUFFIX in listing and stem + DONE_SUFFIX in listing):
        return False
    try:
        recorded = read_done(shard_file(folder, shard, DONE_SUFFIX))["bytes"]
        size = listing[stem + TAR_SUFFIX][0] if listing is not None else storage.size(shard_file(folder, shard, TAR_SUFFIX))
        return size == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def done_shards(folder: Folder, listing: Mapping[str, tuple[int, float | None]] | None = None) -> tuple[dict[int, dict], list[int]]:
    """({shard: its done marker's record} of every done shard of ``folder``, [shards whose
    marker cannot be read or whose tar has another size than it records, sorted]). The markers
    are read concurrently on object stores; ``listing``: the folder's files when already listed."""
    listing = storage.list_files(folder) if listing is None else listing
    locations = {shard: storage.join(folder, f"{shard_stem(shard)}{DONE_SUFFIX}") for shard in listed_shards(listing, DONE_SUFFIX)}
    contents = storage.read_many(list(locations.values()))
    done, damaged = {}, []
    for shard, location in locations.items():
        data = contents.get(location)
        try:
            record = _done_record(json.loads(data) if isinstance(data, bytes) else None, location)
        except ValueError:  # unreadable, not JSON (UnicodeDecodeError included) or not a marker
            damaged.append(shard)
            continue
        if listing.get(shard_stem(shard) + TAR_SUFFIX, (None,))[0] != record["bytes"]:
            damaged.append(shard)
        else:
            done[shard] = record
    return done, damaged


# Score histograms (a done marker's "scores", and dataset.json's SCORE_HISTOGRAM_FIELD: their sum over the shards).
def score_histogram(scores: Iterable[float]) -> dict:
    """{count, sum, min, max, bins}: ``bins`` counts the scores in SCORE_BINS equal bins of [0, 1]."""
    values = [float(v) for v in scores]
    bins = [0] * SCORE_BINS
    for v in values:
        bins[min(max(int(v * SCORE_BINS), 0), SCORE_BINS - 1)] += 1
    return {"count": len(values), "sum": sum(values), "min": min(values, default=None), "max": max(values, default=None),
            "bins": bins}  # fmt: skip


def merge_score_histograms(histograms: Iterable[Mapping]) -> dict:
    """The histogram of the union of the scores of ``histograms``, with their ``mean``."""
    merged = score_histogram([])
    for h in histograms:
        merged["count"] += h["count"]
        merged["sum"] += h["sum"]
        merged["bins"] = [a + b for a, b in zip(merged["bins"], h["bins"])]
        for key, pick in (("min", min), ("max", max)):
            present = [v for v in (merged[key], h[key]) if v is not None]
            merged[key] = pick(present) if present else None
    merged["mean"] = merged["sum"] / merged["count"] if merged["count"] else None
    return merged


# dataset.json.
def dataset_file(folder: Folder) -> Path | str:
    return in_folder(folder, DATASET_FILE)


def is_dataset(folder: Folder) -> bool:
    """Whether ``folder`` holds a dataset of this package (its dataset.json)."""
    return storage.isfile(dataset_file(folder))


def read_dataset(folder: Folder) -> dict:
    """``folder/dataset.json``: the generation settings (K = ``images_per_caption``, ``image_format``);
    DataError naming the file when it is damaged."""
    path = dataset_file(folder)
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {folder} a folder written by stablerep_fast.generate?")
    try:
        record = _read_json(path)
    except ValueError as exc:
        raise DataError(f"{exc}; restore the file, or generate the dataset again into a new folder") from None
    if not isinstance(record, dict) or not isinstance(record.get("images_per_caption"), int):
        raise DataError(f"{path} is damaged (no images_per_caption); restore it, or generate again into a new folder")
    return record


def _read_json(path: str | os.PathLike):
    """The JSON value of a file; ValueError naming the file when it is not JSON."""
    try:
        return json.loads(storage.read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged (not JSON: {' '.join(str(exc).split())[:80]})") from None
