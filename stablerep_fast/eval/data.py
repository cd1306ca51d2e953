"""Labelled evaluation data: an ImageFolder tree, a .npz of arrays, or the shapes held-out set.

Every source gives a train and a test split, each either images (uint8 [N, H, W, 3]) to encode
or features (float [N, D]) already computed, with int64 labels.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stablerep_fast.errors import ConfigError, DataError, first_line
from stablerep_fast.eval.splits import ProbeData, Split, check_splits

log = logging.getLogger("stablerep_fast.eval")

TRAIN_DIRS, TEST_DIRS = ("train",), ("val", "test")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
ZIP_MAGIC = b"PK"  # a .npz is a zip archive (numpy.savez); an empty archive starts with PK too


def load_probe_data(source: str, *, image_size: int = 64, per_class: int = 100, seed: int = 0) -> ProbeData:
    """``source``: a folder with train/ and val/ (or test/) ImageFolder trees, a ``.npz`` with
    x_train, y_train, x_test, y_test, or ``shapes[:ATTRIBUTE]`` (the shapes generator's
    held-out set, ``per_class`` train and ``per_class // 2`` test images per value of the
    attribute, default "shape"); ImageFolder and shapes images come at ``image_size``."""
    check_image_size(image_size)
    if source == "shapes" or source.startswith("shapes:"):
        return _shapes(source.partition(":")[2] or "shape", image_size, per_class, seed)
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        return _npz(path)
    if path.is_dir():
        return _image_folder(path, image_size)
    raise FileNotFoundError(f"{source}: neither an ImageFolder tree, a .npz file nor shapes[:ATTRIBUTE]")


def check_image_size(image_size: int) -> None:
    """ConfigError unless ``image_size`` (the probe images' side in pixels) is >= 1."""
    if image_size < 1:
        raise ConfigError(f"image_size (--image-size) must be >= 1, got {image_size}")


def _shapes(label: str, image_size: int, per_class: int, seed: int) -> ProbeData:
    from stablerep_fast.eval.probe_sets import make_probe_set

    if per_class < 1:
        raise ConfigError(f"per_class (--per-class) must be >= 1 (shapes: training images per class), got {per_class}")

    resolution = max(64, -(-image_size // 8) * 8)
    train = make_probe_set(per_class, label=label, seed=2 * seed + 1, resolution=resolution, size=image_size)
    test = make_probe_set(max(1, per_class // 2), label=label, seed=2 * seed + 2, resolution=resolution, size=image_size)
    return ProbeData(Split(train.images, train.labels), Split(test.images, test.labels), train.class_names)


def _npz(path: Path) -> ProbeData:
    with open(path, "rb") as file:
        zip_start = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    if not zip_start:
        raise DataError(f"{path} is not a .npz file (not a zip archive); write the arrays {list(NPZ_KEYS)} with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} cannot be read as a .npz ({first_line(exc)}): truncated or damaged? write it again "
                        "with numpy.savez (numeric arrays only)") from None  # fmt: skip
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}; expected {list(NPZ_KEYS)}")
    xs = []
    for x_key in ("x_train", "x_test"):
        x = arrays[x_key]
        if x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] != 3:
            x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        if x.ndim not in (2, 4):
            raise DataError(f"{path}: {x_key} must be [N, D] features or [N, H, W, 3] images, got shape {list(x.shape)}")
        xs.append(x if x.ndim == 2 else x.astype(np.uint8))
    train_y, test_y = check_splits(xs[0], arrays["y_train"], xs[1], arrays["y_test"], str(path))
    names = tuple(str(c) for c in range(int(max(train_y.max(), test_y.max())) + 1))
    return ProbeData(Split(xs[0], train_y), Split(xs[1], test_y), names)


def _image_folder(root: Path, image_size: int) -> ProbeData:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2 as T

    train_dir = next((root / d for d in TRAIN_DIRS if (root / d).is_dir()), None)
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if train_dir is None or test_dir is None:
        raise FileNotFoundError(f"{root}: an ImageFolder probe set needs train/ and val/ (or test/) subfolders")
    resize = T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size)])

    skipped: list[str] = []

    def load(folder: Path) -> tuple[Split, list[str]]:
        dataset = ImageFolder(str(folder))
        images, labels = [], []
        for path, label in dataset.samples:
            try:
                with Image.open(path) as image:
                    images.append(resize(T.functional.pil_to_tensor(image.convert("RGB"))).permute(1, 2, 0))
                labels.append(label)
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:  # PIL raises SyntaxError for some damage
                log.warning("skipping unreadable image %s (%s)", path, exc)
                skipped.append(path)
        if not images:
            raise DataError(f"{folder}: no readable image; an ImageFolder needs one subfolder of images per class")
        return Split(torch.stack(images).numpy(), np.array(labels, dtype=np.int64)), dataset.classes

    train, classes = load(train_dir)
    test, test_classes = load(test_dir)
    if test_classes != classes:
        raise DataError(f"{root}: train and test folders have different classes")
    return ProbeData(train, test, tuple(classes), skipped)
