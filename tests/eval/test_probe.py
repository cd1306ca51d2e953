"""Probes and kNN on synthetic features with a known answer, and the data sources."""

import re

import numpy as np
import pytest
import torch

from stablerep_fast.errors import ConfigError, DataError
from stablerep_fast.eval import (
    ProbeConfig,
    ProbeData,
    Split,
    evaluate,
    extract_features,
    knn_accuracy,
    linear_probe,
    load_probe_data,
    probe_checkpoint,
)


def _blobs(n_per_class: int, classes: int = 5, dim: int = 32, noise: float = 1.0, seed: int = 0):
    """Gaussian clusters around random centres, separable up to a little overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + noise * rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


@pytest.mark.parametrize("method", ["lbfgs", "sgd"])
def test_linear_probe_separates_separable_features(method):
    train_x, train_y = _blobs(60, seed=0)
    test_x, test_y = _blobs(30, seed=0)[0][::2], _blobs(30, seed=0)[1][::2]
    result = linear_probe(train_x, train_y, test_x, test_y, method=method, epochs=20)
    assert result.accuracy >= 0.95, result
    assert result.best in result.val_accuracy and len(result.val_accuracy) == 5


def test_linear_probe_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 16)).astype(np.float32), rng.integers(0, 4, 400)
    result = linear_probe(x[:300], y[:300], x[300:], y[300:], sweep=(1e-2,))
    assert result.accuracy < 0.45


def test_knn_on_clusters():
    x, y = _blobs(40, noise=0.5)
    assert knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) >= 0.95


def test_evaluate_a_features_npz(tmp_path):
    x, y = _blobs(40)
    np.savez(tmp_path / "f.npz", x_train=x[::2], y_train=y[::2], x_test=x[1::2], y_test=y[1::2])
    data = load_probe_data(str(tmp_path / "f.npz"))
    assert data.train.is_features and data.class_names == ("0", "1", "2", "3", "4")
    result = evaluate(None, data, ProbeConfig())
    assert result["probe_acc"] >= 0.95 and result["knn_acc"] >= 0.95 and result["feature_dim"] == 32


def _colour_tree(root):
    """Colour-coded classes in an ImageFolder tree: 8 train and 4 val images per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for split, count in (("train", 8), ("val", 4)):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_evaluate_images_through_an_encoder(tmp_path):
    """A mean-colour encoder separates the colour-coded classes."""
    _colour_tree(tmp_path)
    data = load_probe_data(str(tmp_path), image_size=16)
    assert data.class_names == ("blue", "green", "red") and data.train.x.shape == (24, 16, 16, 3)
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    features = extract_features(encoder, data.test.x, image_size=8, batch_size=5)
    assert features.shape == (12, 3) and features.dtype == np.float32
    assert evaluate(encoder, data, ProbeConfig(knn_k=3), image_size=8)["probe_acc"] == 1.0


def test_shapes_held_out_set_and_bad_sources(tmp_path):
    data = load_probe_data("shapes:texture", image_size=32, per_class=4)
    assert data.train.x.shape == (16, 32, 32, 3) and data.test.x.shape == (8, 32, 32, 3)
    assert not np.array_equal(data.train.x[:8], data.test.x)  # train and test are different draws
    with pytest.raises(FileNotFoundError):
        load_probe_data(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="method"):
        linear_probe(*_blobs(4), *_blobs(2), method="svm")


def test_unreadable_images_of_an_image_folder_are_skipped_counted_and_named(tmp_path, caplog):
    _colour_tree(tmp_path)
    truncated = tmp_path / "train" / "red" / "3.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    garbage = tmp_path / "val" / "blue" / "0.png"
    garbage.write_bytes(b"not an image at all")
    data = load_probe_data(str(tmp_path), image_size=16)
    assert sorted(data.skipped) == sorted([str(truncated), str(garbage)])
    assert len(data.train.y) == 23 and len(data.test.y) == 11
    assert all(any(p in r.getMessage() for r in caplog.records) for p in data.skipped)
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert evaluate(encoder, data, ProbeConfig(knn_k=3), image_size=8)["skipped_images"] == 2


@pytest.mark.parametrize("labels, message", [([0, 1.5, 2], "not whole numbers"), ([0, -1, 2], "negative"),
                                             ([0, np.nan, 2], "not whole numbers")])  # fmt: skip
def test_probe_refuses_labels_that_are_not_class_numbers(labels, message):
    """0.5 must not silently become class 0."""
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with pytest.raises(DataError, match=message):
        linear_probe(x, np.array(labels), x, np.array([0, 1, 2]))
    with pytest.raises(DataError, match=message):
        knn_accuracy(x, np.array([0, 1, 2]), x, np.array(labels))
    assert linear_probe(x, np.array([0.0, 1.0, 2.0]), x, np.array([0, 1, 2]), sweep=(1e-2,)).accuracy == 1.0


def test_probe_checkpoint_probes_the_backbone_at_its_training_size(tmp_path):
    """The checkpoint's backbone, at the image size it was trained at, on the probe set its seed draws."""
    from stablerep_fast.train import build_model, preset, save_checkpoint

    config = preset("tiny", model_kwargs={"img_size": 16, "patch_size": 4, "depth": 1}, image_size=16, head_hidden=32)
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "config": config.to_dict(), "step": 0})
    probe = ProbeConfig(sweep=(1e-3,), knn_k=3, seed=1)
    expected = evaluate(model.backbone, load_probe_data("shapes:colour", image_size=16, per_class=3, seed=1), probe,
                        image_size=16)  # fmt: skip
    assert probe_checkpoint("shapes:colour", tmp_path / "c.pt", probe, per_class=3) == expected
    x, y = _blobs(20)
    np.savez(tmp_path / "f.npz", x_train=x[::2], y_train=y[::2], x_test=x[1::2], y_test=y[1::2])
    probe, features = ProbeConfig(sweep=(1e-2,)), str(tmp_path / "f.npz")
    assert probe_checkpoint(features, config=probe) == evaluate(None, load_probe_data(features), probe)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(knn_k=0), "knn_k (--knn-k) must be >= 1"),
        (dict(epochs=0), "epochs (--epochs) must be >= 1"),
        (dict(batch_size=0), "batch_size (--batch-size) must be >= 1"),
        (dict(sweep=(1e-3, 0.0)), "must be > 0, got [0.001, 0.0]"),
        (dict(sweep=(-1.0,)), "must be > 0, got [-1.0]"),
        (dict(sweep=(float("inf"),)), "must be > 0, got [inf]"),
        (dict(method="svm"), "method (--method) must be one of"),
        (dict(val_fraction=1.0), "val_fraction must be in (0, 1)"),
    ],
)
def test_probe_settings_that_cannot_work_are_refused(settings, message):
    """Each is refused where it is set (ProbeConfig) and where it is used (linear_probe, knn_accuracy)."""
    with pytest.raises(ConfigError) as caught:
        ProbeConfig(**settings)
    assert message in str(caught.value)
    x, y = _blobs(4)
    with pytest.raises(ConfigError, match=re.escape(message)):
        if "knn_k" in settings:
            knn_accuracy(x, y, x, y, k=settings["knn_k"])
        else:
            linear_probe(x, y, x, y, **settings)


def test_test_classes_without_training_rows_are_named():
    """A probe cannot predict a class it never saw: refused, naming the classes (2 and 4 here)."""
    x, y = _blobs(6)
    train = np.isin(y, [0, 1, 3])
    for probe in (linear_probe, knn_accuracy):
        with pytest.raises(DataError, match=re.escape("test classes [2, 4] have no training rows")):
            probe(x[train], y[train], x, y)
    assert knn_accuracy(x, y, x[train], y[train], k=1) == 1.0  # the other way round is fine: a test row's own copy


def test_a_sweep_needs_two_training_rows_in_some_class():
    """One row per class leaves nothing to hold out: several settings cannot be chosen among;
    a single setting needs no choice and is fitted on the rows as they are."""
    x, y = _blobs(1)
    with pytest.raises(DataError, match="no class has 2 training rows"):
        linear_probe(x, y, x, y)
    assert linear_probe(x, y, x, y, sweep=(1e-2,)).accuracy == 1.0


def test_probe_device_without_a_gpu_is_one_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x, y = _blobs(4)
    data = ProbeData(Split(x, y), Split(x, y), tuple("abcde"))
    with pytest.raises(ConfigError, match="device 'cuda': no CUDA GPU is visible"):
        evaluate(None, data, ProbeConfig(device="cuda"))
    with pytest.raises(ConfigError, match="device 'gpu' is not a torch device"):
        probe_checkpoint("never-read.npz", config=ProbeConfig(device="gpu"))


def test_probe_checkpoint_refuses_an_image_size_its_backbone_cannot_take(tmp_path):
    """A ViT built for 16 px refuses 12 px: one error naming the checkpoint and its training
    size; the training size itself is accepted."""
    from stablerep_fast.train import build_model, preset, save_checkpoint

    config = preset("tiny", model_kwargs={"img_size": 16, "patch_size": 4, "depth": 1}, image_size=16, head_hidden=32)
    save_checkpoint(tmp_path / "c.pt", {"model": build_model(config).state_dict(), "config": config.to_dict(), "step": 0})
    probe = ProbeConfig(sweep=(1e-3,), knn_k=1)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'c.pt'} (trained at 16 px) does not take 12-px images")):
        probe_checkpoint("shapes", tmp_path / "c.pt", probe, image_size=12, per_class=2)
    with pytest.raises(ConfigError, match=re.escape("image_size (--image-size) must be >= 1, got 0")):
        probe_checkpoint("shapes", tmp_path / "c.pt", probe, image_size=0, per_class=2)
    assert probe_checkpoint("shapes", tmp_path / "c.pt", probe, image_size=16, per_class=2)["train_size"] == 16
    with pytest.raises(ConfigError, match=re.escape("per_class (--per-class) must be >= 1")):
        load_probe_data("shapes", per_class=0)
