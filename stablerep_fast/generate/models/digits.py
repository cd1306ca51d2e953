"""A procedural caption-to-image generator of handwritten digits: the ``--model digits`` world.

An image shows one digit drawn as pen strokes, white ink on a dark background (the polarity of
scikit-learn's digit scans, on which the demo evaluates). A caption names the digit and some of
its style, e.g. "the digit seven", "the digit seven, thick pen, leaning right" or "the digit
two, written small, thin pen, upright, messy hand"; the style attributes are

    size   written small | written large      the glyph's height
    pen    thin pen | thick pen               the stroke width
    slant  leaning left | upright | leaning right
    hand   neat hand | messy hand             how far the pen wobbles off the glyph's skeleton

Like a text-to-image model, the generator fills in what the caption leaves unsaid differently
for every image, from the image's own initial noise (its latent vector): each unnamed attribute,
the value of every attribute inside its named range, the glyph's form (each digit has two or
three: 7 with or without a crossbar, 1 plain, flagged or with a base, 4 open or closed, 9 with a
straight or a curved tail, ...), its width, rotation and position, the pen's wobble (one
coordinate per control point), the ink's brightness, the edge's softness and the pixel noise.
Same caption and latent, same pixels. Free text works too: the vocabulary words it holds are
named ("7" names the digit seven), the rest is drawn.

Each glyph is a few strokes through control points in a unit box; the strokes are Catmull-Rom
splines, cut into line segments, moved by an affine map (height, width, slant, rotation,
position) and rasterised with anti-aliased round pens from the distance of every pixel to the
nearest segment (numpy, batched: 10k images of 32 px take seconds on one core).

**Fidelity** plays the part of classifier-free guidance (the pipeline reads it from
``guidance_scale``; default ``DEFAULT_FIDELITY`` = 1.0):

- every named attribute is kept with weight 1 against weight ``CONTRADICTION ** fidelity`` for
  each other value, so an image contradicts its caption's digit with probability 9e / (1 + 9e),
  e = CONTRADICTION ** fidelity: 90% at fidelity 0 (the caption ignored, as guidance 0 samples
  unconditionally), 0.9% at 1, 0.001% at 2; named style words likewise;
- the continuous ranges (inside the drawn category of each attribute, and every nuisance)
  are scaled about their centres by ``2 / (1 + fidelity)``: twice as wide at 0, as listed at 1,
  half as wide at 3;
- a digit's glyph forms are drawn with their weights raised to the power ``fidelity``, so high
  fidelity favours each digit's most common form.

``make_captions`` gives caption sets: ``mode="subset"`` (default) names the digit always and
each style attribute with probability ``NAME_PROBABILITY``; ``mode="all"`` names every one.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from stablerep_fast.generate.models.protocol import GenerationOutput, to_uint8_images

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Style attributes: value -> (its phrase in a caption, its range: as fractions of the image side
# for size and pen, horizontal shift per unit of height for slant, unit-box offsets for hand).
STYLES: dict[str, dict[str, tuple[str, tuple[float, float]]]] = {
    "size": {"small": ("written small", (0.7, 0.85)), "large": ("written large", (0.85, 1.0))},
    "pen": {"thin": ("thin pen", (0.12, 0.17)), "thick": ("thick pen", (0.17, 0.24))},
    "slant": {"left": ("leaning left", (-0.45, -0.15)), "upright": ("upright", (-0.15, 0.15)),
              "right": ("leaning right", (0.15, 0.45))},  # fmt: skip
    "hand": {"neat": ("neat hand", (0.0, 0.02)), "messy": ("messy hand", (0.02, 0.05))},
}
VOCABULARY: dict[str, tuple[str, ...]] = {"digit": DIGITS, **{name: tuple(values) for name, values in STYLES.items()}}
# The unnamed nuisances: name -> range at fidelity 1.
NUISANCES: dict[str, tuple[float, float]] = {
    "aspect": (0.55, 0.95),  # glyph width / height, before the slant
    "rotation": (-0.12, 0.12),  # radians
    "dx": (-0.06, 0.06),  # centre offset, fractions of the side
    "dy": (-0.05, 0.05),
    "ink": (0.85, 1.0),  # stroke brightness
    "softness": (0.03, 0.1),  # edge ramp width, fractions of the side (at least one pixel)
    "noise": (0.0, 0.03),  # pixel noise std, in [0, 1] units
}
CAPTION_MODES = ("subset", "all")
NAME_PROBABILITY = 0.5  # mode "subset": the chance a caption names each style attribute
DEFAULT_FIDELITY = 1.0
CONTRADICTION = 1e-3  # a value other than the named one weighs CONTRADICTION ** fidelity (the named one 1)
WOBBLE_POINTS = 16  # control points with their own wobble coordinates (later ones reuse them, cyclically)

# Latent coordinates, standard normal, mapped to uniforms: one per attribute of VOCABULARY (its
# value), one per style attribute (the place inside the value's range), the glyph form, one per
# nuisance, then (x, y) wobble per control point. Pixel noise is seeded from the latent's bytes.
_CHOICE = 0
_PLACE = _CHOICE + len(VOCABULARY)
_FORM = _PLACE + len(STYLES)
_NUISANCE = _FORM + 1
_WOBBLE = _NUISANCE + len(NUISANCES)
LATENT_DIM = _WOBBLE + 2 * WOBBLE_POINTS


# ---- 1. Glyphs: strokes through control points in a unit box (x right, y down) --------------


@dataclass(frozen=True)
class Glyph:
    points: np.ndarray  # float64 [P, 2], control points shared by the strokes through them
    strokes: tuple[tuple[int, ...], ...]  # point indices per stroke
    closed: tuple[bool, ...]  # per stroke: a loop (its last point joins its first)


def _glyph(*strokes: list[tuple[float, float]]) -> Glyph:
    """A glyph from strokes given as point lists; equal points are one control point (a corner
    wobbles as one), and a stroke whose last point is its first is a loop."""
    table: dict[tuple[float, float], int] = {}
    indices, closed = [], []
    for stroke in strokes:
        is_loop = len(stroke) > 2 and stroke[0] == stroke[-1]
        indices.append(tuple(table.setdefault(p, len(table)) for p in (stroke[:-1] if is_loop else stroke)))
        closed.append(is_loop)
    return Glyph(np.array(list(table), dtype=np.float64), tuple(indices), tuple(closed))


def _oval(cx: float, cy: float, rx: float, ry: float, n: int = 8, start: float = -90.0) -> list[tuple[float, float]]:
    """A loop of ``n`` points on an ellipse, from angle ``start`` (degrees, clockwise on screen)."""
    angles = [math.radians(start + 360.0 * j / n) for j in range(n)]
    loop = [(round(cx + rx * math.cos(a), 3), round(cy + ry * math.sin(a), 3)) for a in angles]
    return loop + loop[:1]


# Each digit's glyph forms with their weights (the first the most common).
GLYPHS: dict[str, tuple[tuple[Glyph, float], ...]] = {
    "zero": (
        (_glyph(_oval(0.5, 0.5, 0.3, 0.48)), 0.6),
        (_glyph(_oval(0.5, 0.5, 0.2, 0.48, start=-110.0)), 0.4),
    ),
    "one": (
        (_glyph([(0.5, 0.0), (0.5, 1.0)]), 0.2),
        (_glyph([(0.22, 0.38), (0.55, 0.0)], [(0.55, 0.0), (0.55, 1.0)]), 0.45),  # flag
        (_glyph([(0.22, 0.38), (0.55, 0.0)], [(0.55, 0.0), (0.55, 1.0)], [(0.25, 1.0), (0.82, 1.0)]), 0.35),  # flag, base
    ),
    "two": (
        (_glyph([(0.22, 0.25), (0.45, 0.02), (0.72, 0.12), (0.72, 0.38), (0.45, 0.68), (0.2, 1.0)],
                [(0.2, 1.0), (0.82, 1.0)]), 0.6),  # fmt: skip
        (_glyph([(0.25, 0.15), (0.5, 0.0), (0.75, 0.18), (0.62, 0.5), (0.2, 1.0)],
                [(0.2, 1.0), (0.5, 0.9), (0.82, 0.98)]), 0.4),  # fmt: skip  # wavy base
    ),
    "three": (
        (_glyph([(0.22, 0.12), (0.5, 0.0), (0.74, 0.15), (0.68, 0.38), (0.42, 0.48)],
                [(0.42, 0.48), (0.74, 0.6), (0.76, 0.85), (0.5, 1.0), (0.2, 0.9)]), 0.65),  # fmt: skip
        (_glyph([(0.22, 0.0), (0.76, 0.0)], [(0.76, 0.0), (0.42, 0.42)],
                [(0.42, 0.42), (0.72, 0.55), (0.76, 0.82), (0.5, 1.0), (0.2, 0.9)]), 0.35),  # fmt: skip  # flat top
    ),
    "four": (
        (_glyph([(0.45, 0.0), (0.15, 0.62)], [(0.15, 0.62), (0.85, 0.62)], [(0.64, 0.28), (0.62, 1.0)]), 0.5),  # open
        (_glyph([(0.6, 0.0), (0.15, 0.62)], [(0.15, 0.62), (0.85, 0.62)], [(0.62, 0.0), (0.62, 1.0)]), 0.3),  # closed
        (_glyph([(0.24, 0.0), (0.2, 0.6)], [(0.2, 0.6), (0.84, 0.6)], [(0.66, 0.05), (0.66, 1.0)]), 0.2),  # square
    ),
    "five": (
        (_glyph([(0.76, 0.0), (0.3, 0.0)], [(0.3, 0.0), (0.26, 0.45)],
                [(0.26, 0.45), (0.5, 0.38), (0.74, 0.52), (0.75, 0.8), (0.5, 1.0), (0.2, 0.9)]), 0.6),  # fmt: skip
        (_glyph([(0.3, 0.02), (0.8, 0.0)], [(0.32, 0.02), (0.22, 0.5)],
                [(0.22, 0.5), (0.55, 0.4), (0.78, 0.62), (0.62, 0.95), (0.24, 0.95)]), 0.4),  # fmt: skip  # bar apart
    ),
    "six": (
        (_glyph([(0.7, 0.02), (0.42, 0.2), (0.27, 0.5), (0.26, 0.78), (0.45, 0.99), (0.7, 0.88), (0.72, 0.66),
                 (0.5, 0.55), (0.28, 0.66)]), 0.6),  # fmt: skip
        (_glyph([(0.64, 0.0), (0.26, 0.74)], _oval(0.48, 0.76, 0.23, 0.23, start=180.0)), 0.4),  # straight stem
    ),
    "seven": (
        (_glyph([(0.2, 0.02), (0.8, 0.02)], [(0.8, 0.02), (0.38, 1.0)]), 0.4),
        (_glyph([(0.2, 0.02), (0.8, 0.02)], [(0.8, 0.02), (0.38, 1.0)], [(0.3, 0.52), (0.82, 0.5)]), 0.4),  # crossbar
        (_glyph([(0.2, 0.16), (0.24, 0.02), (0.8, 0.02)], [(0.8, 0.02), (0.58, 0.45), (0.45, 1.0)]), 0.2),  # hook
    ),
    "eight": (
        (_glyph([(0.5, 0.48), (0.72, 0.3), (0.68, 0.06), (0.5, 0.0), (0.32, 0.06), (0.28, 0.3), (0.5, 0.48),
                 (0.75, 0.7), (0.7, 0.95), (0.5, 1.0), (0.3, 0.95), (0.25, 0.7), (0.5, 0.48)]), 0.6),  # fmt: skip
        (_glyph(_oval(0.5, 0.24, 0.2, 0.24, n=7), _oval(0.5, 0.73, 0.25, 0.27, n=7)), 0.4),  # two loops
    ),
    "nine": (
        (_glyph(_oval(0.5, 0.26, 0.25, 0.26, start=0.0), [(0.75, 0.26), (0.72, 1.0)]), 0.4),  # straight tail
        (_glyph(_oval(0.5, 0.26, 0.25, 0.26, start=0.0), [(0.75, 0.26), (0.73, 0.7), (0.55, 0.97), (0.25, 0.95)]), 0.6),
    ),
}


@functools.lru_cache(maxsize=None)
def _spline(digit: str, form: int, pieces: int) -> tuple[np.ndarray, np.ndarray]:
    """(basis [V, P], segments [S, 2]): the glyph's strokes as Catmull-Rom splines, ``pieces``
    line segments per span; vertices = basis @ control points, segments index vertex pairs."""
    glyph = GLYPHS[digit][form][0]
    t = np.linspace(0.0, 1.0, pieces + 1)[:, None]
    # Catmull-Rom weights of P[i-1], P[i], P[i+1], P[i+2] for points between P[i] and P[i+1].
    weights = 0.5 * np.hstack([-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3])
    rows, segments = [], []
    for stroke, loop in zip(glyph.strokes, glyph.closed):
        n = len(stroke)
        spans = n if loop else n - 1
        for i in range(spans):
            around = [(i + j) % n if loop else min(max(i + j, 0), n - 1) for j in (-1, 0, 1, 2)]
            block = np.zeros((pieces + 1, len(glyph.points)))
            for column, index in enumerate(around):
                block[:, stroke[index]] += weights[:, column]
            start = sum(len(r) for r in rows)
            rows.append(block)
            segments += [(start + j, start + j + 1) for j in range(pieces)]
    return np.vstack(rows), np.array(segments)


# ---- 2. Captions and the attributes they name -------------------------------------------------


def describe(named: dict[str, str]) -> str:
    """The caption naming exactly ``named`` (attribute -> value), e.g. "the digit seven, thick
    pen, leaning right" ("a digit, ..." when the digit is not named)."""
    head = f"the digit {named['digit']}" if "digit" in named else "a digit"
    return ", ".join([head] + [STYLES[name][named[name]][0] for name in STYLES if name in named])


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes ``caption`` names (attribute -> value): for each attribute the first of
    its words in the caption (digit names or numerals; "small", "thick", "left", "messy", ...)."""
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    words = [DIGITS[int(w)] if len(w) == 1 and w.isdigit() else w for w in words]
    named = {}
    for name, values in VOCABULARY.items():
        found = next((w for w in words if w in values), None)
        if found is not None:
            named[name] = found
    return named


def make_captions(n: int, seed: int = 0, mode: str = "subset") -> list[str]:
    """``n`` captions, distinct while n <= the number of possible ones (240 with mode "all",
    1080 with "subset"). "all": every caption names the digit and all four style attributes,
    uniformly; "subset": the digit always, each style attribute with probability NAME_PROBABILITY
    (a little more often as n nears 1080: distinct captions exhaust the likelier ones first)."""
    if mode not in CAPTION_MODES:
        raise ValueError(f"mode must be one of {CAPTION_MODES}, got {mode!r}")
    options = {name: values + ((None,) if mode == "subset" and name != "digit" else ()) for name, values in VOCABULARY.items()}
    catalogue = [dict(zip(options, values)) for values in itertools.product(*options.values())]
    weights = np.array([
        math.prod(1.0 / len(VOCABULARY[name]) if value is not None else 1.0 for name, value in entry.items())
        * math.prod(NAME_PROBABILITY if entry[name] is not None else 1 - NAME_PROBABILITY for name in STYLES)
        for entry in catalogue
    ]) if mode == "subset" else np.ones(len(catalogue))  # fmt: skip
    codes = np.random.default_rng(seed).choice(len(catalogue), size=n, replace=n > len(catalogue), p=weights / weights.sum())
    return [describe({k: v for k, v in catalogue[code].items() if v is not None}) for code in codes]


# ---- 3. The drawing's parameters, from the caption and the latent -----------------------------


@dataclass(frozen=True)
class Drawing:
    """Everything one image's rendering draws, but the wobble offsets and the pixel noise."""

    digit: str
    form: int  # index into GLYPHS[digit]
    size: str
    pen: str
    slant: str
    hand: str
    height: float  # fractions of the image side
    width: float  # stroke width, fraction of the side
    shear: float  # horizontal shift per unit of height upwards
    wobble: float  # std of control-point offsets, unit box
    aspect: float
    rotation: float
    dx: float
    dy: float
    ink: float
    softness: float
    noise: float


def _uniform(z: np.ndarray) -> list[float]:
    """Standard-normal coordinates -> uniform on (0, 1) (the normal CDF)."""
    return [0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.asarray(z, dtype=np.float64).tolist()]


def _pick(u: float, weights: list[float]) -> int:
    """The category whose share of [0, 1) under ``weights`` holds ``u``."""
    bound, total = 0.0, sum(weights)
    for index, weight in enumerate(weights):
        bound += weight
        if u * total < bound:
            return index
    return len(weights) - 1


def _spread(low: float, high: float, u: float, spread: float) -> float:
    """The point ``u`` of [low, high] widened ``spread`` times about its centre."""
    return float((low + high) / 2 + spread * (u - 0.5) * (high - low))


def draw_parameters(named: dict[str, str], latent: np.ndarray, fidelity: float = DEFAULT_FIDELITY) -> Drawing:
    """The drawing of one image: named attributes kept (but with the contradiction weight of
    the module docstring), unnamed ones, the glyph form and the nuisances from ``latent``."""
    if fidelity < 0:
        raise ValueError(f"fidelity must be >= 0, got {fidelity}")
    u = _uniform(latent)
    spread = 2.0 / (1.0 + fidelity)
    other = CONTRADICTION**fidelity
    chosen = {}
    for i, (name, values) in enumerate(VOCABULARY.items()):
        weights = [1.0 if name not in named or value == named[name] else other for value in values]
        chosen[name] = values[_pick(u[_CHOICE + i], weights)]
    forms = [weight**fidelity for _, weight in GLYPHS[chosen["digit"]]]
    placed = {name: _spread(*STYLES[name][chosen[name]][1], u[_PLACE + i], spread) for i, name in enumerate(STYLES)}
    nuisance = {name: _spread(*bounds, u[_NUISANCE + i], spread) for i, (name, bounds) in enumerate(NUISANCES.items())}
    # Widened ranges (fidelity < 1) can leave what is physical: no negative wobble, softness or noise, no ink above 1.
    for name in ("softness", "noise"):
        nuisance[name] = max(nuisance[name], 0.0)
    nuisance["ink"] = min(nuisance["ink"], 1.0)
    return Drawing(**chosen, form=_pick(u[_FORM], forms), height=placed["size"], width=placed["pen"],
                   shear=placed["slant"], wobble=max(placed["hand"], 0.0), **nuisance)  # fmt: skip


# ---- 4. Rendering ------------------------------------------------------------------------------


def _segments(drawing: Drawing, latent: np.ndarray, resolution: int) -> np.ndarray:
    """The drawing's line segments in pixel coordinates, float32 [S, 2 ends, 2 (x, y)]."""
    basis, pairs = _spline(drawing.digit, drawing.form, max(2, resolution // 16))
    points = GLYPHS[drawing.digit][drawing.form][0].points
    offsets = np.asarray(latent, dtype=np.float64)[_WOBBLE:].reshape(WOBBLE_POINTS, 2)
    points = points + drawing.wobble * offsets[np.arange(len(points)) % WOBBLE_POINTS]
    xy = (basis @ points - 0.5) * [drawing.height * drawing.aspect, drawing.height]
    xy[:, 0] -= drawing.shear * xy[:, 1]  # y grows downwards: the top moves right for shear > 0
    cos, sin = math.cos(drawing.rotation), math.sin(drawing.rotation)
    xy = xy @ np.array([[cos, sin], [-sin, cos]]) + [0.5 + drawing.dx, 0.5 + drawing.dy]
    return (xy[pairs] * resolution).astype(np.float32)


def _rasterise(segments: np.ndarray, half_width: np.ndarray, softness: np.ndarray, resolution: int) -> np.ndarray:
    """Coverage in [0, 1], float32 [N, H, W], of round pens of ``half_width`` [N] (pixels) along
    ``segments`` [N, S, 2, 2] (pixels), with edges ramping over ``softness`` [N] pixels."""
    centres = np.arange(resolution, dtype=np.float32) + 0.5
    a, d = segments[:, :, None, None, 0], segments[:, :, None, None, 1] - segments[:, :, None, None, 0]
    length2 = np.maximum((d**2).sum(-1), 1e-12)
    rx = centres[None, None, None, :] - a[..., 0]  # [N, S, 1, W]
    ry = centres[None, None, :, None] - a[..., 1]  # [N, S, H, 1]
    t = rx * (d[..., 0] / length2) + ry * (d[..., 1] / length2)  # [N, S, H, W]: the nearest point's place
    np.clip(t, 0.0, 1.0, out=t)
    ex = rx - t * d[..., 0]
    ey = ry - t * d[..., 1]
    distance = np.sqrt((np.square(ex, out=ex) + np.square(ey, out=ey)).min(axis=1))
    return np.clip((half_width[:, None, None] - distance) / softness[:, None, None] + 0.5, 0.0, 1.0)


def render_batch(captions: list[str], latents: np.ndarray, resolution: int, fidelity: float = DEFAULT_FIDELITY) -> np.ndarray:
    """Images of ``captions``, float32 [N, resolution, resolution] in [0, 1] (ink bright);
    ``latents``: float [N, LATENT_DIM], standard normal. Image i depends on captions[i] and
    latents[i] alone, not on the batch."""
    latents = np.asarray(latents, dtype=np.float64)
    if latents.shape != (len(captions), LATENT_DIM):
        raise ValueError(f"latents must be [{len(captions)}, {LATENT_DIM}], got {list(latents.shape)}")
    if not captions:
        return np.zeros((0, resolution, resolution), dtype=np.float32)
    drawings = [draw_parameters(parse_caption(c), z, fidelity) for c, z in zip(captions, latents)]
    segments = [_segments(drawing, z, resolution) for drawing, z in zip(drawings, latents)]
    pick = lambda field: np.array([getattr(d, field) for d in drawings], dtype=np.float32)  # noqa: E731
    half_width = pick("width") * resolution / 2
    softness = np.maximum(pick("softness") * resolution, 1.0)
    images = np.empty((len(captions), resolution, resolution), dtype=np.float32)
    chunk = max(1, 2**21 // (resolution * resolution * max(len(s) for s in segments)))  # about 8 MB per temporary
    for start in range(0, len(captions), chunk):
        part = segments[start : start + chunk]
        # Pad each image's segments with copies of its first: a repeated segment leaves the minimum distance alone.
        padded = np.stack([np.concatenate([s, np.repeat(s[:1], max(map(len, part)) - len(s), axis=0)]) for s in part])
        images[start : start + chunk] = _rasterise(padded, half_width[start : start + chunk],
                                                   softness[start : start + chunk], resolution)  # fmt: skip
    for image, drawing, z in zip(images, drawings, latents):
        noise_seed = int.from_bytes(hashlib.blake2b(z.tobytes(), digest_size=8).digest(), "little")
        image *= drawing.ink
        image += np.random.default_rng(noise_seed).normal(0.0, drawing.noise, image.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0)


def render(caption: str, latent: np.ndarray, resolution: int, fidelity: float = DEFAULT_FIDELITY) -> np.ndarray:
    """One image of ``caption``, float32 [3, resolution, resolution] in [0, 1] (grey: the
    channels are equal); ``latent``: float [LATENT_DIM], standard normal."""
    return np.repeat(render_batch([caption], np.asarray(latent)[None], resolution, fidelity), 3, axis=0)


class DigitsPipeline:
    """Renders B captions x K latents per call, with the calling convention of
    ``StableRepPipeline``; ``guidance_scale`` is the fidelity (module docstring), steps are not used."""

    model_id = "digits"
    backend = "numpy"
    default_resolution = 32  # online generation's default
    default_guidance = DEFAULT_FIDELITY

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        return (LATENT_DIM,)

    def make_captions(self, n: int, seed: int = 0) -> list[str]:
        """The generator's own caption source: ``make_captions(n, seed)``, mode "subset"."""
        return make_captions(n, seed)

    def __call__(
        self,
        prompts: list[str],
        latents: torch.Tensor,
        *,
        resolution: int,
        output_size: int,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> GenerationOutput:
        """prompts: B captions; latents: [B, K, LATENT_DIM] -> images uint8 [B, K, S, S, 3]."""
        if latents.dim() != 3 or latents.shape[0] != len(prompts) or latents.shape[2] != LATENT_DIM:
            raise ValueError(f"latents must be [{len(prompts)}, K, {LATENT_DIM}], got {tuple(latents.shape)}")
        batch, k = latents.shape[:2]
        fidelity = self.default_guidance if guidance_scale is None else guidance_scale
        grey = render_batch([p for p in prompts for _ in range(k)], latents.reshape(batch * k, LATENT_DIM).numpy(),
                            resolution, fidelity)  # fmt: skip
        rgb = torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1)
        return GenerationOutput(to_uint8_images(rgb, output_size).reshape(batch, k, output_size, output_size, 3))
