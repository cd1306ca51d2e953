"""Files that appear complete or not at all (write a temporary file, fsync, rename), and locks.

Every file the package publishes (shards and their index and done marker, ``dataset.json``,
checkpoints, TensorRT engines and timing caches) is written through here, so a crash or a kill
never leaves a half-written file under its real name. Temporary files sit beside their target
as ``NAME.<pid>-<random>.srf-tmp``: unique across processes and threads, and recognisable by
``TEMP_SUFFIX`` as the package's own (safe to remove when no process is writing them).
``file_lock`` serialises writers of one file across processes (``fcntl.flock``).
"""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TEMP_SUFFIX = ".srf-tmp"


def temp_path(path: str | os.PathLike) -> Path:
    """A unique temporary name beside ``path``, ending in TEMP_SUFFIX."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def is_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of this package (see ``temp_path``)."""
    return Path(path).name.endswith(TEMP_SUFFIX)


def is_temp_of(name: str, target: str) -> bool:
    """Whether a file named ``name`` is a temporary file of one named ``target`` (see ``temp_path``):
    ``target.<pid>-<8 hex digits>.srf-tmp`` exactly, so no other file matches."""
    return re.fullmatch(re.escape(target) + r"\.\d+-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX), name) is not None


class AtomicFile:
    """A binary file written under a temporary name; ``commit`` publishes it as ``path``.

    Use as ``with AtomicFile(path) as f: f.write(...)`` (committed when the block ends without
    an exception, removed otherwise), or keep the object and call ``commit``/``abort`` when
    the writes span several calls. ``exclusive=True``: publish only if ``path`` does not exist
    yet (a hard link, so concurrent writers never overwrite each other); ``commit`` then
    returns False when another writer was first.
    """

    def __init__(self, path: str | os.PathLike, *, exclusive: bool = False):
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.exclusive = exclusive
        self.file: BinaryIO = open(self.tmp, "wb")

    def commit(self) -> bool:
        """Flush, fsync and publish; True when this file is now at ``path``."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if not self.exclusive:
                os.replace(self.tmp, self.path)
                return True
            try:
                os.link(self.tmp, self.path)
                return True
            except FileExistsError:
                return False
        finally:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was. The file is removed
        even when closing fails (a full disk fails the last flush too)."""
        try:
            self.file.close()
        except OSError:
            pass  # the file is being dropped: only its removal matters
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write(path: str | os.PathLike, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically (see AtomicFile); True when it was published."""
    atomic = AtomicFile(path, exclusive=exclusive)
    try:
        atomic.file.write(data)
    except BaseException:
        atomic.abort()
        raise
    return atomic.commit()


@contextmanager
def file_lock(path: Path, *, on_wait: Callable[[], None] | None = None, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if needed). ``on_wait`` is called
    once if another process holds it, before blocking. The kernel drops the lock if the holder
    dies, so a crashed builder never blocks the others for good. ``remove``: delete the lock
    file when done; safe because a locker that finds, once it holds the lock, that ``path`` is
    no longer the file it locked starts again on the file now there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                held = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                held = False
            if not held:  # removed (or replaced) by the holder before us: lock the file now there
                fcntl.flock(handle, fcntl.LOCK_UN)
                continue
            try:
                yield
            finally:
                if remove:
                    path.unlink(missing_ok=True)
                fcntl.flock(handle, fcntl.LOCK_UN)
            return
