import math

import numpy as np
import pytest
import torch

from stablerep_fast.generate import initial_noise
from stablerep_fast.generate.models import digits

STYLE_FIELD = {"size": "height", "pen": "width", "slant": "shear", "hand": "wobble"}  # the parameter each style sets


def latents(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, digits.LATENT_DIM))


def test_subset_captions_name_the_digit_and_some_style():
    captions = digits.make_captions(600, seed=3)
    assert captions == digits.make_captions(600, seed=3) and captions != digits.make_captions(600, seed=4)
    assert len(set(captions)) == 600  # distinct while there are enough (1080)
    named = [digits.parse_caption(c) for c in captions]
    assert all("digit" in n for n in named)
    assert all(digits.describe(n) == c for n, c in zip(named, captions))
    # More captions than the catalogue holds: drawn with repeats, at exactly the stated chances.
    named = [digits.parse_caption(c) for c in digits.make_captions(5000, seed=3)]
    for name in digits.STYLES:
        share = np.mean([name in n for n in named])
        assert abs(share - digits.NAME_PROBABILITY) < 0.03, (name, share)  # binomial sd 0.007
    assert np.bincount([digits.DIGITS.index(n["digit"]) for n in named]).min() > 5000 / 10 * 0.85


def test_all_mode_names_every_attribute():
    captions = digits.make_captions(240, seed=1, mode="all")
    assert len(set(captions)) == 240  # the whole catalogue: 10 digits x 2 x 2 x 3 x 2
    assert all(set(digits.parse_caption(c)) == set(digits.VOCABULARY) for c in captions)
    with pytest.raises(ValueError, match="mode must be one of"):
        digits.make_captions(1, mode="some")


def test_parse_free_text():
    assert digits.parse_caption("The digit 7, written with a THICK pen, leaning right.") == {
        "digit": "seven", "pen": "thick", "slant": "right"}  # fmt: skip
    assert digits.parse_caption("a small messy two") == {"digit": "two", "size": "small", "hand": "messy"}
    assert digits.describe({}) == "a digit"
    assert digits.describe({"digit": "nine", "slant": "upright", "size": "large"}) == "the digit nine, written large, upright"


def test_named_attributes_hold_unnamed_ones_vary_across_images():
    named = {"digit": "seven", "pen": "thick", "slant": "right"}
    drawn = [digits.draw_parameters(named, z, fidelity=3.0) for z in latents(300)]
    assert all(d.digit == "seven" and d.pen == "thick" and d.slant == "right" for d in drawn)
    for name in ("pen", "slant"):  # named: the parameter stays inside the named value's range
        low, high = digits.STYLES[name][named[name]][1]
        values = [getattr(d, STYLE_FIELD[name]) for d in drawn]
        assert low <= min(values) and max(values) <= high, (name, min(values), max(values))
    for name in ("size", "hand"):  # unnamed: every value, about equally often, and its parameter follows
        counts = {value: sum(getattr(d, name) == value for d in drawn) for value in digits.STYLES[name]}
        assert min(counts.values()) > 300 / len(counts) / 2, (name, counts)
        for d in drawn:
            low, high = digits.STYLES[name][getattr(d, name)][1]
            assert low <= getattr(d, STYLE_FIELD[name]) <= high
    assert {d.form for d in drawn} == set(range(len(digits.GLYPHS["seven"])))  # crossbar or not, hook
    for field in ("aspect", "rotation", "dx", "dy", "softness"):
        values = np.array([getattr(d, field) for d in drawn])
        low, high = digits.NUISANCES[field]
        assert values.std() > (high - low) / 8, field  # uniform on a range of width w at fidelity 3: sd w/(2 sqrt 12)
    assert digits.draw_parameters(named, latents(1)[0], 3.0) == drawn[0]  # a function of the latent


def test_fidelity_trades_variety_for_agreement_with_the_caption():
    z = latents(2000, seed=1)
    named = {"digit": "four", "pen": "thin"}

    def contradictions(fidelity: float) -> float:
        return np.mean([digits.draw_parameters(named, x, fidelity).digit != "four" for x in z])

    for fidelity in (0.0, 0.5, 1.0):
        other = digits.CONTRADICTION**fidelity
        expected = 9 * other / (1 + 9 * other)  # 0.9 (caption ignored), 0.22, 0.009
        assert abs(contradictions(fidelity) - expected) < 4 * math.sqrt(expected * (1 - expected) / len(z)) + 2e-3, fidelity
    assert contradictions(2.0) == 0.0
    # Nuisances spread about their centres 2 / (1 + fidelity) times as wide: half as wide at 3 as at 1.
    for x in z[:20]:
        loose, tight = digits.draw_parameters(named, x, 1.0), digits.draw_parameters(named, x, 3.0)
        assert tight.rotation == pytest.approx(loose.rotation / 2) and tight.dx == pytest.approx(loose.dx / 2)
    with pytest.raises(ValueError, match="fidelity must be >= 0"):
        digits.draw_parameters(named, z[0], -1.0)


def naive_coverage(segments, half_width, softness, resolution):
    """Pixel-by-pixel coverage in float64: distance to the nearest segment, a linear edge ramp."""
    out = np.zeros((resolution, resolution))
    for row in range(resolution):
        for col in range(resolution):
            p = np.array([col + 0.5, row + 0.5])
            nearest = math.inf
            for a, b in segments.astype(np.float64):
                t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0.0, 1.0)
                nearest = min(nearest, np.linalg.norm(p - (a + t * (b - a))))
            out[row, col] = np.clip((half_width - nearest) / softness + 0.5, 0.0, 1.0)
    return out


def test_rasteriser_matches_a_pixel_by_pixel_reference():
    rng = np.random.default_rng(0)
    segments = rng.uniform(-2, 14, size=(3, 5, 2, 2)).astype(np.float32)
    segments[1, 2, 1] = segments[1, 2, 0]  # a degenerate segment: a dot
    half_width, softness = np.array([0.8, 1.5, 2.5], np.float32), np.array([1.0, 1.0, 3.0], np.float32)
    coverage = digits._rasterise(segments, half_width, softness, 12)
    for i in range(3):
        expected = naive_coverage(segments[i], half_width[i], softness[i], 12)
        np.testing.assert_allclose(coverage[i], expected, atol=1e-5, err_msg=f"image {i}")


def test_render_is_deterministic_batch_independent_and_views_differ():
    captions = ["the digit three, thick pen", "the digit eight", "the digit one, leaning left, messy hand"]
    z = latents(3)
    batch = digits.render_batch(captions, z, 32)
    assert batch.shape == (3, 32, 32) and batch.dtype == np.float32
    for i in range(3):  # the same pixels alone as in a batch
        np.testing.assert_array_equal(digits.render(captions[i], z[i], 32), np.repeat(batch[i : i + 1], 3, axis=0))
    np.testing.assert_array_equal(batch, digits.render_batch(captions, z, 32))
    other_k = digits.render_batch(captions, latents(3, seed=1), 32)
    assert all(np.abs(batch[i] - other_k[i]).mean() > 0.03 for i in range(3))
    other_digit = digits.render_batch(["the digit seven, thick pen"], z[:1], 32)[0]
    assert np.abs(batch[0] - other_digit).mean() > 0.05
    with pytest.raises(ValueError, match="latents must be"):
        digits.render_batch(captions, z[:, :5], 32)


def test_white_ink_on_a_dark_background_inside_the_frame():
    captions = [f"the digit {d}" for d in digits.DIGITS for _ in range(20)]
    images = digits.render_batch(captions, latents(len(captions)), 32)
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.median(corners) < 0.05 and np.percentile(images.max(axis=(1, 2)), 5) > 0.7
    # Like the scans: the glyph near the middle, as tall as the frame but narrower (little ink at the sides).
    ink, centres = images.sum(axis=(1, 2)), np.arange(32) + 0.5
    for axis in (1, 2):
        centroid = (images.sum(axis=axis) * centres).sum(axis=1) / ink
        assert np.percentile(np.abs(centroid - 16), 95) < 0.15 * 32, axis
    assert np.percentile(images[:, :, [0, 1, -2, -1]].sum(axis=(1, 2)) / ink, 95) < 0.05


def test_pipeline_renders_each_image_from_its_latent_and_reads_fidelity_from_guidance():
    pipe = digits.DigitsPipeline()
    captions = digits.make_captions(2)
    noise = initial_noise(0, [0, 1], 3, pipe.latent_shape(32))
    images = pipe(captions, noise, resolution=32, output_size=16).images
    assert images.shape == (2, 3, 16, 16, 3) and images.dtype == np.uint8
    assert (images[..., 0] == images[..., 2]).all()  # grey
    direct = torch.from_numpy(digits.render(captions[1], noise[1, 2].numpy(), 32))[None]
    resized = torch.nn.functional.interpolate(direct, size=(16, 16), mode="bicubic", antialias=True)
    np.testing.assert_array_equal(images[1, 2], (resized.clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy())
    loose = pipe(captions, noise, resolution=32, output_size=32, guidance_scale=0.0).images
    expected = digits.render_batch([c for c in captions for _ in range(3)], noise.reshape(6, -1).numpy(), 32, fidelity=0.0)
    np.testing.assert_array_equal(loose.reshape(6, 32, 32, 3)[..., 0], (expected * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="latents must be"):
        pipe(captions, noise[:1], resolution=32, output_size=32)
