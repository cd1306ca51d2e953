"""Where datasets live: a local folder or an fsspec URL (s3://, gs://, az://, file://, memory://).

Generation, the loader and ``farm-status`` reach files only through these functions, which take a
*location*: a path (``str`` or ``os.PathLike``) or a URL. A plain path goes to the local file
system through ``stablerep_fast.atomic`` (temporary file, fsync, rename; hard links for
exclusive creation); a URL goes to the fsspec file system that serves its protocol.

Publishing follows the same rule everywhere: a file is written under a temporary name
(``atomic.temp_path``'s, ending in ``.srf-tmp``) and moved to its real name once complete, so
no reader ever sees part of one. ``create`` publishes only if the name is free, atomically where
the store can (``O_EXCL``-like hard link locally; ``mode="xb"``, a conditional put, on object
stores whose fsspec backend implements it): the primitive shard claims are built on
(``generate/farm/claims.py``). ``CLAIM_SAFE_PROTOCOLS`` lists the stores where it is atomic.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from stablerep_fast.atomic import TEMP_SUFFIX, AtomicFile, atomic_write
from stablerep_fast.errors import ConfigError

Location = str | os.PathLike

# Protocols whose fsspec backend creates a file atomically only if it is absent (open(..., "xb")):
# local disks (O_EXCL), memory (one process), S3 (s3fs 2025.7+: If-None-Match on put and on
# multipart completion), GCS (gcsfs: ifGenerationMatch=0), Azure (adlfs 2024.12+); the object
# stores' backends are not installed or tested here. Other stores
# fall back to check-then-write, which two ranks can both pass: use the static split there.
CLAIM_SAFE_PROTOCOLS = frozenset({"file", "local", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: Location) -> bool:
    """Whether ``location`` is a URL (``protocol://...``, file:// included) rather than a path."""
    return isinstance(location, str) and _URL.match(location) is not None


def protocol(location: Location) -> str:
    """``"s3"`` for s3://..., ``"local"`` for a plain path."""
    return location.split("://", 1)[0].lower() if is_url(location) else "local"


def join(folder: Location, name: str) -> str:
    """The location of ``name`` inside ``folder`` (a URL stays a URL)."""
    if is_url(folder):
        return folder.rstrip("/") + "/" + name
    return os.path.join(os.fspath(folder), name)


def name_of(location: Location) -> str:
    """The last component of ``location``."""
    return os.fspath(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: Location) -> str:
    """The folder holding ``location``."""
    if is_url(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.fspath(location)) or "."


def _fs(location: str):
    """(fsspec file system, path within it) for a URL; ConfigError when no backend serves it."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{location}: no fsspec file system for {protocol(location)}:// ({exc}); "
                          "install its fsspec backend (s3fs, gcsfs, adlfs) or use a local folder") from None  # fmt: skip


def check_claims_safe(location: Location) -> None:
    """ConfigError unless ``location``'s store creates files exclusively (``CLAIM_SAFE_PROTOCOLS``)."""
    if protocol(location) not in CLAIM_SAFE_PROTOCOLS:
        raise ConfigError(f"--out {location}: {protocol(location)}:// cannot create a file only if it is absent, which dynamic "
                          f"claiming needs; use --assign static, or a store among {sorted(CLAIM_SAFE_PROTOCOLS)}")  # fmt: skip


# Reading.
def _ask(location: Location, method: str, local: Callable):
    """``fs.<method>(path)`` for a URL, ``local(location)`` for a path."""
    if is_url(location):
        fs, path = _fs(location)
        return getattr(fs, method)(path)
    return local(location)


def exists(location: Location) -> bool:
    return _ask(location, "exists", os.path.exists)


def isdir(location: Location) -> bool:
    return _ask(location, "isdir", os.path.isdir)


def isfile(location: Location) -> bool:
    return _ask(location, "isfile", os.path.isfile)


def size(location: Location) -> int:
    """The size in bytes; FileNotFoundError when absent."""
    return int(_ask(location, "size", os.path.getsize))


def modified(location: Location) -> float:
    """When ``location`` was last written (Unix time, the store's clock); now when the store does not say."""
    if is_url(location):
        fs, path = _fs(location)
        try:
            return fs.modified(path).timestamp()
        except (NotImplementedError, AttributeError):
            return time.time()
    return os.path.getmtime(location)


def read_bytes(location: Location) -> bytes:
    return _ask(location, "cat_file", lambda path: Path(path).read_bytes())


def read_range(location: Location, start: int, length: int) -> bytes:
    """``length`` bytes from ``start`` (a tar member: one ranged GET on an object store)."""
    if is_url(location):
        fs, path = _fs(location)
        return fs.cat_file(path, start=start, end=start + length)
    with open(location, "rb") as f:
        f.seek(start)
        return f.read(length)


def read_many(locations: list[str]) -> dict[str, bytes | Exception]:
    """The bytes of each location, or the exception reading it raised (concurrent requests on
    object stores); for status views that read many small files."""
    results: dict[str, bytes | Exception] = {}
    urls = [loc for loc in locations if is_url(loc)]
    if urls:
        fs, _ = _fs(urls[0])
        paths = {fs._strip_protocol(url): url for url in urls}
        for path, value in fs.cat(list(paths), on_error="return").items():
            results[paths.get(path, path)] = value
    for loc in locations:
        if not is_url(loc):
            try:
                results[loc] = read_bytes(loc)
            except OSError as exc:
                results[loc] = exc
    return results


def open_read(location: Location) -> BinaryIO:
    """A binary file object for reading (seek + read: byte ranges of a tar)."""
    return _ask(location, "open", lambda path: open(path, "rb"))


def list_files(folder: Location) -> dict[str, tuple[int, float | None]]:
    """{name: (size, modification time or None)} of the files directly in ``folder`` (not
    sub-folders); {} when it does not exist. One listing (paged on object stores)."""
    if is_url(folder):
        fs, path = _fs(folder)
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
        return {name_of(e["name"]): (int(e.get("size") or 0), _entry_time(e)) for e in entries if e.get("type") != "directory"}
    files = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if not entry.is_dir():
                        stat = entry.stat()
                        files[entry.name] = (stat.st_size, stat.st_mtime)
                except FileNotFoundError:
                    continue  # removed while listing
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return files


def listdir(folder: Location) -> list[str]:
    """The sorted names of the files directly in ``folder``; [] when it does not exist."""
    return sorted(list_files(folder))


def _entry_time(entry: dict) -> float | None:
    """The modification time of an fsspec listing entry (each backend names it its own way)."""
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
        if isinstance(value, str):
            try:
                from datetime import datetime

                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


# Writing.
def makedirs(folder: Location) -> None:
    if is_url(folder):
        fs, path = _fs(folder)
        fs.makedirs(path, exist_ok=True)
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)


def remove(location: Location) -> None:
    """Delete ``location`` if it exists (callers pass only files this package wrote)."""
    if is_url(location):
        fs, path = _fs(location)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
    else:
        Path(location).unlink(missing_ok=True)


class PublishedFile:
    """A file written under a temporary name beside ``location``; ``commit`` publishes it.

    ``file``: the binary file object to write. ``exclusive``: publish only if ``location`` is
    still absent (``commit`` then returns False, and drops the file, when another writer was
    first). Locally this is ``atomic.AtomicFile`` (``tmp`` a Path); on an fsspec store the temporary object is
    moved to its name at commit (``fs.mv``: a rename on disks, copy + delete on object stores,
    where the object appears whole). ``tmp``: the temporary file's location.
    """

    def __init__(self, location: Location, *, exclusive: bool = False):
        self.location = location
        self.exclusive = exclusive
        if is_url(location):
            self._local = None
            self.fs, self._path = _fs(location)
            self.tmp = f"{location}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
            self._tmp_path = self.fs._strip_protocol(self.tmp)
            self.file: BinaryIO = self.fs.open(self._tmp_path, "wb")
        else:
            self._local = AtomicFile(location, exclusive=exclusive)
            self.tmp = self._local.tmp
            self.file = self._local.file

    def commit(self) -> bool:
        """Close and publish; True when this file is now at ``location``."""
        if self._local is not None:
            return self._local.commit()
        try:
            self.file.close()
            if self.exclusive and self.fs.exists(self._path):
                return False
            self.fs.mv(self._tmp_path, self._path)
            return True
        finally:
            remove(self.tmp)

    def abort(self) -> None:
        """Drop the temporary file; ``location`` is left as it was."""
        if self._local is not None:
            self._local.abort()
            return
        try:
            self.file.close()
        except OSError:
            pass  # the file is being dropped: only its removal matters
        finally:
            remove(self.tmp)


def write_bytes(location: Location, data: bytes) -> None:
    """Publish ``data`` at ``location`` (replacing what is there) through a temporary file."""
    if not is_url(location):
        atomic_write(location, data)
        return
    published = PublishedFile(location)
    try:
        published.file.write(data)
    except BaseException:
        published.abort()
        raise
    published.commit()


def create(location: Location, data: bytes) -> bool:
    """Publish ``data`` at ``location`` only if nothing is there; True when this call created it.

    Atomic locally (a hard link of a complete temporary file) and on fsspec stores that implement
    ``mode="xb"`` as a conditional create (``CLAIM_SAFE_PROTOCOLS``): of several concurrent
    callers exactly one gets True. On fsspec's local file system the file exists (empty) for the
    moment between its creation and its single write: readers treat an unreadable claim as fresh.
    """
    if not is_url(location):
        return atomic_write(location, data, exclusive=True)
    fs, path = _fs(location)
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        return False
    return True
