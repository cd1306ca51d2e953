"""Storage: a folder and an fsspec URL (file://, memory://) answer every call alike, publish whole
files only, and an exclusive create has exactly one winner."""

import os
import threading
import uuid

import pytest

from stablerep_fast import storage
from stablerep_fast.atomic import TEMP_SUFFIX


def _location(kind: str, tmp_path) -> str:
    """An empty folder: a path, a file:// URL to a path, or a memory:// URL."""
    if kind == "local":
        return str(tmp_path / "d")
    if kind == "file":
        return f"file://{tmp_path}/d"
    return f"memory://storage-{uuid.uuid4().hex[:8]}/d"


@pytest.mark.parametrize("kind", ["local", "file", "memory"])
def test_a_folder_and_urls_answer_alike(tmp_path, kind):
    folder = _location(kind, tmp_path)
    assert storage.is_url(folder) == (kind != "local") and storage.protocol(folder) == kind
    assert storage.listdir(folder) == [] and not storage.exists(folder)
    storage.makedirs(folder)
    target = storage.join(folder, "a.bin")
    assert storage.name_of(target) == "a.bin" and storage.parent(target) == folder
    storage.write_bytes(target, b"0123456789")
    storage.write_bytes(target, b"abcdefghij")  # replaces it whole
    assert storage.read_bytes(target) == b"abcdefghij" and storage.read_range(target, 3, 4) == b"defg"
    assert storage.size(target) == 10 and storage.isfile(target) and storage.isdir(folder) and not storage.isfile(folder)
    with storage.open_read(target) as f:
        f.seek(8)
        assert f.read() == b"ij"
    dropped = storage.PublishedFile(storage.join(folder, "b.bin"))
    dropped.file.write(b"half")
    dropped.abort()
    files = storage.list_files(folder)
    assert list(files) == ["a.bin"] and files["a.bin"][0] == 10  # no temporary file is left behind
    assert storage.read_many([target, storage.join(folder, "missing")])[target] == b"abcdefghij"
    storage.remove(target)
    storage.remove(target)  # absent: nothing to do
    assert storage.listdir(folder) == []


@pytest.mark.parametrize("kind", ["local", "file"])
def test_exclusive_create_has_one_winner(tmp_path, kind):
    target = tmp_path / "claim.json" if kind == "local" else f"file://{tmp_path}/claim.json"
    wins, start = [], threading.Barrier(16)

    def racer(i):
        start.wait()
        if storage.create(target, f"racer {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and storage.read_bytes(target) == f"racer {wins[0]}".encode()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(TEMP_SUFFIX)]
