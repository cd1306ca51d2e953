"""Augmentation settings: presets, the strength knob, parsing, and both backends honouring the fields."""

import pytest
import torch
from helpers import require_stage

require_stage("train")  # augmentation settings as TrainConfig takes them

from stablerep_fast.data import Augment, available_backends, build_loader  # noqa: E402
from stablerep_fast.data.augment import MEAN, STD  # noqa: E402
from stablerep_fast.train import ConfigError, TrainConfig  # noqa: E402

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif("dali" not in available_backends(), reason="no DALI"))]
S = 32


def test_strength_runs_from_none_to_the_recipe():
    assert Augment.at_strength(0) == Augment(random=False)
    assert Augment.at_strength(1) == Augment()
    half = Augment.at_strength(0.5)
    assert half.crop_scale == (0.54, 1.0) and half.brightness == 0.2 and half.grayscale_p == 0.1 and half.blur_p == 0.25
    with pytest.raises(ValueError, match="strength must be in"):
        Augment.at_strength(1.5)


def test_parse_names_mappings_and_bad_values():
    assert Augment.parse("none") == Augment(random=False)
    parsed = Augment.parse({"crop_scale": [0.5, 1], "flip_p": 0})
    assert parsed.crop_scale == (0.5, 1.0) and parsed.flip_p == 0 and parsed.blur_p == Augment().blur_p
    assert Augment.parse(parsed.to_dict()) == parsed
    for bad, message in [("strong", "unknown augment"), ({"crop": 1}, "unknown augment field"),
                         ({"flip_p": 2}, "flip_p must be a probability"), ({"crop_scale": [0, 1]}, "crop_scale")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            Augment.parse(bad)


def test_train_config_carries_augment_fields_through_yaml(tmp_path):
    config = TrainConfig(augment={"crop_scale": [0.3, 1.0], "jitter_p": 0.5})
    assert config.augment == Augment(crop_scale=(0.3, 1.0), jitter_p=0.5)
    config.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml").augment == config.augment
    assert TrainConfig.from_dict({"augment": "none"}).augment == Augment(random=False)
    with pytest.raises(ConfigError, match="unknown augment"):
        TrainConfig.from_dict({"augment": "strong"})


def _first_batch(shards, backend, augment):
    loader = build_loader(shards, 4, 2, image_size=S, backend=backend, device="cpu", augment=augment,
                          num_workers=0 if backend == "torch" else 1, seed=3)  # fmt: skip
    return next(iter(loader))[0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)  # RGB in [0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_honour_the_fields(shards, backend):
    plain = _first_batch(shards, backend, "none")
    # Whole-image crops, no colour change, no blur, always flipped: the plain batch mirrored.
    still = dict(crop_scale=(1, 1), crop_ratio=(1, 1), jitter_p=0, grayscale_p=0, blur_p=0)
    flipped = _first_batch(shards, backend, Augment(**still, flip_p=1))
    assert (flipped - plain.flip(-1)).abs().mean() < 0.01
    assert (flipped - plain).abs().mean() > 0.05
    # Grayscale always: three equal channels; never: the colours stay.
    grey = _first_batch(shards, backend, Augment(**{**still, "grayscale_p": 1}, flip_p=0))
    assert (grey - grey.mean(1, keepdim=True)).abs().max() < 0.02
    assert (plain - plain.mean(1, keepdim=True)).abs().max() > 0.2
    # Jitter always: the colours move.
    jittered = _first_batch(shards, backend, Augment(**{**still, "jitter_p": 1}, flip_p=0))
    assert (jittered - plain).abs().mean() > 0.02
