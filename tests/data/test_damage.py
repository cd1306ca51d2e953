"""Damaged shards never stop a loader and never reach a batch: each case is counted and named.

The fuzz test writes random bytes into random members of a shard, trial after trial, and checks
that both backends finish every epoch and that every image they return is, pixel for pixel, one
of its caption's intact images.
"""

import hashlib
import json
import logging

import numpy as np
import pytest
from conftest import K, write_shards

from stablerep_fast import shards as fmt
from stablerep_fast.data import available_backends, build_loader, open_index
from stablerep_fast.errors import DataError

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif("dali" not in available_backends(), reason="no DALI"))]
S = 32


def _loader(folder, backend, n, m, **kwargs):
    options = dict(image_size=S, backend=backend, device="cpu", num_workers=0 if backend == "torch" else 1, augment="none")
    return build_loader(folder, n, m, **{**options, **kwargs})


def _overwrite(member, data: bytes, at: int = 0) -> None:
    with open(member.path, "r+b") as f:
        f.seek(member.offset + at)
        f.write(data)


def _break_huffman_table(member) -> None:
    """Damage inside a JPEG that no decoder accepts: its first Huffman table claims 255 codes
    of every length (start and end markers intact)."""
    _overwrite(member, b"\xff" * 16, member.read().index(b"\xff\xc4") + 5)


def _scramble_scan(member) -> None:
    """Damage inside a JPEG that still decodes, to other pixels: 40 bytes of its scan data."""
    _overwrite(member, bytes(range(40)), member.read().index(b"\xff\xda") + 20)


def _digests(images) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]


def _intact_views(folder, backend) -> dict[int, set[str]]:
    """For each caption id, the digests of its K images as the backend returns them (augment none)."""
    captions = len(open_index(folder))
    ((images, labels),) = list(_loader(folder, backend, captions, K))
    views = {}
    for digest, label in zip(_digests(images), labels.tolist()):
        views.setdefault(label, set()).add(digest)
    return views


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """Shards as written before checksums were recorded (the JSON key is renamed while writing)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(fmt, "CHECKSUM_KEY", "not_a_checksum")
    try:
        return write_shards(tmp_path_factory.mktemp("legacy") / "data", 8, shard_size=8)
    finally:
        patch.undo()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_that_does_not_decode_is_named_counted_and_replaced(legacy, backend, caplog, tmp_path):
    """Without a checksum to catch it, the damage reaches the decoder (DALI's kills its whole
    batch): the image is found, named, counted and replaced, and the epoch goes on."""
    import shutil

    folder = shutil.copytree(legacy, tmp_path / "data")
    member = open_index(folder).captions[3].images[1]
    _break_huffman_table(member)
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        loader = _loader(folder, backend, 8, K)
        ((images, labels),) = list(loader)
    assert sorted(labels[:7].tolist()) == [0, 1, 2, 4, 5, 6, 7] and images.shape[0] == 7 * K
    assert (loader.skipped.corrupt_images, loader.skipped.skipped_captions) == (1, 1)
    assert f"corrupt image {member.name} in {member.path} (does not decode)" in caplog.text
    if backend == "dali":  # the pipeline failed on the batch, found the image and was rebuilt without it
        assert f"DALI cannot decode {member.name} in {member.path}; batch 0 is read again without it" in caplog.text
    loader = _loader(folder, backend, 8, K - 1)  # m < K: the image is replaced by another of its caption
    ((images, labels),) = list(loader)
    assert images.shape[0] == 8 * (K - 1) and loader.skipped.skipped_captions == 0


def _cpu_refuses(member) -> bool:
    from stablerep_fast.data.torch_loader import decode

    return decode(member.read()) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_damage_that_still_decodes_is_caught_by_the_checksum(tmp_path, backend, caplog):
    folder = write_shards(tmp_path / "data", 8, shard_size=8)
    intact = _intact_views(folder, backend)
    member = open_index(folder).captions[5].images[2]
    _scramble_scan(member)
    assert not _cpu_refuses(member)  # without the checksum it would be trained on
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        loader = _loader(folder, backend, 8, K)
        ((images, labels),) = list(loader)
    assert all(d in intact[label] for d, label in zip(_digests(images), labels.tolist()))
    assert (loader.skipped.corrupt_images, loader.skipped.skipped_captions) == (1, 1) and 5 not in labels.tolist()
    assert f"corrupt image {member.name} in {member.path} (checksum mismatch)" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_with_no_readable_image_is_skipped_and_counted(tmp_path, backend, caplog):
    folder = write_shards(tmp_path / "data", 8, shard_size=8)
    loader = _loader(folder, backend, 4, 2)
    first = next(loader.sampler.batches(0))
    index = open_index(folder)
    for position in first.captions:
        for member in index.captions[position].images:
            _overwrite(member, bytes(member.size))
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        batches = list(loader)
    assert len(batches) == len(loader) - 1 and loader.step == len(loader)
    assert loader.skipped.skipped_batches == 1 and loader.skipped.skipped_captions == 4
    assert loader.skipped.corrupt_images == 4 * K
    assert "batch 0: no caption has 2 readable images; batch skipped" in caplog.text


def test_garbage_metadata_skips_what_it_describes(tmp_path, caplog):
    """A garbage KEY.json: its caption's images cannot be checked, so it is left out (named);
    a garbage done marker: the shard is skipped (named); a garbage .idx line: the shard is indexed
    from its tar (named); a garbage dataset.json: one error naming it."""
    folder = write_shards(tmp_path / "data", 12, shard_size=4)
    index = open_index(folder)
    record = index.captions[1].meta
    _overwrite(record, b"{" * record.size)
    (folder / "shard-000001.done.json").write_text("{garbage")
    idx = folder / "shard-000002.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([*lines[:2], "jpg 12 x", *lines[3:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        index = open_index(folder)
        loader = _loader(folder, "torch", 8, 2)
        batches = list(loader)
    assert index.skipped_shards == [str(folder / "shard-000001.tar")]
    assert "shard-000001.done.json is damaged" in caplog.text
    assert f"damaged index {idx}: " in caplog.text and "indexed from the tar's headers instead" in caplog.text
    assert [c.caption_id for c in index.captions] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert len(batches) == 1 and loader.skipped.skipped_captions == 1 and loader.skipped.corrupt_images == K
    assert f"its sample record {record.name} is damaged" in caplog.text
    (folder / "dataset.json").write_text('{"images_per_caption": ')
    with pytest.raises(DataError, match=f"{folder / 'dataset.json'} is damaged"):
        open_index(folder)


def test_a_shard_of_another_configuration_is_skipped(tmp_path, caplog):
    """A shard whose done marker records other settings than its folder's dataset.json."""
    folder = write_shards(tmp_path / "data", 8, shard_size=4)
    marker = folder / "shard-000001.done.json"
    record = json.loads(marker.read_text())
    record["dataset"]["seed"] = 7
    marker.write_text(json.dumps(record))
    with caplog.at_level(logging.ERROR, logger="stablerep_fast.data"):
        index = open_index(folder)
    assert index.skipped_shards == [str(folder / "shard-000001.tar")] and len(index) == 4
    assert "made with another configuration than its folder's dataset.json (seed)" in caplog.text


TRIALS = 300  # per backend; about 0.05 s each on a 2-core CPU


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_random_damage_never_crashes_and_never_gets_through(tmp_path, backend):
    folder = write_shards(tmp_path / "data", 8, shard_size=8)
    tar = folder / "shard-000000.tar"
    pristine = tar.read_bytes()
    intact = _intact_views(folder, backend)
    members = [entry for entry in fmt.read_index(folder / "shard-000000.idx")]
    rng = np.random.default_rng(0)
    logging.disable(logging.WARNING)
    damaged_returns = skipped = 0
    try:
        for trial in range(TRIALS):
            data = bytearray(pristine)
            for i in rng.choice(len(members), size=int(rng.integers(1, 4)), replace=False):
                _, offset, size, _ = members[i]
                for at in rng.integers(offset, offset + size, int(rng.integers(1, 9))):
                    data[at] = int(rng.integers(256))
            tar.write_bytes(bytes(data))
            loader = _loader(folder, backend, 4, 2, seed=trial)
            batches = list(loader)
            assert len(batches) + loader.skipped.skipped_batches == len(loader), f"trial {trial}"
            for images, labels in batches:
                damaged_returns += sum(d not in intact[label] for d, label in zip(_digests(images), labels.tolist()))
            skipped += loader.skipped.corrupt_images
    finally:
        logging.disable(logging.NOTSET)
    assert damaged_returns == 0, f"{damaged_returns} damaged images reached a batch"
    assert skipped > TRIALS // 4  # the damage did hit images the sampler chose


@pytest.mark.skipif("dali" not in available_backends(), reason="no DALI")
def test_dali_skips_a_batch_it_fails_on_when_no_image_is_to_blame(legacy, tmp_path, monkeypatch, caplog):
    """When PIL decodes every image of the batch DALI refused (decoders can disagree), the batch
    is skipped and counted, and the epoch goes on."""
    import shutil

    from stablerep_fast.data import dali_loader

    folder = shutil.copytree(legacy, tmp_path / "data")
    member = open_index(folder).captions[3].images[1]
    _break_huffman_table(member)
    monkeypatch.setattr(dali_loader, "cpu_decode", lambda data: object())  # PIL "accepts" everything
    loader = _loader(folder, "dali", 4, K)
    with caplog.at_level(logging.ERROR, logger="stablerep_fast.data"):
        batches = list(loader)
    assert len(batches) == 1 and loader.skipped.skipped_batches == 1 and loader.step == 2
    assert 3 not in batches[0][1].tolist()
    assert "but every image of it decodes on the CPU; batch skipped" in caplog.text
