"""The memory backend: the other backends' groups, damaged images left out once, images from arrays."""

import logging

import numpy as np
import pytest
import torch
from conftest import K, SIZE, write_shards

pytest.importorskip("kornia", reason="the memory loader augments with kornia: pip install 'stablerep_fast[data]'")

from stablerep_fast.data import build_loader, open_index  # noqa: E402
from stablerep_fast.data.augment import MEAN, STD, Augment  # noqa: E402
from stablerep_fast.data.memory import MemoryLoader  # noqa: E402

N, M = 4, 3
NONE = Augment(random=False)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images -> uint8-valued floats, to compare with decoded images."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images * std + mean) * 255


def test_same_groups_and_pixels_as_the_torch_backend(shards):
    """At the saved size without augmentation both backends return the same images, exactly."""
    options = dict(image_size=SIZE, device="cpu", num_workers=0, augment="none", seed=5)
    memory = build_loader(shards, N, M, backend="memory", **options)
    streaming = build_loader(shards, N, M, backend="torch", **options)
    assert isinstance(memory, MemoryLoader) and len(memory) == len(streaming)
    for (a, la), (b, lb) in zip(memory, streaming, strict=True):
        assert torch.equal(la, lb)
        torch.testing.assert_close(_pixels(a), _pixels(b), atol=1e-3, rtol=0)


def test_auto_takes_memory_on_cpu_when_it_fits(shards, monkeypatch):
    from stablerep_fast.data import memory

    assert isinstance(build_loader(shards, N, M, image_size=32, device="cpu"), MemoryLoader)
    monkeypatch.setattr(memory, "MEMORY_BUDGET", 1000)
    monkeypatch.setattr(memory.fits_in_memory, "__defaults__", (1000,))
    assert not isinstance(build_loader(shards, N, M, image_size=32, device="cpu", num_workers=0), MemoryLoader)


def test_batches_depend_on_seed_and_step_only(shards):
    """Resuming from a saved position gives the same augmented batches; the training RNG is untouched."""
    loader = build_loader(shards, N, M, image_size=32, backend="memory", device="cpu", seed=1)
    torch.manual_seed(0)
    before = torch.rand(3)
    first = list(loader)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), before)  # fork_rng: augmentation does not consume the caller's stream
    again = build_loader(shards, N, M, image_size=32, backend="memory", device="cpu", seed=1)
    again.load_state_dict({"step": 2})
    for (a, la), (b, lb) in zip(first[2:], again, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    views = first[0][0].view(M, N, -1)
    assert not torch.equal(views[0, 0], views[1, 0])  # m different images (and augmentations) per caption


def test_a_damaged_image_is_named_counted_once_and_never_returned(tmp_path, caplog):
    folder = write_shards(tmp_path / "damaged", 8)
    from stablerep_fast.data.torch_loader import decode

    intact = open_index(folder)
    good = {c.caption_id: [decode(m.read()).float() for m in c.images] for c in intact.captions}
    member = intact.captions[3].images[1]
    bad = good[3].pop(1)
    with open(member.path, "r+b") as f:  # garbage of the same size: the tar stays valid
        f.seek(member.offset)
        f.write(bytes(member.size))
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        loader = build_loader(folder, 2, K - 1, image_size=SIZE, backend="memory", device="cpu", augment="none")
    assert f"corrupt image {member.name} in {member.path}" in caplog.text
    assert loader.counts.tolist() == [K, K, K, K - 1, K, K, K, K]
    for _ in range(3):  # epochs: caption 3 is drawn with its K - 1 intact images only
        for images, labels in loader:
            for image, label in zip(_pixels(images), labels.tolist()):
                assert any(torch.allclose(image, g, atol=1e-3) for g in good[label])
                assert label != 3 or not torch.allclose(image, bad, atol=1e-3)
    assert loader.skipped.corrupt_images == 1  # counted when decoded, not again per epoch
    with caplog.at_level(logging.WARNING, logger="stablerep_fast.data"):
        full = build_loader(folder, 2, K, image_size=SIZE, backend="memory", device="cpu")
    assert len(full.sampler.eligible) == 7 and "1 captions have fewer than 4 images" in caplog.text


def test_from_arrays_one_image_per_caption_gives_augmented_views_of_it():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    flip = Augment(crop_scale=(1, 1), crop_ratio=(1, 1), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=1.0)
    loader = MemoryLoader.from_arrays(images, 4, 2, texts=[f"scan {i}" for i in range(12)], image_size=16,
                                      augment=flip, device=torch.device("cpu"))  # fmt: skip
    assert len(loader) == 3
    for batch, labels in loader:
        assert torch.equal(labels[:4], labels[4:])
        expected = torch.from_numpy(images[labels.numpy()]).permute(0, 3, 1, 2).flip(-1).float()
        torch.testing.assert_close(_pixels(batch), expected, atol=1e-3, rtol=0)
    assert loader.caption_texts([3, 0]) == ["scan 3", "scan 0"]
    with pytest.raises(ValueError, match="uint8"):
        MemoryLoader.from_arrays(images.astype(np.float32), 4, 2, image_size=16, augment=flip, device=torch.device("cpu"))
