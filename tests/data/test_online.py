"""Online generation (data/online.py) on CPU: the loader's contract, its pixels against the
generator called directly, determinism across worker modes, resume, ranks, fresh samples per
epoch, user generators and a tiny random-weight Stable Diffusion."""

import threading

import numpy as np
import pytest
import torch
from helpers import check_epoch
from plugin_generator import Blobs

from stablerep_fast.data import build_loader
from stablerep_fast.data.augment import MEAN, STD
from stablerep_fast.data.ahead import run_ahead as generate_ahead
from stablerep_fast.data.online import OnlineConfig, epoch_seed
from stablerep_fast.generate import GenerateError, initial_noise, shapes
from stablerep_fast.generate.models.shapes import ShapesPipeline

N, M, S, POOL = 4, 3, 32, 24  # captions per batch, views, image side, captions in the pool


def _loader(source="shapes", *, workers=0, online=None, **kwargs):
    options = dict(image_size=S, device="cpu", num_workers=workers, augment="none")
    return build_loader(None, N, M, source=source, online={"num_captions": POOL, "resolution": S, **(online or {})},
                        **{**options, **kwargs})  # fmt: skip


def _expected(generator, texts, labels, epoch, *, seed=0, views="independent", latent_std=0.5, **options):
    """The batch written out: the generator called directly on each caption's noise, view-major, normalised."""
    ids = labels[:N].tolist()
    noise = initial_noise(epoch_seed(seed, epoch), ids, M, generator.latent_shape(S), views=views, latent_std=latent_std)
    images = generator([texts[i] for i in ids], noise, resolution=S, output_size=S, **options).images  # [n, m, S, S, 3]
    pixels = torch.from_numpy(images.swapaxes(0, 1).reshape(-1, S, S, 3)).permute(0, 3, 1, 2).float()
    return (pixels / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@pytest.mark.parametrize("views", ["independent", "latent-neighbors"])
def test_batches_are_the_generators_images_of_the_pool_captions(views):
    loader = _loader(online={"views": views, "latent_std": 0.3})
    texts = shapes.make_captions(POOL, 0)
    assert len(loader) == POOL // N and loader.caption_texts([0, 5]) == [texts[0], texts[5]]
    batches = check_epoch(loader, N, M, S)
    for images, labels in batches:
        want = _expected(ShapesPipeline(), texts, labels, epoch=0, views=views, latent_std=0.3)
        torch.testing.assert_close(images, want, rtol=0, atol=1e-5)
        views_of = images.view(M, N, -1)
        assert all(not torch.equal(views_of[0, c], views_of[1, c]) for c in range(N)), "views must differ"
    assert sorted(torch.cat([labels[:N] for _, labels in batches]).tolist()) == list(range(POOL))


def test_every_epoch_draws_new_samples_and_resume_sees_the_same_ones():
    whole = _loader(augment="stablerep", seed=3)
    first_epochs = list(whole) + list(whole)
    resumed = _loader(augment="stablerep", seed=3)
    resumed.load_state_dict({"step": len(resumed) + 2})
    for (images, labels), (want_images, want_labels) in zip(list(resumed), first_epochs[len(whole) + 2 :], strict=True):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)
    # the same caption in epochs 0 and 1: new noise, so new images (here without augmentation)
    plain = _loader()
    epoch0, epoch1 = list(plain), list(plain)
    by_caption = [{int(c): images.view(M, N, -1)[:, i] for _, (images, labels) in enumerate(epoch) for i, c in
                   enumerate(labels[:N])} for epoch in (epoch0, epoch1)]  # fmt: skip
    assert by_caption[0].keys() == by_caption[1].keys()
    assert not any(torch.equal(by_caption[0][c], by_caption[1][c]) for c in by_caption[0])


def test_worker_processes_and_the_background_thread_give_the_same_batches():
    thread = list(_loader(augment="stablerep", seed=1, workers=0))
    processes = list(_loader(augment="stablerep", seed=1, workers=2))
    for (a, la), (b, lb) in zip(thread, processes, strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)
    other_seed = next(iter(_loader(augment="stablerep", seed=2)))
    assert not torch.equal(other_seed[1], thread[0][1])


def test_the_trainers_rng_is_left_alone():
    """The background thread's augmentations run under their own seed and restore the caller's RNG."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(iter(_loader(augment="stablerep")))
    assert torch.equal(torch.rand(3), expected)


def test_ranks_get_disjoint_captions():
    seen = [{int(c) for _, labels in _loader(rank=r, world_size=2) for c in labels} for r in (0, 1)]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == POOL // 2


def test_a_user_generator_with_a_captions_file(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"caption {i}" for i in range(8)) + "\n")
    loader = _loader(Blobs(), online={"captions": str(captions)}, augment="none")
    images, labels = next(iter(loader))
    texts = [f"caption {i}" for i in range(8)]
    torch.testing.assert_close(images, _expected(Blobs(), texts, labels, epoch=0), rtol=0, atol=1e-5)
    assert loader.caption_texts(labels[:2].tolist()) == [texts[i] for i in labels[:2].tolist()]
    with pytest.raises(ValueError, match="no caption source of its own"):
        _loader(Blobs())


def test_bad_online_settings_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown online field"):
        OnlineConfig.parse({"view": "independent"})
    with pytest.raises(ValueError, match="views must be one of"):
        _loader(online={"views": "neighbours"})
    with pytest.raises(ValueError, match="cannot fill one batch"):
        _loader(online={"num_captions": N + 1}, world_size=2)
    with pytest.raises(ValueError, match="either shards or source"):
        build_loader(tmp_path, N, M, source="shapes")


class _Raises(Blobs):
    """A user's generator with a bug: its own captions, and a KeyError on every call."""

    model_id = "raises-v1"

    def make_captions(self, n, seed):
        return [f"caption {i}" for i in range(n)]

    def __call__(self, prompts, latents, **options):
        return {}["colour"]


class _NoCaptions(_Raises):
    def make_captions(self, n, seed):
        raise RuntimeError("caption source offline")


class _NegativeShape(_Raises):
    def latent_shape(self, resolution):
        return (-1, 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_generator_that_raises_is_named_in_one_line(workers):
    """In this process or in worker processes: the error names the generator and its class, in
    one line (not torch's worker traceback)."""
    with pytest.raises(GenerateError) as raised:
        next(iter(_loader(_Raises(), workers=workers)))
    message = str(raised.value)
    assert "\n" not in message, message
    assert message.startswith(f"generator raises-v1 ({__name__}:_Raises) failed on {N} captions from 'caption ")
    assert message.endswith("(KeyError: 'colour'); fix the generator")


def test_a_generator_whose_captions_or_latent_shape_break_is_named():
    with pytest.raises(GenerateError, match=rf"generator raises-v1 \({__name__}:_NoCaptions\): make_captions\({POOL}, 0\) "
                                            r"raised RuntimeError: caption source offline; fix the generator"):  # fmt: skip
        _loader(_NoCaptions())
    with pytest.raises(GenerateError, match=rf"\({__name__}:_NegativeShape\): latent_shape\({S}\) returned \(-1, 0\); "
                                            "every dimension must be >= 1"):  # fmt: skip
        _loader(_NegativeShape())


def test_generate_ahead_keeps_order_raises_the_makers_error_and_stops_its_thread():
    squares = list(generate_ahead(iter(range(6)), lambda x: (x * x,), 2, torch.device("cpu")))
    assert squares == [(x, x * x) for x in range(6)]

    def fails_at_3(x):
        if x == 3:
            raise RuntimeError("generator broke")
        return (x,)

    got = []
    with pytest.raises(RuntimeError, match="generator broke"):
        for item in generate_ahead(iter(range(6)), fails_at_3, 2, torch.device("cpu")):
            got.append(item)
    assert got == [(0, 0), (1, 1), (2, 2)]
    before = threading.active_count()
    stream = generate_ahead(iter(range(1000)), lambda x: (x,), 2, torch.device("cpu"))
    assert next(stream) == (0, 0)
    stream.close()  # the consumer stops early: the thread ends
    assert threading.active_count() == before


def test_a_tiny_stable_diffusion_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    from stablerep_fast.generate import load_generator
    from stablerep_fast.testing import random_sd_components

    StableDiffusionPipeline(**random_sd_components("tiny", tmp_path), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd")  # fmt: skip
    captions = tmp_path / "captions.txt"
    texts = shapes.make_captions(8, 0)
    captions.write_text("\n".join(texts) + "\n")
    online = {"captions": str(captions), "steps": 2, "guidance": 2.0, "batch_size": 3}
    loader = _loader(str(tmp_path / "sd"), online=online, augment="none")
    images, labels = next(iter(loader))
    assert images.shape == (N * M, 3, S, S) and torch.equal(labels, labels[:N].repeat(M))
    sd = load_generator(tmp_path / "sd", device=torch.device("cpu"), dtype=torch.float32)
    want = _expected(sd, texts, labels, epoch=0, num_inference_steps=2, guidance_scale=2.0)
    # the loader generates 3 captions per call, the reference N: batch size only changes round-off
    torch.testing.assert_close(images, want, rtol=0, atol=2 / 255 / min(STD))
    assert np.isfinite(images.numpy()).all()


@pytest.mark.gpu
def test_generation_on_its_own_cuda_stream_gives_the_cpu_batches():
    cpu = list(_loader(augment="stablerep", seed=4))
    gpu = list(_loader(augment="stablerep", seed=4, device="cuda", online={"device": "cuda"}))
    for (a, la), (b, lb) in zip(cpu, gpu, strict=True):
        assert torch.equal(la, lb.cpu())
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=1e-5)
