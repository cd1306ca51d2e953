"""The augmentation parameters, in one place, for both loader backends.

``"stablerep"`` is the recipe of docs/method.md, drawn independently per image:
RandomResizedCrop(S, scale 0.08-1, ratio 3/4-4/3), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
grayscale with p 0.2, Gaussian blur sigma 0.1-2 with p 0.5, horizontal flip, ImageNet
normalisation. ``"none"`` (evaluation, deterministic tests): resize the shorter side to S, centre
crop S x S, normalise. The torch backend builds torchvision transforms and the DALI backend
DALI operators from the same ``Augment``; the pixels differ (different RNGs and kernels), the
distributions do not.
"""

from __future__ import annotations

from dataclasses import dataclass

MEAN = (0.485, 0.456, 0.406)  # ImageNet, RGB in [0, 1]
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    random: bool  # False: resize + centre crop only
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    brightness: float = 0.4  # factors drawn from [1 - x, 1 + x]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # fraction of the colour circle: +-36 degrees
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5

    @staticmethod
    def blur_kernel(image_size: int) -> int:
        """Odd window of about a tenth of the image (SimCLR's choice): 23 at 224."""
        return int(0.1 * image_size) // 2 * 2 + 1


AUGMENTS = {
    "stablerep": Augment(random=True),
    "none": Augment(random=False),
}


def get_augment(name: str) -> Augment:
    if name not in AUGMENTS:
        raise ValueError(f"unknown augment {name!r}; choose one of {list(AUGMENTS)}")
    return AUGMENTS[name]
