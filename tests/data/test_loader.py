"""build_loader, both backends on CPU: batch layout, groups, epochs, resume, augmentations, damage."""

import logging

import pytest
import torch
from conftest import CAPTIONS, K, write_shards
from helpers import check_epoch

from stablerep_fast.data import available_backends, build_loader, open_index
from stablerep_fast.data.augment import MEAN, STD

STREAMING = ["torch", pytest.param("dali", marks=pytest.mark.skipif("dali" not in available_backends(), reason="no DALI"))]
BACKENDS = [*STREAMING, "memory"]  # the memory backend's damage handling: test_memory.py
N, M, S = 4, 3, 32  # captions per batch, views, crop side


def _loader(shards, backend, **kwargs):
    options = dict(image_size=S, backend=backend, device="cpu", num_workers=0 if backend == "torch" else 1)
    return build_loader(shards, N, M, **{**options, **kwargs})


def _same_images(images):
    """[n*m, ...] view-major -> for each caption, whether any two of its m views are identical."""
    views = images.view(M, N, -1)
    return [any(torch.equal(views[a, c], views[b, c]) for a in range(M) for b in range(a + 1, M)) for c in range(N)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_layout_and_epoch_coverage(shards, backend):
    loader = _loader(shards, backend, augment="none")
    assert len(loader) == CAPTIONS // N
    batches = check_epoch(loader, N, M, S)
    for images, _ in batches:
        assert not any(_same_images(images)), "the m views of a caption must be distinct images"
    seen = torch.cat([labels[:N] for _, labels in batches]).tolist()
    assert sorted(seen) == list(range(CAPTIONS))
    epoch1 = torch.cat([labels[:N] for _, labels in loader]).tolist()
    assert sorted(epoch1) == sorted(seen) and epoch1 != seen


def test_backends_form_the_same_groups(shards):
    if "dali" not in available_backends():
        pytest.skip("no DALI")
    torch_batches = list(_loader(shards, "torch", augment="none", seed=5))
    dali_batches = list(_loader(shards, "dali", augment="none", seed=5))
    for (t_images, t_labels), (d_images, d_labels) in zip(torch_batches, dali_batches, strict=True):
        assert torch.equal(t_labels, d_labels)
        # same members, so the same pictures up to the two decoders' and resizers' rounding
        assert (t_images - d_images).abs().mean() < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_get_disjoint_captions(shards, backend):
    seen = [{int(c) for _, labels in _loader(shards, backend, rank=r, world_size=2) for c in labels} for r in (0, 1)]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == CAPTIONS // 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_from_state_dict(shards, backend):
    first = _loader(shards, backend, augment="none", seed=2)
    expected = list(first)[3:]
    resumed = _loader(shards, backend, augment="none", seed=2)
    resumed.load_state_dict({"step": 3})
    got = list(resumed)
    assert resumed.state_dict() == {"step": len(first)}
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stablerep_augmentations_are_sane(shards, backend):
    loader = _loader(shards, backend, image_size=48)
    images = torch.cat([images for images, _ in loader])
    # The fixture's flat colours and squares, jittered and normalised: roughly centred, unit scale.
    assert -1.0 < images.mean() < 1.0 and 0.5 < images.std() < 2.0
    assert images.min() >= -2.2 and images.max() <= 2.7  # (0 - mean) / std ... (1 - mean) / std
    again, _ = next(iter(_loader(shards, backend, image_size=48)))
    assert torch.equal(again, images[: N * M]), "same seed, same augmentations"
    # Crops, colours and flips differ between the views of a caption and between epochs.
    assert not any(_same_images(images[: N * M]))
    rgb = images * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    grey = (rgb.std(dim=1) < 0.02).flatten(1).all(dim=1).float().mean()
    assert 0.0 < grey < 0.5  # grayscale p = 0.2 over 72 images


def test_torch_workers_give_the_same_batches(shards):
    assert all(
        torch.equal(a, b) and torch.equal(la, lb)
        for (a, la), (b, lb) in zip(_loader(shards, "torch"), _loader(shards, "torch", num_workers=2), strict=True)
    )


@pytest.mark.parametrize("backend", STREAMING)
def test_corrupt_image_is_replaced_and_counted(tmp_path, backend, caplog):
    folder = write_shards(tmp_path / "corrupt", 8)
    member = open_index(folder).captions[3].images[1]
    with open(member.path, "r+b") as f:  # garbage of the same size: the tar stays valid
        f.seek(member.offset)
        f.write(bytes(member.size))
    loader = build_loader(folder, 8, K, image_size=S, backend=backend, device="cpu", num_workers=0, augment="none")
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        ((images, labels),) = list(loader)
    # caption 3 has K - 1 good images, fewer than m = K: left out, its image counted as corrupt
    assert sorted(labels[:7].tolist()) == [0, 1, 2, 4, 5, 6, 7] and images.shape[0] == 7 * K
    assert (loader.skipped.corrupt_images, loader.skipped.skipped_captions) == (1, 1)
    assert f"corrupt image {member.name} in {member.path}" in caplog.text
    with_m_below_k = build_loader(folder, 8, K - 1, image_size=S, backend=backend, device="cpu", num_workers=0)
    ((images, labels),) = list(with_m_below_k)
    assert images.shape[0] == 8 * (K - 1) and with_m_below_k.skipped.corrupt_images <= 1
    assert with_m_below_k.skipped.skipped_captions == 0


def test_caption_texts_are_the_captions_file_lines(shards):
    """What the trainer's text tower reads: the caption of each id, as written in the captions file."""
    lines = (shards.parent / f"captions-{CAPTIONS}.txt").read_text().splitlines()
    loader = _loader(shards, "torch")
    _, labels = next(iter(loader))
    ids = labels[:N].tolist()
    assert loader.caption_texts(ids) == [lines[i] for i in ids]
    assert loader.caption_texts([CAPTIONS - 1, 0]) == [lines[-1], lines[0]]
needs_dali = pytest.mark.skipif("dali" not in available_backends(), reason="no DALI")


@needs_dali
def test_dali_builds_one_pipeline_for_every_pass(shards, monkeypatch):
    from stablerep_fast.data import dali_loader

    builds = []
    build = dali_loader._pipeline
    monkeypatch.setattr(dali_loader, "_pipeline", lambda *a, **k: builds.append(1) or build(*a, **k))
    reference = _loader(shards, "torch", augment="none", seed=4)
    want = [labels for _ in range(3) for _, labels in reference]
    loader = _loader(shards, "dali", augment="none", seed=4)
    got = [labels for _ in range(2) for _, labels in loader]
    first = iter(loader)
    got.append(next(first)[1])
    first.close()  # a pass stopped early: the batches DALI already holds must not leak into the next
    got += [labels for _, labels in loader]
    assert len(builds) == 1
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


@needs_dali
def test_dali_reads_files_ahead_on_another_thread(shards, monkeypatch):
    import threading

    from stablerep_fast.data import dali_loader

    readers, enough = set(), threading.Event()
    read = dali_loader.read_batch

    def counting_read(*args):
        readers.add(threading.get_ident())
        if counting_read.calls >= dali_loader.DaliLoader.prefetch + 2:
            enough.set()
        counting_read.calls += 1
        return read(*args)

    counting_read.calls = 0
    monkeypatch.setattr(dali_loader, "read_batch", counting_read)
    loader = _loader(shards, "dali", augment="none")
    batches = iter(loader)
    next(batches)
    # While the consumer holds batch 1 (training on it), files of later batches are read: more
    # than DALI's own prefetch, and not on the consumer's thread.
    assert enough.wait(timeout=30), f"only {counting_read.calls} batches read ahead"
    assert threading.get_ident() not in readers
    batches.close()
