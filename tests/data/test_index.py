"""The shard index: listing, pooling over folders, brace patterns, damaged shards."""

import json
import logging
import os
import zlib

import pytest
from conftest import CAPTIONS, K, write_shards

from stablerep_fast.generate import shapes

from stablerep_fast.data.index import Member, expand_braces, open_index


def test_folder(shards):
    index = open_index(shards)
    assert [c.caption_id for c in index.captions] == list(range(CAPTIONS))
    assert index.images_per_caption() == [K] * CAPTIONS
    assert len(index.shards) == 3 and index.missing_members == 0
    caption = index.captions[5]
    assert caption.info()["caption"] == shapes.make_captions(CAPTIONS)[5]
    assert caption.images[2].name == "000000005.2.jpg"
    assert caption.images[2].read()[:3] == b"\xff\xd8\xff"


def test_expand_braces():
    assert expand_braces("a{0..2}") == ["a0", "a1", "a2"]
    assert expand_braces("s-{008..010}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar"]
    assert expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert expand_braces("plain") == ["plain"]


def test_brace_pattern_over_tars(shards):
    index = open_index(f"{shards}/shard-{{000000..000001}}.tar")
    assert [c.caption_id for c in index.captions] == list(range(20))


def test_index_file_and_tar_scan_agree(shards, tmp_path):
    folder = write_shards(tmp_path / "noidx", 6)
    with_idx = open_index(folder).captions
    os.remove(folder / "shard-000000.idx")
    assert open_index(folder).captions == with_idx


@pytest.mark.parametrize("damage", ["garbage", "cut", "same size", "missing"])
def test_a_damaged_index_is_read_around_from_the_tar_and_named(tmp_path, caplog, damage):
    """Whatever happened to a done shard's .idx (garbage, a cut, a flipped digit, gone), its
    captions are indexed from the tar: the same members as with the intact index, and a warning
    naming the .idx."""
    folder = write_shards(tmp_path / "data", 20)
    intact = open_index(folder)
    idx = folder / "shard-000001.idx"
    data = idx.read_bytes()
    damaged = {"garbage": b"garbage\n", "cut": data[: len(data) // 3], "same size": data.replace(b" 512 ", b" 612 ", 1)}
    if damage == "missing":
        idx.unlink()
    else:
        idx.write_bytes(damaged[damage])
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        index = open_index(folder)
    assert index.captions == intact.captions and index.skipped_shards == [] and len(index.shards) == 2
    assert f"{idx}" in caplog.text and "indexed from the tar's headers instead" in caplog.text


def test_folders_pool_images_per_caption(tmp_path):
    for seed in (0, 1):
        write_shards(tmp_path / f"seed{seed}", 6, seed=seed)
    pooled = open_index([tmp_path / "seed0", tmp_path / "seed1"])
    assert pooled.images_per_caption() == [2 * K] * 6
    assert {m.path for m in pooled.captions[0].images} == {
        str(tmp_path / f"seed{s}" / "shard-000000.tar") for s in (0, 1)
    }
    assert open_index(f"{tmp_path}/seed{{0,1}}").captions == pooled.captions
    write_shards(tmp_path / "other", 7)
    with pytest.raises(ValueError, match="other captions"):
        open_index([tmp_path / "seed0", tmp_path / "other"])


def test_missing_member_is_counted(tmp_path, caplog):
    folder = write_shards(tmp_path / "missing", 4)
    tar = folder / "shard-000000.tar"
    lines = (folder / "shard-000000.idx").read_text().splitlines()
    fields = lines[1].split()  # caption 0: drop its image 1 from the index, as if never written
    at = fields.index("000000000.1.jpg")
    lines[1] = " ".join(fields[: at - 3] + fields[at + 1 :])
    index = ("\n".join(lines) + "\n").encode()
    (folder / "shard-000000.idx").write_bytes(index)
    marker = folder / "shard-000000.done.json"  # which agrees, or the index would be taken for damaged
    record = json.loads(marker.read_text())
    record.update(images=record["images"] - 1, index_bytes=len(index), index_crc32=zlib.crc32(index))
    marker.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        index = open_index(folder)
    assert index.missing_members == 1
    assert index.images_per_caption() == [K - 1, K, K, K]
    assert f"{tar}: sample 000000000 lacks images [1]" in caplog.text


def test_truncated_tar_is_reported_with_its_path(tmp_path, caplog):
    folder = write_shards(tmp_path / "truncated", 20)
    tar = folder / "shard-000001.tar"
    os.truncate(tar, os.path.getsize(tar) // 2)
    with caplog.at_level(logging.ERROR, logger="stablerep_fast.data"):
        index = open_index(folder)
    assert index.skipped_shards == [str(tar)]
    assert [c.caption_id for c in index.captions] == list(range(10))
    assert f"truncated tar {tar}" in caplog.text
    marker = folder / "shard-000001.done.json"  # a marker that agrees: the index file disagrees
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "bytes": os.path.getsize(tar)}))
    assert open_index(folder).skipped_shards == [str(tar)]
    os.remove(tar.with_suffix(".idx"))  # and without it, the tar scan misses the end blocks
    assert open_index(folder).skipped_shards == [str(tar)]


def test_unfinished_shard_is_left_out(tmp_path, caplog):
    folder = write_shards(tmp_path / "unfinished", 20)
    os.remove(folder / "shard-000001.done.json")
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        index = open_index(folder)
    assert len(index) == 10
    assert "shard-000001.tar: no done marker" in caplog.text


def test_not_a_shard_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        open_index(tmp_path)


def test_caption_ids_come_from_the_keys_not_the_json_members(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "keys", 12)
    reads = []
    monkeypatch.setattr(Member, "read", lambda self: reads.append(self.name) or b"")
    index = open_index(folder)  # with .idx files: no member is read at all
    assert reads == []
    assert [c.caption_id for c in index.captions] == list(range(12))
    assert [c.meta.name for c in index.captions] == [f"{i:09d}.json" for i in range(12)]
