"""The augmentation parameters, in one place, for both loader backends.

``Augment()`` is StableRep's recipe (docs/method.md), drawn independently per image: RandomResizedCrop(S,
scale 0.08-1, ratio 3/4-4/3), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with
p 0.2, Gaussian blur sigma 0.1-2 with p 0.5, horizontal flip, ImageNet normalisation. Every
field can be set (in a training config: ``augment: {crop_scale: [0.5, 1], blur_p: 0}``);
``Augment.at_strength(s)`` turns one knob from none (0) to the recipe (1), and
``Augment(random=False)`` ("none": evaluation, deterministic tests) resizes the shorter side to
S and centre-crops. The torch backend builds torchvision transforms and the DALI backend DALI
operators from the same ``Augment``; the pixels differ (different RNGs and kernels), the
distributions do not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

MEAN = (0.485, 0.456, 0.406)  # ImageNet, RGB in [0, 1]
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    random: bool = True  # False: resize + centre crop only
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random crop
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

    def __post_init__(self):
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):  # YAML gives lists
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"augment crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("jitter_p", "grayscale_p", "blur_p", "flip_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment {name} must be a probability in [0, 1], got {getattr(self, name)}")
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError("augment brightness, contrast, saturation must be >= 0 and hue in [0, 0.5]")

    @classmethod
    def at_strength(cls, strength: float) -> Augment:
        """One knob: 0 is none, 1 the StableRep recipe; in between, crop scale (1 - 0.92 s, 1),
        colour jitter 0.4 s (hue 0.1 s), grayscale 0.2 s, blur 0.5 s, flips always."""
        if not 0 <= strength <= 1:
            raise ValueError(f"augment strength must be in [0, 1], got {strength}")
        if strength == 0:
            return cls(random=False)
        s = strength
        return cls(crop_scale=(round(1 - 0.92 * s, 6), 1.0), brightness=0.4 * s, contrast=0.4 * s, saturation=0.4 * s,
                   hue=0.1 * s, grayscale_p=0.2 * s, blur_p=0.5 * s)  # fmt: skip

    @classmethod
    def parse(cls, value: str | dict | Augment) -> Augment:
        """An Augment from itself, a preset name of AUGMENTS, or a mapping of its fields."""
        if isinstance(value, Augment):
            return value
        if isinstance(value, str):
            if value not in AUGMENTS:
                raise ValueError(f"unknown augment {value!r}; choose one of {list(AUGMENTS)} or give its fields")
            return AUGMENTS[value]
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"unknown augment field(s) {unknown}; known: {[f.name for f in fields(cls)]}")
            return cls(**value)
        raise ValueError(f"augment must be a preset name or a mapping of fields, got {value!r}")

    def to_dict(self) -> dict:
        """Plain values (lists for ranges), for YAML and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @staticmethod
    def blur_kernel(image_size: int) -> int:
        """Odd window of about a tenth of the image (SimCLR's choice): 23 at 224."""
        return int(0.1 * image_size) // 2 * 2 + 1


AUGMENTS = {
    "stablerep": Augment(),
    "none": Augment(random=False),
}

