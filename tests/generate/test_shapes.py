import numpy as np
import pytest
import torch

from stablerep_fast.generate import initial_noise, shapes


def test_captions_are_seeded_distinct_and_parse_back():
    captions = shapes.make_captions(200, seed=3)
    assert captions == shapes.make_captions(200, seed=3)
    assert captions != shapes.make_captions(200, seed=4)
    assert len(set(captions)) == 200
    for caption in captions:
        assert shapes.parse_caption(caption).caption == caption


def test_free_text_gets_stable_attributes():
    attrs = shapes.parse_caption("A dog, a blue ball")
    assert attrs.colour == "blue"
    assert attrs == shapes.parse_caption("A dog, a blue ball")
    assert attrs.shape in shapes.SHAPES and attrs.background in shapes.BACKGROUNDS


def test_render_is_deterministic_and_views_differ():
    caption = "a large red striped star on a navy background"
    z = np.random.default_rng(0).standard_normal((2, shapes.LATENT_DIM))
    a = shapes.render(caption, z[0], 48)
    assert a.shape == (3, 48, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, shapes.render(caption, z[0], 48))
    assert np.abs(a - shapes.render(caption, z[1], 48)).mean() > 0.02
    other = "a large red striped star on a white background"
    assert np.abs(a - shapes.render(other, z[0], 48)).mean() > 0.1


def test_pipeline_renders_each_image_from_its_latent():
    pipe = shapes.ShapesPipeline()
    captions = shapes.make_captions(2)
    noise = initial_noise(0, [0, 1], 3, pipe.latent_shape(64))
    images = pipe(captions, noise, resolution=64, output_size=32).images
    assert images.shape == (2, 3, 32, 32, 3) and images.dtype == np.uint8
    direct = shapes.render(captions[1], noise[1, 2].numpy(), 64)
    resized = torch.nn.functional.interpolate(torch.from_numpy(direct)[None], size=(32, 32), mode="bicubic", antialias=True)
    expected = (resized.clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(images[1, 2], expected.astype(np.uint8))


def test_probe_set_is_labelled_balanced_and_held_out():
    probe = shapes.make_probe_set(3, label="shape", seed=0, resolution=32)
    assert probe.images.shape == (3 * len(shapes.SHAPES), 32, 32, 3) and probe.images.dtype == np.uint8
    assert probe.class_names == shapes.SHAPES
    assert np.bincount(probe.labels).tolist() == [3] * len(shapes.SHAPES)
    for caption, label in zip(probe.captions, probe.labels):
        assert shapes.parse_caption(caption).shape == probe.class_names[label]
    np.testing.assert_array_equal(probe.images, shapes.make_probe_set(3, seed=0, resolution=32).images)
    assert not np.array_equal(probe.images, shapes.make_probe_set(3, seed=1, resolution=32).images)
    colours = shapes.make_probe_set(1, label="colour", resolution=16, size=8)
    assert colours.images.shape == (len(shapes.COLOURS), 8, 8, 3)
    with pytest.raises(ValueError, match="label must be one of"):
        shapes.make_probe_set(1, label="mood")
