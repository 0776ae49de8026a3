"""The text that comes with a drawing: danbooru-style tags (with the noise presets of :class:`TagNoise`) and
free-text captions (:func:`describe` also returns the facts a caption asserts)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from .character import ACCESSORIES, TOP_COLORS, Character, _ALL_STYLE_LABELS, _check_style, _choice, synthetic_schema

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

    def say(into: list[str], phrase: str, *stated: tuple[str, str, bool], short: str | None = None) -> None:
        """``phrase`` in a part of the sentence, its terse form, and the facts it states."""
        into.append(phrase)
        shorts.append(phrase.removeprefix("a ") if short is None else short)
        facts.extend(stated)

    if "hair_color" in chosen and "hair_length" in chosen and rng.random() < 0.6:
        phrase = f"{_choice(rng, _LENGTH_WORDS[character.hair_length])} {_color_word(rng, character.hair_color)} hair"
        say(withs, phrase, ("hair_length", character.hair_length, True), ("hair_color", character.hair_color, True))
    else:
        if "hair_color" in chosen:
            say(withs, f"{_color_word(rng, character.hair_color)} hair", ("hair_color", character.hair_color, True))
        if "hair_length" in chosen:
            phrase = f"{_choice(rng, _LENGTH_WORDS[character.hair_length])} hair"
            say(withs, phrase, ("hair_length", character.hair_length, True))
    if "eye_color" in chosen:
        say(withs, f"{character.eye_color} eyes", ("eye_color", character.eye_color, True))
    if "top_color" in chosen:
        phrase = _choice(rng, (f"a {character.top_color} shirt", f"{character.top_color} clothes"))
        say(wears, phrase, ("top_color", character.top_color, True))
    if "accessories" in chosen:
        worn = list(character.accessories)
        absent = [a for a in ACCESSORIES if a not in worn]
        for acc in worn:
            if rng.random() < 0.8:
                say(wears, _choice(rng, _ACCESSORY_WORDS[acc]), ("accessories", acc, True))
        if absent and (not worn or rng.random() < 0.3):
            acc = _choice(rng, absent)
            phrase = _choice(rng, _ACCESSORY_WORDS[acc])
            say(nots, phrase, ("accessories", acc, False), short=f"no {phrase.removeprefix('a ')}")
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
