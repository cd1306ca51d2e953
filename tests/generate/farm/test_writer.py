import io
import json
import os
import tarfile
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from stablerep_fast.generate import GenerateError
from stablerep_fast.atomic import TEMP_SUFFIX
from stablerep_fast.generate.farm.writer import Sample, ShardWriter, clear_shard, ensure_dataset_json
from stablerep_fast.shards import is_done

K = 3


def _write_shard(out, shard=0, n=4, image_format="png"):
    rng = np.random.default_rng(shard)
    writer = ShardWriter(out, shard, image_format=image_format, quality=90, rank=1)
    samples = [
        Sample(f"{i:09d}", f"caption {i}", {"caption_index": i}, rng.integers(0, 256, (K, 16, 16, 3), dtype=np.uint8))
        for i in range(n)
    ]
    writer.add(samples[:1])
    writer.add(samples[1:])
    return samples, writer.commit()


def test_layout_read_by_tarfile(tmp_path):
    samples, done = _write_shard(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.done.json", "shard-000000.idx", "shard-000000.tar"]
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[: 2 + K] == ["000000000.json", "000000000.txt", "000000000.0.png", "000000000.1.png", "000000000.2.png"]
        assert len(names) == len(samples) * (2 + K)
        for s in samples:
            record = json.loads(tar.extractfile(f"{s.key}.json").read())
            assert record == {**s.metadata, "crc32": record["crc32"]}
            assert tar.extractfile(f"{s.key}.txt").read().decode() == s.caption
            for k in range(K):
                data = tar.extractfile(f"{s.key}.{k}.png").read()
                assert record["crc32"][k] == zlib.crc32(data)  # the checksum readers verify
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), s.images[k])
    assert done == json.loads((tmp_path / "shard-000000.done.json").read_text())
    assert done["captions"] == 4 and done["images"] == 4 * K and done["rank"] == 1
    assert done["bytes"] == (tmp_path / "shard-000000.tar").stat().st_size
    assert is_done(tmp_path, 0)


def test_read_by_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")

    samples, _ = _write_shard(tmp_path, image_format="jpg")
    read = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False))
    assert [r["__key__"] for r in read] == [s.key for s in samples]
    assert {"json", "txt", *(f"{k}.jpg" for k in range(K))} <= set(read[0])
    assert read[2]["txt"].decode() == samples[2].caption


def test_index_matches_tarfile_offsets(tmp_path):
    samples, _ = _write_shard(tmp_path, n=3)
    lines = (tmp_path / "shard-000000.idx").read_text().splitlines()
    assert lines[0] == "v1.2 3"
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        members = tar.getmembers()
    expected = [
        " ".join(f"{m.name.split('.', 1)[1]} {m.offset_data} {m.size} {m.name}" for m in members[j : j + 2 + K])
        for j in range(0, len(members), 2 + K)
    ]
    assert lines[1:] == expected


def test_read_by_dali_with_the_index(tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    samples, _ = _write_shard(tmp_path, n=4, image_format="jpg")

    @dali.pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        return tuple(fn.readers.webdataset(
            paths=[str(tmp_path / "shard-000000.tar")],
            index_paths=[str(tmp_path / "shard-000000.idx")],
            ext=["txt", "0.jpg", "2.jpg"],
            missing_component_behavior="error",
        ))

    p = pipe()
    p.build()
    txt, first, last = p.run()
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        for j, s in enumerate(samples):
            assert bytes(np.asarray(txt.at(j))).decode() == s.caption
            assert bytes(np.asarray(first.at(j))) == tar.extractfile(f"{s.key}.0.jpg").read()
            assert bytes(np.asarray(last.at(j))) == tar.extractfile(f"{s.key}.2.jpg").read()


def test_unfinished_shards_are_not_done_and_get_cleared(tmp_path):
    _write_shard(tmp_path, shard=0)
    _write_shard(tmp_path, shard=1)
    (tmp_path / "shard-000001.done.json").unlink()  # killed between rename and marker
    (tmp_path / f"shard-000002.tar.12345-0a1b2c3d{TEMP_SUFFIX}").write_bytes(b"truncated")  # killed mid-write
    (tmp_path / "shard-000001.notes.txt").write_text("the user's")  # not the package's: kept
    assert is_done(tmp_path, 0) and not is_done(tmp_path, 1) and not is_done(tmp_path, 2)
    with open(tmp_path / "shard-000000.tar", "ab") as f:  # a tar that is not the one recorded
        f.write(b"\0" * 512)
    assert not is_done(tmp_path, 0)
    for shard in (1, 2):
        clear_shard(tmp_path, shard)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-000000.done.json", "shard-000000.idx", "shard-000000.tar", "shard-000001.notes.txt"]  # fmt: skip


def test_a_crash_while_writing_leaves_no_shard(tmp_path):
    writer = ShardWriter(tmp_path, 5, image_format="jpg", quality=90)
    writer.add([Sample("000000000", "c", {}, np.zeros((1, 8, 8, 3), np.uint8))])
    assert [p.name for p in tmp_path.iterdir()] == [writer.tmp.name]
    assert writer.tmp.name.startswith(f"shard-000005.tar.{os.getpid()}-") and writer.tmp.name.endswith(TEMP_SUFFIX)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_dataset_json_first_writer_wins_others_must_match(tmp_path):
    record = {"model": "shapes", "guidance": 2.0, "images_per_caption": 10}
    errors = []

    def worker():
        try:
            ensure_dataset_json(tmp_path, record)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads((tmp_path / "dataset.json").read_text()) == record
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.json"]
    with pytest.raises(GenerateError, match=r"different configuration \(images_per_caption: 10 there, 4 now\)"):
        ensure_dataset_json(tmp_path, {**record, "images_per_caption": 4})
