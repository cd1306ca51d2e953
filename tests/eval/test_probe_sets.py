import numpy as np
import pytest

from stablerep_fast.eval import load_probe_data
from stablerep_fast.eval.probe_sets import make_probe_set
from stablerep_fast.generate import shapes


def test_probe_set_is_labelled_balanced_and_held_out():
    probe = make_probe_set(3, label="shape", seed=0, resolution=32)
    assert probe.images.shape == (3 * len(shapes.SHAPES), 32, 32, 3) and probe.images.dtype == np.uint8
    assert probe.class_names == shapes.SHAPES
    assert np.bincount(probe.labels).tolist() == [3] * len(shapes.SHAPES)
    for caption, label in zip(probe.captions, probe.labels):
        named = shapes.parse_caption(caption)
        assert set(named) == set(shapes.VOCABULARY) and named["shape"] == probe.class_names[label]
    np.testing.assert_array_equal(probe.images, make_probe_set(3, seed=0, resolution=32).images)
    assert not np.array_equal(probe.images, make_probe_set(3, seed=1, resolution=32).images)
    colours = make_probe_set(1, label="colour", resolution=16, size=8)
    assert colours.images.shape == (len(shapes.COLOURS), 8, 8, 3)
    with pytest.raises(ValueError, match="label must be one of"):
        make_probe_set(1, label="mood")


def test_validation_split_holds_out_training_images_only():
    data = load_probe_data("shapes:texture", image_size=16, per_class=10, seed=0)
    val = data.validation_split(0.2, seed=0)
    assert len(val.train.y) + len(val.test.y) == len(data.train.y)
    assert np.bincount(val.test.y).tolist() == [2] * len(shapes.TEXTURES)  # stratified
    rows = lambda split: {x.tobytes() for x in split.x}  # noqa: E731
    assert rows(val.train) | rows(val.test) == rows(data.train)
    assert not rows(val.train) & rows(val.test) and not rows(val.test) & rows(data.test)
