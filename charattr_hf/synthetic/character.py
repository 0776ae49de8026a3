"""The characters: attribute palettes, the styles and their ``art_style`` labels, :class:`Character`, and
sampling attributes from an item's own random generator (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ..schema import Schema, load_schema

RGB = tuple[int, int, int]

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
