"""The run folder of ``train``: what it holds, who may write it, what is left after a kill.

A run folder holds ``checkpoint.pt`` (the run), ``config.yaml`` (the checkpoint's settings,
written after each checkpoint), ``log.jsonl``, optionally ``tensorboard/``, and ``train.lock``:
the lock one training process holds for the whole run (``fcntl.flock``; the kernel drops it
when the process dies, kill -9 included), with that process's PID inside. ``train`` refuses a
folder that holds other files and neither a checkpoint nor a lock file, so it never replaces a
``config.yaml`` or ``log.jsonl`` it did not write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stablerep_fast.atomic import file_lock, is_temp_of
from stablerep_fast.errors import LockError, OutputError
from stablerep_fast.train.checkpoint import CHECKPOINT

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
LOCK_FILE = "train.lock"
PUBLISHED = (CHECKPOINT, CONFIG_FILE, LOG_FILE)  # the files written through a temporary file (stablerep_fast.atomic)

log = logging.getLogger("stablerep_fast.train")


def check_run_folder(out: Path) -> None:
    """Refuse, touching nothing, an ``out`` that is a file, or a folder that is not a run folder
    (no checkpoint, no lock file) and holds anything but the temporary files of one."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"run folder {out} is a file; choose a folder for --out")
    if not out.is_dir():
        return
    names = sorted(os.listdir(out))
    if CHECKPOINT in names or LOCK_FILE in names:
        return
    foreign = [name for name in names if not any(is_temp_of(name, target) for target in PUBLISHED)]
    if foreign:
        raise OutputError(f"--out {out} holds files `train` did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}) and no {CHECKPOINT}; use an empty or new folder")  # fmt: skip


@contextmanager
def hold_run_folder(out: Path) -> Iterator[None]:
    """Create ``out`` if needed and hold its lock while the block runs; then remove the temporary
    files a killed run left. LockError naming the folder and the holder's PID when another
    process holds the lock. A run that fails before writing anything into a folder it created
    leaves no folder behind."""
    path = out / LOCK_FILE
    created = not out.exists()

    def held() -> None:
        try:
            holder = path.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise LockError(f"run folder {out} is in use by another training process (PID {holder}, which holds "
                        f"{path.name}); wait for it to end, or choose another --out")  # fmt: skip

    with file_lock(path, on_wait=held):
        path.write_text(f"{os.getpid()}\n")
        remove_stale_temp_files(out)
        try:
            yield
        except BaseException:
            if created and os.listdir(out) == [LOCK_FILE]:
                path.unlink()
                out.rmdir()
            raise


def remove_stale_temp_files(out: Path) -> list[str]:
    """Remove the temporary files of ``PUBLISHED`` files that a killed write left in ``out`` (only
    names of the package's own pattern; call it holding the folder's lock); returns their names."""
    stale = sorted(name for name in os.listdir(out) if any(is_temp_of(name, target) for target in PUBLISHED))
    for name in stale:
        (out / name).unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary files left by an interrupted run in %s", len(stale), out)
    return stale
