"""Procedural characters with known attributes: the embedded sample data, the test fixtures and the
accuracy benchmark.

Every image is drawn from a :class:`Character` whose attributes are sampled independently, so accuracy
per attribute is measurable and no attribute can be guessed from another. Nuisance factors vary on
purpose: background (white, flat colour, gradient, blocky noise), skin tone, position (+-8% of the
side), size (0.85-1.1), and the colours of the hat, bow and scarf.

Attributes (label names are those of ``schemas/default.yaml``; the subset drawn here is
``schemas/synthetic.yaml``, load it with ``load_schema("synthetic")``):

==============  ===========================================================================
hair_color      black brown blonde red orange pink purple blue green white
hair_length     short (ends at the ears), medium (to the shoulders), long (down past the
                bottom of the picture, framing the body, with locks over the shoulders)
eye_color       brown red yellow green blue purple pink (large anime eyes)
top_color       black white red yellow green blue purple pink
accessories     multi-label: glasses hat hair_bow scarf (each independent)
expression      neutral smile (open mouth) sad (frown and a tear) surprised (open "O" mouth)
art_style       from the style, see below
==============  ===========================================================================

Styles (``style`` column) and their ``art_style`` label:

* ``flat`` -> ``anime``: cel shading, dark outlines, hair highlight.
* ``chibi`` -> ``chibi``: flat colours, a head about 1.35x larger on a small body.
* ``sketch`` -> ``sketch``: grayscale line drawing. Colours are *genuinely invisible*: every region gets a
  gray drawn at random, independent of its colour, so hair, eye and top colours (and their brightness)
  cannot be read from the pixels. A sketch of a black-haired and a white-haired character drawn with the
  same random generator are byte-identical. Ground truth still holds the colours (the artist knows them).
* ``watercolor`` -> ``watercolor``: soft edges (blurred), hues shifted up to +-9 degrees per image,
  slightly washed-out colours, thin lines and paper texture. Colours stay recognisable, less reliably.
* ``pixel`` -> ``pixel_art``: drawn on a coarse grid (``max(32, size // 4)`` cells across) without
  anti-aliasing or inner outlines, scaled up with nearest neighbour.

An extra style, drawn only when named (``styles=[..., "lit"]``; not in :data:`STYLES`, the default mix, so not
in the demo model's training data):

* ``lit`` -> ``anime``: a ``flat`` drawing under coloured light, a blue night or an orange sunset cast
  (per-channel gain and offset, 85-100% strength) over the whole picture. Every colour in the pixels changes
  while tags and captions still name the character's own colours: a colour read from the pixels is wrong,
  often confidently.

Tags are danbooru-style strings (``"solo, long_hair, blonde_hair, blue_eyes, glasses, smile, ..."``):
a tag of each truth label (sometimes an alias that is true of the drawing: ``blond_hair``,
``round_eyewear``, ``:d``), plus filler tags that are true but carry no attribute (``looking_at_viewer``,
``white_background``, ``closed_mouth``, ...), shuffled, ``solo`` first. No filler tag is a tag of
``default.yaml`` except ``solo`` (true of every image), so parsing the tags with the default schema never
contradicts the truth. Noise is a :class:`TagNoise`; named presets (:data:`TAG_NOISE_PRESETS`):

* ``"clean"``: every truth tag, nothing wrong, nothing missing.
* ``"noisy"``: the same moderate noise for every style: 30% of attribute tags dropped, 15% replaced by a
  tag of another label of the same attribute, 5% spurious accessory tags, 5% of images without tags,
  30% of tag strings written with spaces instead of underscores.
* ``"mixed"``: source reliability depends on the image, for benchmarking a fusion policy:
  ``sketch`` tags are reliable (5% dropped, 2% wrong: the artist knows the colours the pixels hide);
  ``flat`` and ``chibi`` moderately reliable (15% dropped, 10% wrong, 2% without tags); ``watercolor``
  very noisy (35% dropped, 40% wrong, 15% spurious, 5% without tags); ``pixel`` images have no tags at
  all (``None``); ``lit`` (an extra style, see :data:`EXTRA_STYLE_LABELS`) as ``flat``.

Captions are free text mentioning a random subset (1-5) of the attributes in varied phrasings
(``"a pencil sketch of a girl with long hair, wearing glasses"``, ``"blonde hair, blue eyes, smiling"``),
sometimes with a negative (``"without a hat"``). Sketch captions never mention a colour.
:func:`describe` also returns the facts a caption asserts, for multi-positive contrastive training.

Datasets (:func:`generate`, :func:`build_benchmark`, :func:`sample_dataset`) have the columns ``id``
(``synth-<seed>-<index>``), ``image`` (``datasets.Image()``, PNG bytes; cast to ``Image(decode=False)``
for the pipeline), ``tags`` (string or null), ``caption``, ``style`` and ``truth`` (a struct typed by
``synthetic_schema().truth_feature()``: a ClassLabel per attribute, a list of them for accessories).

Determinism: every random choice for item ``i`` of seed ``s`` comes from generators keyed by
``(s, i, stream)``, one stream each for the attributes (then the style), the drawing, and the text (the
caption, then the tags). The same seed gives byte-identical PNGs whatever ``num_proc`` is (with the same
Pillow, numpy and zlib), changing the tag noise changes neither images nor captions, and
``generate(10)`` is the first 10 rows of ``generate(100)``.

Benchmark splits (:func:`build_benchmark`) are index ranges of one seed, so they are disjoint by
construction and do not move when another split's size changes: ``train`` starts at index 0,
``validation`` at 1e9, ``test`` at 2e9, ``test_<style>`` (one style only) at 3e9 + 1e8 * k, k the
position of the style in :data:`ALL_STYLES` (the default styles, then ``lit``).

Speed: about 2,000 images per CPU-second at 64 px (drawn at 2x, box-downsampled); ``num_proc`` splits
the work over processes. Typical use::

    from charattr_hf import synthetic
    ds = synthetic.generate(1000, seed=0, size=64, noise="noisy", num_proc=2)
    bench = synthetic.build_benchmark(seed=0, noise="mixed")   # train, validation, test, test_<style>
    ch = synthetic.sample_attributes(rng); img = synthetic.render(ch, "sketch", rng, size=224)

This module uses PIL and numpy only (it runs in forked ``datasets`` workers; no torch).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .schema import Schema, load_schema, normalize_tag

__all__ = [
    "STYLES",
    "STYLE_LABELS",
    "EXTRA_STYLE_LABELS",
    "ALL_STYLES",
    "HAIR_COLORS",
    "HAIR_LENGTHS",
    "EYE_COLORS",
    "TOP_COLORS",
    "ACCESSORIES",
    "EXPRESSIONS",
    "BACKGROUNDS",
    "TAG_NOISE_PRESETS",
    "SPLIT_OFFSETS",
    "Character",
    "Geometry",
    "TagNoise",
    "Caption",
    "synthetic_schema",
    "sample_attributes",
    "render",
    "render_with_geometry",
    "make_tags",
    "filler_tags",
    "make_caption",
    "caption",
    "describe",
    "features",
    "make_item",
    "encode_png",
    "tags_of",
    "labels_from_truth",
    "generate",
    "build_benchmark",
    "sample_dataset",
    "item_rng",
    "GENERATOR_VERSION",
]

RGB = tuple[int, int, int]

#: Part of every generated dataset's fingerprint: bump it whenever the same arguments draw other output.
GENERATOR_VERSION = 1

# ---------------------------------------------------------------------------------------------- palettes
# RGB values chosen far apart (a tiny model must separate them at 64 px) and typical of their name.

HAIR_COLORS: dict[str, RGB] = {
    "black": (38, 36, 44),
    "brown": (116, 68, 36),
    "blonde": (246, 214, 112),
    "red": (202, 32, 40),
    "orange": (244, 128, 32),
    "pink": (248, 150, 196),
    "purple": (128, 72, 192),
    "blue": (40, 88, 216),
    "green": (48, 156, 64),
    "white": (240, 240, 244),
}
HAIR_LENGTHS: tuple[str, ...] = ("short", "medium", "long")
EYE_COLORS: dict[str, RGB] = {
    "brown": (120, 66, 28),
    "red": (214, 30, 40),
    "yellow": (236, 196, 24),
    "green": (40, 170, 64),
    "blue": (36, 96, 232),
    "purple": (140, 64, 208),
    "pink": (246, 104, 176),
}
TOP_COLORS: dict[str, RGB] = {
    "black": (36, 36, 40),
    "white": (244, 244, 244),
    "red": (206, 36, 44),
    "yellow": (244, 206, 40),
    "green": (44, 150, 70),
    "blue": (42, 92, 210),
    "purple": (130, 66, 190),
    "pink": (244, 146, 190),
}
#: Accessories and the independent probability that a character wears each.
ACCESSORIES: dict[str, float] = {"glasses": 0.3, "hat": 0.25, "hair_bow": 0.3, "scarf": 0.2}
EXPRESSIONS: tuple[str, ...] = ("neutral", "smile", "sad", "surprised")
#: Background kinds and their probabilities. Not a schema attribute; tags mention it (white_background...).
BACKGROUNDS: dict[str, float] = {"white": 0.2, "simple": 0.3, "gradient": 0.25, "noise": 0.25}

#: Drawing styles and the ``art_style`` label each one is.
STYLE_LABELS: dict[str, str] = {
    "flat": "anime",
    "sketch": "sketch",
    "watercolor": "watercolor",
    "pixel": "pixel_art",
    "chibi": "chibi",
}
STYLES: tuple[str, ...] = tuple(STYLE_LABELS)

#: Styles drawn only when asked for by name (not in the default mix, nor in the demo model's training data),
#: and the ``art_style`` label each one is. ``lit``: a flat drawing under coloured light (a blue night or an
#: orange sunset cast) that changes every colour in the pixels; the tags and captions still give the
#: character's own colours, as an artist's tags would. A model that reads colours from pixels is confidently
#: wrong there: the case a fusion policy must learn to recognise.
EXTRA_STYLE_LABELS: dict[str, str] = {"lit": "anime"}
ALL_STYLES: tuple[str, ...] = STYLES + tuple(EXTRA_STYLE_LABELS)
_ALL_STYLE_LABELS: dict[str, str] = {**STYLE_LABELS, **EXTRA_STYLE_LABELS}
#: Light casts of the ``lit`` style: per-channel gain and offset.
_LIGHT_CASTS = (((0.30, 0.38, 0.70), (5.0, 8.0, 25.0)), ((1.0, 0.62, 0.35), (40.0, 10.0, 0.0)))

_SKIN_TONES = np.array(
    [(255, 228, 208), (244, 204, 174), (226, 176, 136), (186, 132, 94), (130, 88, 60)], dtype=np.float64
)
_HAT_COLORS: tuple[RGB, ...] = (
    (60, 50, 70), (150, 110, 70), (230, 220, 190), (200, 60, 60), (60, 90, 160), (90, 140, 90), (240, 240, 240)
)
_BOW_COLORS: tuple[RGB, ...] = (
    (230, 40, 70), (250, 130, 180), (250, 250, 250), (40, 60, 160), (30, 30, 30), (250, 210, 60)
)
_SCARF_COLORS: tuple[RGB, ...] = (
    (200, 40, 50), (60, 110, 200), (240, 200, 80), (90, 160, 90), (230, 230, 230), (140, 90, 160)
)
_GLASSES_COLORS: tuple[RGB, ...] = ((30, 28, 34), (90, 50, 30), (110, 20, 30), (30, 40, 100))
_LINE: RGB = (52, 36, 44)
_MOUTH: RGB = (150, 46, 58)
_TEAR: RGB = (150, 205, 250)
_WHITE: RGB = (255, 255, 255)

# Random numbers the renderer draws per image, always the same count so that the image of one character
# depends only on what is drawn (and a sketch of two colourings is identical).
_N_UNIFORM = 32
_NOISE_GRID = 6
_PAPER_GRID = 16


# ---------------------------------------------------------------------------------------------- character
@dataclass(frozen=True)
class Character:
    """The attributes of one drawn character (label names of ``default.yaml``) plus its background."""

    hair_color: str
    hair_length: str
    eye_color: str
    top_color: str
    accessories: tuple[str, ...] = ()
    expression: str = "neutral"
    background: str = "white"

    def __post_init__(self) -> None:
        checks = (
            ("hair_color", self.hair_color, HAIR_COLORS),
            ("hair_length", self.hair_length, HAIR_LENGTHS),
            ("eye_color", self.eye_color, EYE_COLORS),
            ("top_color", self.top_color, TOP_COLORS),
            ("expression", self.expression, EXPRESSIONS),
            ("background", self.background, BACKGROUNDS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name}={value!r} cannot be drawn; choose one of {list(allowed)}")
        bad = [a for a in self.accessories if a not in ACCESSORIES]
        if bad:
            raise ValueError(f"accessories {bad} cannot be drawn; choose from {list(ACCESSORIES)}")
        # canonical order, no duplicates: two equal characters compare and hash equal
        object.__setattr__(self, "accessories", tuple(a for a in ACCESSORIES if a in self.accessories))

    def labels(self, style: str) -> dict[str, Any]:
        """Label names per attribute of the synthetic schema (accessories as a list)."""
        _check_style(style)
        return {
            "hair_color": self.hair_color,
            "hair_length": self.hair_length,
            "eye_color": self.eye_color,
            "top_color": self.top_color,
            "accessories": list(self.accessories),
            "expression": self.expression,
            "art_style": _ALL_STYLE_LABELS[style],
        }

    def truth(self, style: str, schema: Schema | None = None) -> dict[str, Any]:
        """Label indices per attribute, as stored in the ``truth`` column (``schema``: synthetic)."""
        schema = schema or synthetic_schema()
        out: dict[str, Any] = {}
        for name, value in self.labels(style).items():
            if name not in schema:
                continue
            attr = schema[name]
            out[name] = [attr.index(v) for v in value] if attr.multi_label else attr.index(value)
        return out


def _check_style(style: str) -> None:
    if style not in _ALL_STYLE_LABELS:
        raise ValueError(f"unknown style {style!r}; styles: {list(ALL_STYLES)}")


@lru_cache(maxsize=1)
def synthetic_schema() -> Schema:
    """The shipped ``synthetic`` schema: the attributes and labels this generator draws."""
    return load_schema("synthetic")


def item_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one item and stream; independent of everything else generated."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


#: Random streams of one item: attributes then style; drawing; text (caption, then tags).
_STREAM_ATTRS, _STREAM_RENDER, _STREAM_TEXT = range(3)


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def sample_attributes(rng: np.random.Generator) -> Character:
    """Draw every attribute independently: uniform over labels, accessories each with its own rate."""
    hair = _choice(rng, list(HAIR_COLORS))
    length = _choice(rng, HAIR_LENGTHS)
    eyes = _choice(rng, list(EYE_COLORS))
    top = _choice(rng, list(TOP_COLORS))
    worn = rng.random(len(ACCESSORIES))
    accessories = tuple(a for a, u in zip(ACCESSORIES, worn) if u < ACCESSORIES[a])
    expression = _choice(rng, EXPRESSIONS)
    bg_names = list(BACKGROUNDS)
    background = bg_names[int(rng.choice(len(bg_names), p=np.array(list(BACKGROUNDS.values()))))]
    return Character(hair, length, eyes, top, accessories, expression, background)


# ---------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where the character is, in fractions of the image side (multiply by the size for pixels).

    ``cx, cy``: head centre; ``r``: head half-width; ``ry``: head half-height; ``y_sh``: shoulder line;
    ``sh_w``/``bot_w``: half-widths of the upper body at the shoulders and the bottom. The ``*_probe``
    methods give pixel positions inside regions that show exactly one attribute's colour, whatever else is
    drawn: tests sample them to check that the picture agrees with the truth.
    """

    cx: float
    cy: float
    r: float
    ry: float
    y_sh: float
    sh_w: float
    bot_w: float
    size: int

    def _px(self, x: float, y: float) -> tuple[int, int]:
        return int(x * self.size), int(y * self.size)

    def hair_probe(self) -> tuple[int, int]:
        """Middle of the left lock of hair beside the face (never covered by hat, bow or glasses)."""
        return self._px(self.cx - 0.89 * self.r, self.cy + 0.1 * self.ry)

    def eye_probes(self) -> list[tuple[int, int]]:
        """Lower middle of each iris (away from the highlight)."""
        ey = self.cy + 0.22 * self.r
        return [self._px(self.cx + s * 0.4 * self.r + 0.02 * self.r, ey + 0.1 * self.r) for s in (-1, 1)]

    def top_probe(self) -> tuple[int, int]:
        """Upper body, left of the middle: below collar and scarf, beside the scarf's tail."""
        return self._px(self.cx - 0.25 * self.r, self.y_sh + 0.6 * self.r)

    def skin_probe(self) -> tuple[int, int]:
        """Cheek, between the eye and the mouth."""
        return self._px(self.cx + 0.42 * self.r, self.cy + 0.62 * self.ry)


def _geometry(style: str, u: Sequence[float], size: int) -> Geometry:
    scale = 0.85 + 0.25 * u[0]
    dx, dy = (u[1] - 0.5) * 0.16, (u[2] - 0.5) * 0.16
    if style == "chibi":
        r = 0.27 * scale
        ry = 1.0 * r
        cy = 0.40 + dy
        return Geometry(0.5 + dx, cy, r, ry, cy + ry + 0.02 * scale, 0.55 * r, 0.7 * r, size)
    r = 0.2 * scale
    ry = 1.08 * r
    cy = 0.40 + dy
    return Geometry(0.5 + dx, cy, r, ry, cy + ry + 0.07 * scale, 1.0 * r, 1.12 * r, size)


# ---------------------------------------------------------------------------------------------- colours
def _mul(c: Sequence[float], k: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * k)))) for v in c)  # type: ignore[return-value]


def _mix(c: Sequence[float], d: Sequence[float], t: float) -> RGB:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c, d))  # type: ignore[return-value]


def _gray(v: float) -> RGB:
    g = int(max(0, min(255, round(v))))
    return (g, g, g)


def _watercolor(c: RGB, hue_shift: float) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in c))
    r, g, b = colorsys.hsv_to_rgb((h + hue_shift) % 1.0, s * 0.92, v)
    return _mix((r * 255, g * 255, b * 255), (252, 250, 244), 0.08)


def _colors(ch: Character, style: str, u: Sequence[float]) -> dict[str, RGB]:
    """Colour of every drawn role for this style. Sketch colours depend on ``u`` only, never on ``ch``."""
    if style == "sketch":
        hair = 150 + 70 * u[10]
        top = 165 + 85 * u[11]
        return {
            "hair": _gray(hair), "hair_shade": _gray(hair * 0.86), "hair_hi": _gray(hair + 30),
            "skin": _gray(252), "skin_shade": _gray(232),
            "iris": _gray(55 + 60 * u[12]), "sclera": _WHITE,
            "top": _gray(top), "top_shade": _gray(top * 0.86),
            "hat": _gray(120 + 120 * u[13]), "hat_band": _gray(80 + 60 * u[14]),
            "bow": _gray(110 + 140 * u[15]), "scarf": _gray(130 + 110 * u[16]),
            "glasses": _gray(45), "mouth": _gray(120), "tear": _gray(235), "line": _gray(55),
        }
    skin_pos = u[5] * (len(_SKIN_TONES) - 1)
    k = min(int(skin_pos), len(_SKIN_TONES) - 2)
    skin = tuple(_SKIN_TONES[k] + (_SKIN_TONES[k + 1] - _SKIN_TONES[k]) * (skin_pos - k))
    hair = HAIR_COLORS[ch.hair_color]
    top = TOP_COLORS[ch.top_color]
    cols: dict[str, RGB] = {
        "hair": hair, "hair_shade": _mul(hair, 0.84), "hair_hi": _mix(hair, _WHITE, 0.45),
        "skin": _mul(skin, 1.0), "skin_shade": _mul(skin, 0.86),
        "iris": EYE_COLORS[ch.eye_color], "sclera": _WHITE,
        "top": top, "top_shade": _mul(top, 0.8) if ch.top_color != "black" else (60, 60, 70),
        "hat": _HAT_COLORS[int(u[6] * len(_HAT_COLORS))],
        "hat_band": _BOW_COLORS[int(u[7] * len(_BOW_COLORS))],
        "bow": _BOW_COLORS[int(u[8] * len(_BOW_COLORS))],
        "scarf": _SCARF_COLORS[int(u[9] * len(_SCARF_COLORS))],
        "glasses": _GLASSES_COLORS[int(u[17] * len(_GLASSES_COLORS))],
        "mouth": _MOUTH, "tear": _TEAR, "line": _LINE,
    }
    if ch.hair_color == "black":
        cols["hair_shade"] = (24, 22, 30)
    if style == "watercolor":
        shift = (u[18] - 0.5) * 0.05
        cols = {k: (_watercolor(v, shift) if k not in ("sclera",) else v) for k, v in cols.items()}
        cols["line"] = (96, 80, 92)
    return cols


def _background(ch: Character, style: str, u: Sequence[float], grid: np.ndarray, side: int) -> Image.Image:
    """White, flat colour, two-colour gradient or blocky noise; gray paper tones for sketches."""
    def pick(a: float, b: float, c: float) -> np.ndarray:
        if style == "sketch":
            return np.full(3, 228.0 + 27.0 * c)
        r, g, bl = colorsys.hsv_to_rgb(a, 0.08 + 0.4 * b, 0.62 + 0.38 * c)
        return np.array([r, g, bl]) * 255.0

    if ch.background == "white":
        return Image.new("RGB", (side, side), (255, 255, 255) if style != "sketch" else (253, 253, 253))
    c1 = pick(u[20], u[21], u[22])
    if ch.background == "simple":
        return Image.new("RGB", (side, side), tuple(int(v) for v in c1))
    if ch.background == "gradient":
        # a linear ramp at low resolution; bilinear upscaling keeps it linear and costs little
        c2 = pick(u[23], u[24], u[25])
        angle = u[26] * math.pi / 2
        ca, sa = math.cos(angle), math.sin(angle)
        ramp = (ca * _RAMP[:, None] + sa * _RAMP[None, :]) / (ca + sa)
        arr = c1[None, None, :] + (c2 - c1)[None, None, :] * ramp[:, :, None]
        small = Image.fromarray(arr.astype(np.uint8), "RGB")
        return small.resize((side, side), Image.Resampling.BILINEAR)
    # blocky noise around the base colour; smooth or hard-edged
    arr = np.clip(c1[None, None, :] + (grid[:, :, None] - 0.5) * 90.0, 0, 255).astype(np.uint8)
    if style == "sketch":
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    small = Image.fromarray(arr, "RGB")
    return small.resize((side, side), Image.Resampling.NEAREST if u[27] < 0.5 else Image.Resampling.BILINEAR)


_RAMP = np.linspace(0.0, 1.0, 16)
_SOFTEN = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1], 16)
_UPPER_HALF_13 = (np.cos(np.linspace(math.pi, 2 * math.pi, 13)), np.sin(np.linspace(math.pi, 2 * math.pi, 13)))
_UPPER_HALF_15 = (np.cos(np.linspace(math.pi, 2 * math.pi, 15)), np.sin(np.linspace(math.pi, 2 * math.pi, 15)))
_HEAD_T = np.linspace(0, 2 * math.pi, 28, endpoint=False)
_HEAD_COS = np.cos(_HEAD_T) * np.where(np.sin(_HEAD_T) > 0, 1.0 - 0.28 * np.sin(_HEAD_T), 1.0)  # narrower chin
_HEAD_SIN = np.sin(_HEAD_T)


# ---------------------------------------------------------------------------------------------- drawing
def _points(
    cx: float, cy: float, rx: float, ry: float, table: tuple[np.ndarray, np.ndarray]
) -> list[tuple[float, float]]:
    return list(zip((cx + rx * table[0]).tolist(), (cy + ry * table[1]).tolist()))


def _zigzag(x0: float, x1: float, y_low: float, y_high: float, teeth: int) -> list[tuple[float, float]]:
    """Points from x0 to x1 alternating between y_low (tips) and y_high (roots)."""
    pts = []
    for i in range(2 * teeth + 1):
        x = x0 + (x1 - x0) * i / (2 * teeth)
        pts.append((x, y_low if i % 2 == 0 else y_high))
    return pts


def _poly(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: RGB | None, line: RGB | None, lw: int) -> None:
    # a filled polygon plus a closed wide line: the same look as polygon(width=lw), about 3x faster
    if fill is not None:
        d.polygon(pts, fill=fill)
    if line is not None:
        d.line(pts + [pts[0]], fill=line, width=lw)


def _draw_character(img: Image.Image, g: Geometry, ch: Character, col: dict[str, RGB], lw: int, detail: bool) -> None:
    """Draw ``ch`` on ``img`` (whose side is the drawing resolution). Order: back to front."""
    side = img.size[0]
    d = ImageDraw.Draw(img)
    cx, cy, R, ry, ysh = g.cx * side, g.cy * side, g.r * side, g.ry * side, g.y_sh * side
    bottom = side * 1.06
    line = col["line"]
    # on a coarse grid, outlines inside the hair would leave no hair colour: outline the silhouette only
    inner_line = line if detail else None
    length = ch.hair_length

    # back hair: a dome behind the head; medium continues to the shoulders, long past the bottom
    dome = _points(cx, cy - 0.1 * ry, 1.19 * R, 1.07 * ry, _UPPER_HALF_13)
    if length == "short":
        back = dome + [(cx + 1.17 * R, cy + 0.35 * ry), (cx - 1.17 * R, cy + 0.35 * ry)]
    else:
        end, spread = (ysh + 0.3 * R, 1.32 * R) if length == "medium" else (bottom, 1.85 * R)
        back = dome + [(cx + spread, end)] + _zigzag(cx + spread, cx - spread, end, end - 0.22 * R, 5)[1:-1]
        back += [(cx - spread, end)]
    _poly(d, back, col["hair_shade"], line, lw)

    # neck and upper body
    neck = (cx - 0.27 * R, cy + 0.5 * ry, cx + 0.27 * R, ysh + 0.15 * R)
    d.rectangle(neck, fill=col["skin_shade"], outline=line, width=lw)
    sw, bw = g.sh_w * side, g.bot_w * side
    body = [(cx - 0.4 * sw, ysh), (cx + 0.4 * sw, ysh), (cx + sw, ysh + 0.28 * R), (cx + bw, bottom),
            (cx - bw, bottom), (cx - sw, ysh + 0.28 * R)]
    d.polygon(body, fill=col["top"])
    d.polygon([(cx + 0.55 * sw, ysh + 0.12 * R), (cx + sw, ysh + 0.28 * R), (cx + bw, bottom), (cx + 0.7 * bw, bottom)],
              fill=col["top_shade"])
    _poly(d, body, None, line, lw)
    collar = 0.3 * sw
    _poly(d, [(cx - collar, ysh), (cx + collar, ysh), (cx, ysh + 0.3 * R)], col["skin"], line, lw)
    if "scarf" in ch.accessories:
        _poly(d, [(cx - 0.62 * R, ysh - 0.14 * R), (cx + 0.62 * R, ysh - 0.14 * R), (cx + 0.62 * R, ysh + 0.2 * R),
                  (cx - 0.62 * R, ysh + 0.2 * R)], col["scarf"], line, lw)
        _poly(d, [(cx + 0.2 * R, ysh + 0.1 * R), (cx + 0.5 * R, ysh + 0.1 * R), (cx + 0.6 * R, ysh + 0.85 * R),
                  (cx + 0.3 * R, ysh + 0.85 * R)], col["scarf"], line, lw)

    # head: round top, narrower chin
    _poly(d, _points(cx, cy, R, ry, (_HEAD_COS, _HEAD_SIN)), col["skin"], line, lw)

    # eyes
    ey = cy + 0.22 * R
    for sgn in (-1, 1):
        ex = cx + sgn * 0.4 * R
        d.ellipse((ex - 0.22 * R, ey - 0.27 * R, ex + 0.22 * R, ey + 0.27 * R), fill=col["sclera"])
        d.ellipse((ex - 0.17 * R, ey - 0.22 * R, ex + 0.17 * R, ey + 0.27 * R), fill=col["iris"])
        if detail:
            d.ellipse((ex - 0.12 * R, ey - 0.16 * R, ex - 0.0 * R, ey - 0.04 * R), fill=_WHITE)
        d.line([(ex - sgn * 0.05 * R - 0.26 * R, ey - 0.25 * R), (ex - sgn * 0.05 * R + 0.26 * R, ey - 0.25 * R)],
               fill=line, width=max(lw, int(0.1 * R)))
    # mouth by expression
    my = cy + 0.66 * ry
    mw = max(lw, int(0.06 * R))
    if ch.expression == "neutral":
        d.line([(cx - 0.14 * R, my), (cx + 0.14 * R, my)], fill=line, width=mw)
    elif ch.expression == "smile":
        box = (cx - 0.24 * R, my - 0.2 * R, cx + 0.24 * R, my + 0.2 * R)
        d.chord(box, 0, 180, fill=col["mouth"], outline=line, width=lw)
    elif ch.expression == "sad":
        d.arc((cx - 0.18 * R, my - 0.02 * R, cx + 0.18 * R, my + 0.26 * R), 200, 340, fill=line, width=mw)
        ex = cx - 0.4 * R
        tear = (ex - 0.08 * R, ey + 0.3 * R, ex + 0.08 * R, ey + 0.54 * R)
        d.ellipse(tear, fill=col["tear"], outline=line, width=max(1, lw // 2))
    else:  # surprised
        box = (cx - 0.13 * R, my - 0.17 * R, cx + 0.13 * R, my + 0.17 * R)
        d.ellipse(box, fill=col["mouth"], outline=line, width=lw)

    # locks beside the face: to the cheek (short), the chin (medium), over the shoulders (long)
    lock_end = {"short": cy + 0.35 * ry, "medium": cy + 1.05 * ry, "long": ysh + 1.1 * R}[length]
    for sgn in (-1, 1):
        lock = [(cx + sgn * 1.17 * R, cy - 0.35 * ry), (cx + sgn * 0.68 * R, cy - 0.35 * ry),
                (cx + sgn * 0.7 * R, lock_end - 0.3 * R), (cx + sgn * 0.9 * R, lock_end),
                (cx + sgn * 1.17 * R, lock_end - 0.35 * R)]
        _poly(d, lock, col["hair"], inner_line, lw)
    # bangs: the top of the head with a zigzag fringe above the eyes
    bangs = _points(cx, cy - 0.12 * ry, 1.17 * R, 0.98 * ry, _UPPER_HALF_15)
    bangs += _zigzag(cx + 1.0 * R, cx - 1.0 * R, cy - 0.08 * ry, cy - 0.42 * ry, 4)
    _poly(d, bangs, col["hair"], inner_line, lw)
    if detail:
        shine = (cx - 0.8 * R, cy - 0.98 * ry, cx + 0.8 * R, cy - 0.2 * ry)
        d.arc(shine, 205, 250, fill=col["hair_hi"], width=max(lw, int(0.1 * R)))
        for sgn in (-1, 1):
            strand = [(cx + sgn * 0.3 * R, cy - 0.8 * ry), (cx + sgn * 0.42 * R, cy - 0.45 * ry)]
            d.line(strand, fill=col["hair_shade"], width=lw)
    # eyebrows (drawn through the fringe, as in anime; too small for the pixel grid)
    for sgn in (-1, 1) if detail else ():
        ex = cx + sgn * 0.4 * R
        inner, outer = ex - sgn * 0.17 * R, ex + sgn * 0.17 * R
        if ch.expression == "sad":
            yi, yo = ey - 0.58 * R, ey - 0.42 * R
        elif ch.expression == "surprised":
            yi, yo = ey - 0.62 * R, ey - 0.6 * R
        else:
            yi, yo = ey - 0.45 * R, ey - 0.47 * R
        d.line([(inner, yi), (outer, yo)], fill=line, width=lw)

    # accessories in front
    if "glasses" in ch.accessories:
        gw = max(lw, int(0.09 * R))
        for sgn in (-1, 1):
            ex = cx + sgn * 0.4 * R
            d.ellipse((ex - 0.3 * R, ey - 0.3 * R, ex + 0.3 * R, ey + 0.3 * R), outline=col["glasses"], width=gw)
        d.line([(cx - 0.1 * R, ey - 0.08 * R), (cx + 0.1 * R, ey - 0.08 * R)], fill=col["glasses"], width=gw)
    if "hat" in ch.accessories:
        crown = _points(cx, cy - 0.62 * ry, 0.82 * R, 0.9 * ry, _UPPER_HALF_13)
        _poly(d, crown, col["hat"], line, lw)
        band = (cx - 0.8 * R, cy - 0.82 * ry, cx + 0.8 * R, cy - 0.64 * ry)
        d.rectangle(band, fill=col["hat_band"], outline=line, width=lw)
        d.ellipse((cx - 1.5 * R, cy - 0.75 * ry, cx + 1.5 * R, cy - 0.45 * ry), fill=col["hat"], outline=line, width=lw)
    if "hair_bow" in ch.accessories:
        bx, by = cx + 0.9 * R, cy - 0.58 * ry
        for sgn in (-1, 1):
            wing = [(bx, by), (bx + sgn * 0.46 * R, by - 0.3 * R), (bx + sgn * 0.46 * R, by + 0.3 * R)]
            _poly(d, wing, col["bow"], line, lw)
        d.ellipse((bx - 0.12 * R, by - 0.12 * R, bx + 0.12 * R, by + 0.12 * R), fill=col["bow"], outline=line, width=lw)


def _draw_params(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # always the same draws, whatever the character and style
    return rng.random(_N_UNIFORM), rng.random((_NOISE_GRID, _NOISE_GRID)), rng.random((_PAPER_GRID, _PAPER_GRID))


def _pixel_grid(size: int) -> int:
    return max(32, size // 4)


def render_with_geometry(
    character: Character, style: str = "flat", rng: np.random.Generator | int | None = None, size: int = 64
) -> tuple[Image.Image, Geometry]:
    """Draw ``character`` in ``style`` as a ``size`` x ``size`` RGB image; also return where it is."""
    _check_style(style)
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    size = int(size)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    u_arr, grid, paper = _draw_params(rng)
    u = u_arr.tolist()  # plain floats: faster to index, and a Geometry of plain floats
    g = _geometry(style, u, size)
    col = _colors(character, style, u)
    if style == "pixel":
        side, detail = _pixel_grid(size), False
    else:
        # draw at 2x and box-downsample: cheap anti-aliasing (at large sizes 1x is smooth enough)
        side, detail = (size * 2 if size <= 160 else size), True
    lw = max(1, round(side / 64))
    img = _background(character, style, u, grid, side)
    _draw_character(img, g, character, col, lw if style != "watercolor" else max(1, lw // 2), detail)
    if side == 2 * size:
        img = img.reduce(2)
    elif side != size:
        img = img.resize((size, size), Image.Resampling.NEAREST)
    if style == "watercolor":
        # soft edges (a 3x3 binomial blur, per 64 px), then paper texture (darkens by up to 6%)
        img = img.filter(_SOFTEN) if size <= 96 else img.filter(ImageFilter.GaussianBlur(radius=size / 128))
        tex = Image.fromarray((240 + 15 * paper).astype(np.uint8), "L").resize((size, size), Image.Resampling.BILINEAR)
        img = ImageChops.multiply(img, Image.merge("RGB", (tex, tex, tex)))
    if style == "sketch":
        img = img.convert("L").convert("RGB")  # exactly gray: no chroma can leak
    if style == "lit":
        gain, offset = _LIGHT_CASTS[int(u[19] * len(_LIGHT_CASTS))]
        strength = 0.85 + 0.15 * u[3]
        gain = [1.0 + (k - 1.0) * strength for k in gain]
        arr = np.asarray(img, dtype=np.float32) * np.array(gain, dtype=np.float32) + np.array(offset, dtype=np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img, g


def render(
    character: Character, style: str = "flat", rng: np.random.Generator | int | None = None, size: int = 64
) -> Image.Image:
    """Draw ``character`` in ``style`` as a ``size`` x ``size`` RGB PIL image (see the module docstring)."""
    return render_with_geometry(character, style, rng, size)[0]


# ---------------------------------------------------------------------------------------------- tags
@dataclass(frozen=True)
class TagNoise:
    """How tags deviate from the truth. Rates are probabilities per attribute tag unless said otherwise.

    ``styles`` overrides the whole setting for images of a style (e.g. pixel images without tags).
    """

    dropout: float = 0.0  #: an attribute's tag is left out
    wrong: float = 0.0  #: an attribute's tag is replaced by a tag of another label of that attribute
    spurious: float = 0.0  #: per absent accessory: its tag is added anyway
    missing: float = 0.0  #: per image: no tags at all (``None``)
    aliases: float = 0.25  #: an alias is used (``blond_hair`` for blonde) instead of the first tag
    spaces: float = 0.0  #: per image: tags written with spaces instead of underscores
    filler: bool = True  #: add true tags without attribute meaning (solo, looking_at_viewer, ...)
    styles: Mapping[str, "TagNoise"] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("dropout", "wrong", "spurious", "missing", "aliases", "spaces"):
                v = getattr(self, f.name)
                if not 0.0 <= float(v) <= 1.0:
                    raise ValueError(f"TagNoise.{f.name} must be a probability in [0, 1], got {v!r}")
        for style in self.styles:
            _check_style(style)

    def for_style(self, style: str) -> "TagNoise":
        return self.styles.get(style, self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for fingerprints and dataset cards)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "styles"}
        out["styles"] = {k: v.to_dict() for k, v in sorted(self.styles.items())}
        return out


_FLAT_MIXED = TagNoise(dropout=0.15, wrong=0.10, spurious=0.03, missing=0.02)
TAG_NOISE_PRESETS: dict[str, TagNoise] = {
    "clean": TagNoise(),
    "noisy": TagNoise(dropout=0.3, wrong=0.15, spurious=0.05, missing=0.05, aliases=0.4, spaces=0.3),
    "mixed": TagNoise(
        dropout=0.15, wrong=0.10, spurious=0.03, missing=0.02,
        styles={
            "flat": _FLAT_MIXED,
            "chibi": _FLAT_MIXED,
            "sketch": TagNoise(dropout=0.05, wrong=0.02, spurious=0.01),
            "watercolor": TagNoise(dropout=0.35, wrong=0.40, spurious=0.15, missing=0.05, spaces=0.2),
            "pixel": TagNoise(missing=1.0),
            "lit": _FLAT_MIXED,
        },
    ),
}


def _resolve_noise(noise: "TagNoise | str | None") -> TagNoise:
    if noise is None:
        return TAG_NOISE_PRESETS["clean"]
    if isinstance(noise, TagNoise):
        return noise
    if noise in TAG_NOISE_PRESETS:
        return TAG_NOISE_PRESETS[noise]
    raise ValueError(f"unknown tag noise {noise!r}; presets: {list(TAG_NOISE_PRESETS)}, or pass a TagNoise")


_BACKGROUND_TAGS = {
    "white": ("white_background", "simple_background"),
    "simple": ("simple_background",),
    "gradient": ("gradient_background",),
    "noise": ("abstract_background",),
}


def filler_tags(character: Character, style: str, rng: np.random.Generator) -> list[str]:
    """True tags that say nothing about a schema attribute (``solo``: always one character)."""
    tags = ["solo", *_BACKGROUND_TAGS[character.background]]
    optional = ["looking_at_viewer", "upper_body", "bangs", "portrait"]
    keep = rng.random(len(optional)) < (0.7, 0.6, 0.5, 0.2)
    tags += [t for t, k in zip(optional, keep) if k]
    tags.append("open_mouth" if character.expression in ("smile", "surprised") else "closed_mouth")
    if style == "sketch" and rng.random() < 0.5:
        tags.append("traditional_media")
    return tags


# Tags true of the drawing, per label (first: the usual one). Every one is a tag of that label in the
# schema (checked by the tests); labels not listed use their schema's first tag. The schema lists more
# aliases (``sunglasses``, ``witch_hat``, ``evil_smile``...) that would describe something not drawn.
_TAG_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "hair_color": {"blonde": ("blonde_hair", "blond_hair"), "red": ("red_hair", "redhead")},
    "hair_length": {"medium": ("medium_hair", "shoulder-length_hair"), "long": ("long_hair", "very_long_hair")},
    "top_color": {c: (f"{c}_shirt", f"{c}_dress") for c in TOP_COLORS},
    "accessories": {"glasses": ("glasses", "round_eyewear"), "hair_bow": ("hair_bow", "hairbow")},
    "expression": {"smile": ("smile", ":d"), "sad": ("sad", "tears", "crying")},
    "art_style": {"sketch": ("sketch", "lineart", "graphite_(medium)")},
}


def _tag_choices(attr: str, label: Any) -> tuple[str, ...]:
    return _TAG_CHOICES.get(attr, {}).get(label.name) or label.tags[:1]


def make_tags(
    character: Character, style: str, rng: np.random.Generator, noise: "TagNoise | str | None" = "clean"
) -> str | None:
    """A danbooru-style tag string (``", "``-separated) for one image, or ``None`` when it has no tags."""
    schema = synthetic_schema()
    cfg = _resolve_noise(noise).for_style(style)
    u = rng.random(2)  # missing, spaces
    if u[0] < cfg.missing:
        return None
    tags: list[str] = []
    labels = character.labels(style)

    def pick(attr: str, label: Any) -> str:
        choices = _tag_choices(attr, label)
        if len(choices) > 1 and rng.random() < cfg.aliases:
            return choices[1 + int(rng.integers(len(choices) - 1))]
        return choices[0]

    for attr in schema:
        if attr.name not in labels:
            continue
        if attr.multi_label:
            present = set(labels[attr.name])
            absent = [lab for lab in attr.labels if lab.name not in present]
            for lab in attr.labels:
                if lab.name in present:
                    if rng.random() < cfg.dropout:
                        continue
                    if absent and rng.random() < cfg.wrong:
                        tags.append(pick(attr.name, _choice(rng, absent)))
                    else:
                        tags.append(pick(attr.name, lab))
                elif rng.random() < cfg.spurious:
                    tags.append(pick(attr.name, lab))
            continue
        if rng.random() < cfg.dropout:
            continue
        true = attr.labels[attr.index(labels[attr.name])]
        if rng.random() < cfg.wrong:
            true = _choice(rng, [lab for lab in attr.labels if lab.name != true.name and lab.tags])
        tags.append(pick(attr.name, true))
    if cfg.filler:
        tags += filler_tags(character, style, rng)
    tags = list(dict.fromkeys(tags))  # a wrong tag may repeat a true one
    order = rng.permutation(len(tags))
    tags = [tags[i] for i in order]
    if "solo" in tags:  # as on boorus, count tags come first
        tags.insert(0, tags.pop(tags.index("solo")))
    if not tags:
        return None
    if u[1] < cfg.spaces:
        tags = [t.replace("_", " ") for t in tags]
    return ", ".join(tags)


# ---------------------------------------------------------------------------------------------- captions
@dataclass(frozen=True)
class Caption:
    """A caption and the facts it asserts: ``(attribute, label, True)``, or ``False`` for "without X"."""

    text: str
    facts: tuple[tuple[str, str, bool], ...]


_SUBJECTS = ("girl", "character", "anime girl", "young woman", "person")
_STYLE_PHRASES = {
    "flat": ("an anime illustration of {}", "anime art of {}", "a cel-shaded drawing of {}"),
    "sketch": ("a pencil sketch of {}", "a line drawing of {}", "a monochrome sketch of {}", "a graphite sketch of {}"),
    "watercolor": ("a watercolor painting of {}", "a soft watercolor of {}", "watercolor art of {}"),
    "pixel": ("pixel art of {}", "a pixel art sprite of {}", "8-bit pixel art of {}"),
    "chibi": ("a chibi drawing of {}", "a cute chibi of {}", "chibi art of {}"),
    "lit": ("an anime illustration of {}", "anime art of {}", "a cel-shaded drawing of {}"),
}
_STYLE_SHORT = {"flat": "anime illustration", "sketch": "pencil sketch", "watercolor": "watercolor painting",
                "pixel": "pixel art", "chibi": "chibi drawing", "lit": "anime illustration"}
_LENGTH_WORDS = {"short": ("short",), "medium": ("medium-length", "shoulder-length"), "long": ("long", "very long")}
_COLOR_WORDS = {"blonde": ("blonde", "blond")}
_ACCESSORY_WORDS = {
    "glasses": ("glasses",),
    "hat": ("a hat",),
    "hair_bow": ("a hair bow", "a bow in her hair"),
    "scarf": ("a scarf",),
}
_EXPRESSION_WORDS = {
    "neutral": ("calm", "with a calm expression", "expressionless"),
    "smile": ("smiling", "with a smile", "happy and smiling"),
    "sad": ("sad", "looking sad", "crying"),
    "surprised": ("surprised", "looking surprised", "with a surprised face"),
}
_EXPRESSION_ADJ = {"neutral": "calm", "smile": "smiling", "sad": "sad", "surprised": "surprised"}


def _color_word(rng: np.random.Generator, label: str) -> str:
    return _choice(rng, _COLOR_WORDS.get(label, (label,)))


def describe(character: Character, style: str, rng: np.random.Generator) -> Caption:
    """A free-text caption of 1-5 random attributes, and the facts it states.

    Sketch captions never mention a colour (the colours are invisible in sketches). Phrasings match the
    prompts of ``schemas/synthetic.yaml`` ("blonde hair", "a red shirt", "wearing glasses").
    """
    _check_style(style)
    colours = style != "sketch"
    pool = ["hair_length", "expression", "art_style", "accessories"]
    if colours:
        pool += ["hair_color", "eye_color", "top_color"]
    k = int(rng.integers(1, min(5, len(pool)) + 1))
    chosen = {pool[i] for i in rng.permutation(len(pool))[:k]}
    facts: list[tuple[str, str, bool]] = []
    withs: list[str] = []  # "with ..."
    wears: list[str] = []  # "wearing ..."
    nots: list[str] = []  # "without ..."
    shorts: list[str] = []  # terse phrases for the tag-like form

    if "hair_color" in chosen and "hair_length" in chosen and rng.random() < 0.6:
        phrase = f"{_choice(rng, _LENGTH_WORDS[character.hair_length])} {_color_word(rng, character.hair_color)} hair"
        withs.append(phrase)
        shorts.append(phrase)
        facts += [("hair_length", character.hair_length, True), ("hair_color", character.hair_color, True)]
    else:
        if "hair_color" in chosen:
            phrase = f"{_color_word(rng, character.hair_color)} hair"
            withs.append(phrase)
            shorts.append(phrase)
            facts.append(("hair_color", character.hair_color, True))
        if "hair_length" in chosen:
            phrase = f"{_choice(rng, _LENGTH_WORDS[character.hair_length])} hair"
            withs.append(phrase)
            shorts.append(phrase)
            facts.append(("hair_length", character.hair_length, True))
    if "eye_color" in chosen:
        phrase = f"{character.eye_color} eyes"
        withs.append(phrase)
        shorts.append(phrase)
        facts.append(("eye_color", character.eye_color, True))
    if "top_color" in chosen:
        phrase = _choice(rng, (f"a {character.top_color} shirt", f"{character.top_color} clothes"))
        wears.append(phrase)
        shorts.append(phrase.removeprefix("a "))
        facts.append(("top_color", character.top_color, True))
    if "accessories" in chosen:
        worn = list(character.accessories)
        absent = [a for a in ACCESSORIES if a not in worn]
        for acc in worn:
            if rng.random() < 0.8:
                phrase = _choice(rng, _ACCESSORY_WORDS[acc])
                wears.append(phrase)
                shorts.append(phrase.removeprefix("a "))
                facts.append(("accessories", acc, True))
        if absent and (not worn or rng.random() < 0.3):
            acc = _choice(rng, absent)
            phrase = _choice(rng, _ACCESSORY_WORDS[acc])
            nots.append(phrase)
            shorts.append(f"no {phrase.removeprefix('a ')}")
            facts.append(("accessories", acc, False))
    expr_phrase = ""
    if "expression" in chosen:
        expr_phrase = _choice(rng, _EXPRESSION_WORDS[character.expression])
        shorts.append(expr_phrase.removeprefix("with a ").removeprefix("with "))
        facts.append(("expression", character.expression, True))
    if "art_style" in chosen:
        shorts.append(_STYLE_SHORT[style])
        facts.append(("art_style", _ALL_STYLE_LABELS[style], True))

    if rng.random() < 0.3 and shorts:
        order = rng.permutation(len(shorts))
        return Caption(", ".join(shorts[i] for i in order), tuple(facts))

    noun = _choice(rng, _SUBJECTS)
    if expr_phrase and rng.random() < 0.4:
        word = _EXPRESSION_ADJ[character.expression]
        subject = f"{'an' if word[0] in 'aeiou' else 'a'} {word} {noun}"
        expr_phrase = ""
    else:
        subject = f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    head = _choice(rng, _STYLE_PHRASES[style]).format(subject) if "art_style" in chosen else subject
    if withs:
        head += " with " + _join(withs)
    parts = [head]
    if wears:
        parts.append("wearing " + _join(wears))
    if nots:
        parts.append("without " + _join(nots))
    if expr_phrase:
        parts.append(expr_phrase)
    return Caption(", ".join(parts), tuple(facts))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(character: Character, style: str, rng: np.random.Generator) -> str:
    """The text of :func:`describe`; call it with fresh generators for as many captions as needed."""
    return describe(character, style, rng).text


#: Alias of :func:`make_caption` (a trainer draws a new caption per epoch: ``caption(ch, style, rng)``).
caption = make_caption


# ---------------------------------------------------------------------------------------------- datasets
def features(schema: Schema | None = None) -> Features:
    """The ``datasets.Features`` of generated datasets."""
    schema = schema or synthetic_schema()
    return Features(
        {
            "id": Value("string"),
            "image": ImageFeature(),
            "tags": Value("string"),
            "caption": Value("string"),
            "style": Value("string"),
            "truth": schema.truth_feature(),
        }
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(img: Image.Image) -> bytes:
    """A standard 8-bit RGB PNG (``Up`` filter, zlib level 1).

    Deterministic, and about 3x faster than ``Image.save`` for small images (the save path's overhead
    dominates at 64 px), within 10% of its size at the default level.
    """
    a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    h, w = a.shape[:2]
    flat = a.reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above (wrapping), the first row as is
    raw[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=raw[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def make_item(seed: int, index: int, size: int = 64, styles: Sequence[str] = STYLES,
              noise: "TagNoise | str | None" = "clean") -> dict[str, Any]:
    """One row of :func:`generate` (image as PNG bytes); a pure function of its arguments."""
    rng = item_rng(seed, index, _STREAM_ATTRS)
    ch = sample_attributes(rng)
    style = styles[0] if len(styles) == 1 else _choice(rng, styles)  # after the attributes: they do not depend on it
    img = render(ch, style, item_rng(seed, index, _STREAM_RENDER), size)
    text_rng = item_rng(seed, index, _STREAM_TEXT)
    text = make_caption(ch, style, text_rng)  # first: tag noise must not change captions
    return {
        "id": f"synth-{seed}-{index}",
        "image": {"bytes": encode_png(img), "path": None},
        "tags": make_tags(ch, style, text_rng, noise),
        "caption": text,
        "style": style,
        "truth": ch.truth(style),
    }


class _Generate:
    """Top-level, picklable batch function for ``Dataset.map``: index column -> generated rows."""

    def __init__(self, seed: int, size: int, styles: Sequence[str], noise: TagNoise):
        self.seed, self.size, self.styles, self.noise = seed, size, tuple(styles), noise

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        cols: dict[str, list] = {name: [] for name in ("id", "image", "tags", "caption", "style", "truth")}
        for index in batch["index"]:
            row = make_item(self.seed, index, self.size, self.styles, self.noise)
            for name, value in row.items():
                cols[name].append(value)
        return cols


def _check_args(seed: int, n: int, size: int, styles: Sequence[str] | None) -> tuple[str, ...]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    styles = tuple(STYLES if styles is None else styles)
    if not styles:
        raise ValueError("styles must name at least one style")
    for s in styles:
        _check_style(s)
    return styles


def generate(
    n: int,
    seed: int = 0,
    size: int = 64,
    styles: Sequence[str] | None = None,
    noise: "TagNoise | str | None" = "clean",
    num_proc: int = 1,
    start: int = 0,
) -> Dataset:
    """``n`` synthetic characters as a ``datasets.Dataset`` (columns: id, image, tags, caption, style, truth).

    Styles are drawn uniformly from ``styles`` (default: all of :data:`STYLES`). Row ``i`` is item
    ``start + i`` of ``seed``: the same arguments always give the same bytes, whatever ``num_proc``.
    """
    styles = _check_args(seed, n, size, styles)
    if not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")
    cfg = _resolve_noise(noise)
    if n == 0:  # map() of an empty dataset would drop the features
        feats = features()
        return Dataset.from_dict({name: [] for name in feats}, features=feats)
    index = Dataset.from_dict({"index": np.arange(start, start + n, dtype=np.int64)},
                              features=Features({"index": Value("int64")}))
    parts = ["synthetic", GENERATOR_VERSION, int(seed), int(start), int(n), int(size), styles, cfg.to_dict()]
    blob = json.dumps(parts, sort_keys=True)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    num_proc = max(1, min(int(num_proc or 1), n))
    return index.map(
        _Generate(int(seed), int(size), styles, cfg),
        batched=True,
        batch_size=256,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["index"],
        features=features(),
        new_fingerprint=fingerprint,
        desc=f"Drawing {n} synthetic characters",
    )


#: First index of each benchmark split (``test_<style>``: plus ``1e8 *`` the position in :data:`ALL_STYLES`).
SPLIT_OFFSETS: dict[str, int] = {
    "train": 0, "validation": 1_000_000_000, "test": 2_000_000_000, "test_style": 3_000_000_000
}
_SPLIT_CAPACITY = 100_000_000


def build_benchmark(
    seed: int = 0,
    size: int = 64,
    n_train: int = 10_000,
    n_validation: int = 1_000,
    n_test: int = 2_000,
    n_test_per_style: int = 500,
    noise: "TagNoise | str | None" = "mixed",
    styles: Sequence[str] | None = None,
    num_proc: int = 1,
) -> DatasetDict:
    """Fixed splits of one seed as a ``datasets.DatasetDict``: train, validation, test (all ``styles``
    mixed) and ``test_<style>`` per style (that style only). Sizes of 0 leave a split out.
    See the module docstring for the index ranges that make the splits disjoint and stable.
    """
    styles = _check_args(seed, 0, size, styles)
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    for name, n in [*sizes.items(), ("test_per_style", n_test_per_style)]:
        if not isinstance(n, (int, np.integer)) or not 0 <= n <= _SPLIT_CAPACITY:
            raise ValueError(f"n_{name} must be an integer in [0, {_SPLIT_CAPACITY}], got {n!r}")
    splits = {}
    for name, n in sizes.items():
        if n:
            splits[name] = generate(n, seed, size, styles, noise, num_proc, start=SPLIT_OFFSETS[name])
    if n_test_per_style:
        for style in styles:
            start = SPLIT_OFFSETS["test_style"] + _SPLIT_CAPACITY * ALL_STYLES.index(style)
            splits[f"test_{style}"] = generate(n_test_per_style, seed, size, [style], noise, num_proc, start=start)
    return DatasetDict(splits)


def sample_dataset(n: int = 256, seed: int = 0, size: int = 64, noise: "TagNoise | str | None" = "mixed") -> Dataset:
    """A small ready dataset of the default styles (the sample data of a run without an input dataset): the first ``n``
    images of the benchmark's ``test`` split, so that accuracy measured on it is measured on images the demo
    model (trained on ``train`` indices of seed 0) has not seen."""
    return generate(n, seed=seed, size=size, noise=noise, start=SPLIT_OFFSETS["test"])


def tags_of(schema: Schema) -> dict[str, tuple[str, str]]:
    """Map of normalised tag -> (attribute, label) for ``schema`` (for checks; a tag listed under two
    attributes maps to the later one)."""
    out: dict[str, tuple[str, str]] = {}
    for attr in schema:
        for lab in attr.labels:
            for t in lab.tags:
                out[normalize_tag(t)] = (attr.name, lab.name)
    return out


def labels_from_truth(truth: Mapping[str, Any], schema: Schema | None = None) -> dict[str, Any]:
    """Label names of a ``truth`` row (indices -> names), e.g. for printing."""
    schema = schema or synthetic_schema()
    out: dict[str, Any] = {}
    for name, value in truth.items():
        attr = schema[name]
        out[name] = [attr.labels[i].name for i in value] if attr.multi_label else attr.labels[value].name
    return out
