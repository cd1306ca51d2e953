import importlib.util

import numpy as np
import pytest
from helpers import require_stage

require_stage("generate")  # the synthetic probe sets are drawn by its generators

from stablerep_fast.eval import load_probe_data  # noqa: E402
from stablerep_fast.eval.probe_sets import DIGIT_CLASSES, few_shot, make_probe_set, real_digits  # noqa: E402
from stablerep_fast.generate import shapes  # noqa: E402

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the real digit scans come with scikit-learn: pip install 'stablerep_fast[train]'")


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


def rows(split) -> list[bytes]:
    return sorted(x.tobytes() for x in split.x)


@needs_sklearn
def test_real_digits_split_is_fixed_stratified_and_a_partition_of_the_scans():
    from sklearn.datasets import load_digits

    scans = load_digits()
    data = real_digits(8)
    assert data.class_names == DIGIT_CLASSES
    assert data.train.x.shape == (1198, 8, 8, 3) and data.train.x.dtype == np.uint8 and data.train.y.dtype == np.int64
    per_class = np.bincount(scans.target)
    assert np.bincount(data.test.y).tolist() == [round(n / 3) for n in per_class]  # a third of every class
    assert (np.bincount(data.train.y) + np.bincount(data.test.y)).tolist() == per_class.tolist()
    # At 8 px the images are the scans themselves, 0-16 scaled to 0-255, ink bright, grey: every scan exactly once.
    expected = np.repeat(np.round(scans.images * 255 / 16).astype(np.uint8)[..., None], 3, axis=-1)
    assert sorted(rows(data.train) + rows(data.test)) == sorted(x.tobytes() for x in expected)
    label_of = {x.tobytes(): y for x, y in zip(expected, scans.target)}
    for split in (data.train, data.test):
        assert all(label_of[x.tobytes()] == y for x, y in zip(split.x, split.y))
    again = real_digits(8)
    np.testing.assert_array_equal(again.test.x, data.test.x)
    larger = real_digits(24)
    assert larger.test.x.shape == (599, 24, 24, 3)
    np.testing.assert_array_equal(larger.test.y, data.test.y)  # the same split at every size
    # Bilinear upsampling keeps the scans' brightness, to within the 1-pixel border it replicates.
    assert abs(larger.test.x.mean() - data.test.x.mean()) < 0.1 * data.test.x.mean()


@needs_sklearn
def test_real_digits_validation_and_few_shot_stay_inside_the_training_split():
    data = real_digits(8)
    val = real_digits(8, validation=True, val_fraction=0.25, seed=1)
    assert sorted(rows(val.train) + rows(val.test)) == rows(data.train) and not set(rows(val.test)) & set(rows(val.train))
    assert np.bincount(val.test.y).min() >= 29  # a quarter of every class (at least 116 training rows each)
    shots = few_shot(data, 10, seed=0)
    assert np.bincount(shots.train.y).tolist() == [10] * 10
    assert set(rows(shots.train)) <= set(rows(data.train)) and shots.test is data.test
    assert rows(few_shot(data, 10, seed=0).train) == rows(shots.train)
    assert rows(few_shot(data, 10, seed=1).train) != rows(shots.train)
    with pytest.raises(ValueError, match="fewer than 500 shots"):
        few_shot(data, 500)

