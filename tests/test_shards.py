"""The shard format module: names, keys, the .idx round trip, done markers."""

import io
import json
import tarfile
import zlib

import pytest

from stablerep_fast import shards, storage
from stablerep_fast.atomic import TEMP_SUFFIX


def test_names_and_keys():
    assert shards.shard_stem(42) == "shard-000042"
    assert shards.sibling("/d/shard-000042.tar", shards.DONE_SUFFIX) == "/d/shard-000042.done.json"
    with pytest.raises(ValueError, match="not a .tar file"):
        shards.sibling("/d/notes.txt", shards.INDEX_SUFFIX)
    for caption_id in (0, 7, 123456789, 10**10):
        key = shards.sample_key(caption_id)
        assert "." not in key and len(key) >= shards.KEY_DIGITS and shards.caption_id(key) == caption_id
    for bad in ("", "abc", "12a", "-3", "1.5"):
        with pytest.raises(ValueError, match="not a caption id"):
            shards.caption_id(bad)
    name = shards.member_name(shards.sample_key(5), shards.image_ext(3, "jpg"))
    assert name == "000000005.3.jpg" and shards.split_member(f"some/dir/{name}") == ("000000005", "3.jpg")
    assert shards.is_package_file("shard-000000.lock") and not shards.is_package_file("shard-000000.lock.bak")


def test_index_round_trip(tmp_path):
    samples = [[("json", 512, 20, "000000000.json"), ("0.jpg", 1024, 700, "000000000.0.jpg")], [("json", 2048, 19, "000000001.json")]]
    path = tmp_path / "a.idx"
    path.write_bytes(shards.format_index(samples))
    assert path.read_text().splitlines()[0] == "v1.2 2"
    assert shards.read_index(path) == [entry for sample in samples for entry in sample]
    path.write_text("v1.2 1\njson 512 20\n")
    with pytest.raises(ValueError, match="line 2"):
        shards.read_index(path)
    path.write_text("v1.1 1\n")
    with pytest.raises(ValueError, match="expected a wds2idx v1.2 index"):
        shards.read_index(path)


def test_done_marker_and_shard_files(tmp_path):
    tar = shards.shard_file(tmp_path, 3, shards.TAR_SUFFIX)
    tar.write_bytes(b"x" * 1024)
    assert not shards.is_done(tmp_path, 3)
    shards.write_done(tmp_path, 3, {"bytes": 1024})
    assert shards.is_done(tmp_path, 3) and shards.read_done(shards.sibling(tar, shards.DONE_SUFFIX)) == {"bytes": 1024}
    shards.write_done(tmp_path, 3, {"bytes": 1000})
    assert not shards.is_done(tmp_path, 3)
    ours = [tmp_path / f"shard-000003.idx.1-ab{TEMP_SUFFIX}"]
    theirs = [tmp_path / "shard-000003.tar.bak", tmp_path / "shard-000003.jpg", tmp_path / "shard-000004.tar",
              tmp_path / f"shard-000003.other.1-ab{TEMP_SUFFIX}"]  # fmt: skip
    for path in ours + theirs:
        path.write_bytes(b"")
    assert shards.shard_files(tmp_path, 3) == sorted([tar, tmp_path / "shard-000003.done.json", *ours])


def test_shard_names_parse_back():
    for shard in (0, 42, 10**7):
        for suffix in (*shards.SHARD_SUFFIXES, shards.LOCK_SUFFIX):
            assert shards.parse_shard_name(shards.shard_stem(shard) + suffix) == (shard, suffix)
    others = ["dataset.json", shards.claim_name(3, 1), f"shard-000003.tar.1-ab{TEMP_SUFFIX}", "shard-000003.tar.bak",
              "shard-3.tar", "shard-000003", "notes.txt"]  # fmt: skip
    assert [shards.parse_shard_name(name) for name in others] == [None] * len(others)
    assert shards.listed_shards(["shard-000007.done.json", "shard-000002.done.json", "shard-000005.tar", *others],
                                shards.DONE_SUFFIX) == [2, 7]  # fmt: skip


def test_done_checks_with_a_listing(tmp_path):
    """With a listing, a shard is done only if both files are listed and the listed tar size is the
    marker's; done_shards reads every marker once and reports the damaged ones."""
    for shard, size in ((0, 100), (1, 200), (2, 300)):
        shards.shard_file(tmp_path, shard, shards.TAR_SUFFIX).write_bytes(b"x" * size)
    shards.write_done(tmp_path, 0, {"bytes": 100, "images": 4})
    shards.write_done(tmp_path, 1, {"bytes": 999})  # a tar of another size
    shards.shard_file(tmp_path, 2, shards.DONE_SUFFIX).write_text("{not json")
    shards.write_done(tmp_path, 3, {"bytes": 5})  # a marker without its tar
    listing = storage.list_files(tmp_path)
    assert [shards.is_done(tmp_path, s, listing) for s in range(4)] == [True, False, False, False]
    assert [shards.is_done(tmp_path, s) for s in range(4)] == [True, False, False, False]  # the same without one
    assert not shards.is_done(tmp_path, 0, {k: v for k, v in listing.items() if not k.endswith(shards.DONE_SUFFIX)})
    assert not shards.is_done(tmp_path, 0, {**listing, "shard-000000.tar": (101, None)})  # the listed size is used
    done, damaged = shards.done_shards(tmp_path)
    assert done == {0: {"bytes": 100, "images": 4}} and damaged == [1, 2, 3]


def test_read_dataset_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        shards.read_dataset(tmp_path)
    assert not shards.is_dataset(tmp_path)
    (tmp_path / shards.DATASET_FILE).write_text(json.dumps({"images_per_caption": 3}))
    assert shards.is_dataset(tmp_path) and shards.read_dataset(tmp_path) == {"images_per_caption": 3}


def _tar_with_index(folder, samples: int = 3, k: int = 2) -> tuple[bytes, dict]:
    """shard-000000.tar as tarfile lays it out (json, txt and k images per sample), with the .idx
    bytes of its members (tarfile's own offsets) and the done marker a writer records."""
    path = folder / "shard-000000.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(samples):
            for ext in ("json", "txt", *(f"{j}.jpg" for j in range(k))):
                data = f"{i}-{ext}".encode() * (1 + 300 * (ext == "0.jpg"))  # one member longer than a block
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        lines = [f"v1.2 {samples}"]
        members = tar.getmembers()
        per = 2 + k
        for i in range(samples):
            group = members[i * per : (i + 1) * per]
            lines.append(" ".join(f"{m.name.split('.', 1)[1]} {m.offset_data} {m.size} {m.name}" for m in group))
    index = ("\n".join(lines) + "\n").encode()
    done = {"bytes": path.stat().st_size, "captions": samples, "images": samples * k,
            "index_bytes": len(index), "index_crc32": zlib.crc32(index)}  # fmt: skip
    return index, done


def test_the_index_rebuilt_from_the_tar_is_the_written_one(tmp_path):
    index, _ = _tar_with_index(tmp_path)
    entries = shards.scan_tar(tmp_path / "shard-000000.tar")
    assert shards.format_index(shards.index_samples(entries)) == index
    (tmp_path / "cut.tar").write_bytes((tmp_path / "shard-000000.tar").read_bytes()[:2000])
    with pytest.raises(ValueError, match="truncated"):
        shards.scan_tar(tmp_path / "cut.tar")


def test_a_damaged_index_is_told_from_its_shard(tmp_path):
    """checked_index takes the index written for the shard and refuses any damage: against the
    size and CRC-32 its done marker records, and, for markers that record none, by its form,
    its counts and where tar can hold members."""
    index, done = _tar_with_index(tmp_path)
    size = done["bytes"]
    expected = shards.parse_index(index, "x.idx")
    assert shards.checked_index(index, "x.idx", size, done) == expected
    older = {key: value for key, value in done.items() if not key.startswith("index_")}
    assert shards.checked_index(index, "x.idx", size, older) == expected
    flipped = index.replace(b" 512 ", b" 612 ", 1)
    with pytest.raises(ValueError, match="x.idx: .* its done marker records"):
        shards.checked_index(flipped, "x.idx", size, done)
    lines = index.decode().splitlines()
    first = lines[1].split()
    damaged = {
        "garbage": b"garbage\n",
        "cut": index[: len(index) // 2],
        "not text": b"\xff\xfe" + index,
        "a sample fewer": ("\n".join([f"v1.2 {len(lines) - 2}", *lines[2:]]) + "\n").encode(),
        "an image fewer": ("\n".join([lines[0], " ".join(first[:-4]), *lines[2:]]) + "\n").encode(),
        "unaligned": index.replace(b" 512 ", b" 513 ", 1),
        "overlapping": ("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n").encode(),
        "past the end": index.replace(f" {first[-3]} ".encode(), f" {size} ".encode(), 1),
    }
    for name, data in damaged.items():
        with pytest.raises(ValueError, match="x.idx"):
            shards.checked_index(data, "x.idx", size, older)
            pytest.fail(f"{name}: taken for the shard's index")


def test_index_problems_show_in_a_listing(tmp_path):
    index, done = _tar_with_index(tmp_path)
    idx = tmp_path / "shard-000000.idx"
    idx.write_bytes(index)
    assert shards.index_problem(tmp_path, 0, done, storage.list_files(tmp_path)) is None
    idx.write_bytes(index[:-1])
    assert shards.index_problem(tmp_path, 0, done, storage.list_files(tmp_path)) == (
        f"shard-000000.idx has {len(index) - 1} bytes, its done marker records {len(index)}")
    idx.unlink()
    assert shards.index_problem(tmp_path, 0, done, storage.list_files(tmp_path)) == "shard-000000.idx is missing"
