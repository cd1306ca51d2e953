"""Atomic files: a write is published whole or not at all, an exclusive one by one writer, and a
lock is held by one process or thread at a time."""

import os
import threading
import time

import pytest

from stablerep_fast.atomic import AtomicFile, atomic_write, file_lock, is_temp


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.bin"
    assert atomic_write(path, b"one") and path.read_bytes() == b"one"
    assert atomic_write(path, b"two") and path.read_bytes() == b"two"
    with pytest.raises(RuntimeError):
        with AtomicFile(path) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["f.bin"]
    atomic = AtomicFile(path)
    atomic.file.write(b"three")
    assert is_temp(atomic.tmp) and atomic.tmp.parent == tmp_path and path.read_bytes() == b"two"
    atomic.commit()
    assert path.read_bytes() == b"three" and sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_exclusive_atomic_write_has_one_winner(tmp_path):
    path = tmp_path / "once.json"
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append((i, atomic_write(path, str(i).encode(), exclusive=True))))
               for i in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results if won]
    assert len(winners) == 1 and path.read_text() == str(winners[0])
    assert os.listdir(tmp_path) == ["once.json"]


def test_a_removed_lock_file_is_never_held_twice(tmp_path):
    """A waiter that locked the file its holder then removed starts again on the file now at the
    path, so two holders never overlap (the shard lock removes its file when released)."""
    path, events = tmp_path / "shard-000000.lock", []

    def worker(name: str, hold: float) -> None:
        with file_lock(path, remove=True):
            events.append(("in", name))
            time.sleep(hold)
            events.append(("out", name))

    first = threading.Thread(target=worker, args=("first", 0.3))
    first.start()
    time.sleep(0.1)
    others = [threading.Thread(target=worker, args=(f"w{i}", 0.05)) for i in range(3)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(10)
    assert len(events) == 8 and all(events[i][0] == "in" and events[i + 1] == ("out", events[i][1]) for i in range(0, 8, 2))
    assert not path.exists()
