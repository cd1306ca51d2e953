import numpy as np
import pytest
import torch

from stablerep_fast.generate import initial_noise, shapes


def test_subset_captions_name_the_shape_and_some_attributes():
    captions = shapes.make_captions(400, seed=3)
    assert captions == shapes.make_captions(400, seed=3)
    assert captions != shapes.make_captions(400, seed=4)
    assert len(set(captions)) == 400
    named = [shapes.parse_caption(c) for c in captions]
    assert all("shape" in n for n in named)
    assert all(shapes.describe(n) == c for n, c in zip(named, captions))
    for name in ("size", "colour", "texture", "background"):
        share = np.mean([name in n for n in named])
        assert abs(share - shapes.NAME_PROBABILITY) < 0.1, (name, share)  # binomial sd 0.025


def test_all_mode_names_every_attribute():
    captions = shapes.make_captions(50, seed=1, mode="all")
    assert len(set(captions)) == 50
    for caption in captions:
        assert set(shapes.parse_caption(caption)) == set(shapes.VOCABULARY)
    with pytest.raises(ValueError, match="mode must be one of"):
        shapes.make_captions(1, mode="some")


def test_parse_free_text():
    assert shapes.parse_caption("A dog, a blue ball on a navy background") == {"colour": "blue", "background": "navy"}
    assert shapes.parse_caption("a white star on a black background") == {"colour": "white", "shape": "star", "background": "black"}
    assert shapes.describe({}) == "a shape" and shapes.describe({"colour": "orange", "shape": "ring"}) == "an orange ring"


def test_unnamed_attributes_are_drawn_per_image_named_ones_kept():
    latents = np.random.default_rng(0).standard_normal((200, shapes.LATENT_DIM))
    named = {"colour": "red", "shape": "star"}
    drawn = [shapes.draw_attributes(named, z) for z in latents]
    assert all(a.colour == "red" and a.shape == "star" for a in drawn)
    for name in ("size", "texture", "background"):  # every value turns up, about equally often
        counts = np.unique([getattr(a, name) for a in drawn], return_counts=True)[1]
        assert len(counts) == len(shapes.VOCABULARY[name]) and counts.min() > 200 / len(counts) / 3, (name, counts)
    assert shapes.draw_attributes(named, latents[0]) == drawn[0]  # a function of the latent


def test_render_is_deterministic_and_views_differ():
    caption = "a large red striped star on a navy background"
    z = np.random.default_rng(0).standard_normal((2, shapes.LATENT_DIM))
    a = shapes.render(caption, z[0], 48)
    assert a.shape == (3, 48, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, shapes.render(caption, z[0], 48))
    assert np.abs(a - shapes.render(caption, z[1], 48)).mean() > 0.02
    other = "a large red striped star on a white background"
    assert np.abs(a - shapes.render(other, z[0], 48)).mean() > 0.1
    # A caption that does not name the background: the images' backgrounds follow their latents.
    z_bg = z[0].copy()
    z_bg[-1] = -z_bg[-1]  # the mirrored bucket of the background's coordinate: another background
    short = "a large red striped star"
    colour = lambda image: image[:, 0, 0]  # noqa: E731  (a corner: background)
    attrs = [shapes.draw_attributes(shapes.parse_caption(short), latent) for latent in (z[0], z_bg)]
    assert attrs[0].background != attrs[1].background
    assert np.abs(colour(shapes.render(short, z[0], 48)) - colour(shapes.render(short, z_bg, 48))).max() > 0.1


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
