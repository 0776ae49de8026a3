"""Explained filters: each removes rows for one stated reason with a threshold from the config.

A filter reads the annotated columns (``width``, ``height``, ``quality``, ``error``, attribute labels and
``<attribute>_confidence``) as whole columns and returns, per row, ``None`` (passes) or a reason string
``"<filter>: <what was measured> <comparison> <threshold>"``. All are vectorised over the table.

Filters (YAML names; :data:`FILTERS`):

==================  =====================================================================================
``too_small``        shorter side below ``min_side`` pixels
``aspect_ratio``     longer side / shorter side above ``max_ratio``
``monochrome``       colourfulness (Hasler-Suesstrunk, ``quality.colorfulness``) below ``max_colorfulness``
``low_contrast``     luma spread (``quality.contrast``) below ``min_contrast`` (blank or washed-out pictures)
``blurry``           ``quality.sharpness`` below ``min_sharpness``
``several_characters``  ``attribute`` (default ``character_count``) is one of ``labels`` (default
                     ``[two, group]``) with confidence at least ``min_confidence``
``no_character``     ``attribute``'s confidence below ``min_confidence`` (no label fits: likely no character)
``not_illustration`` ``attribute`` (default ``art_style``) is one of ``labels`` (default
                     ``[realistic, render_3d]``) with confidence at least ``min_confidence``
``low_confidence``   confidence of any of ``attributes`` below ``min_confidence``
``label_rules``      a list of rules ``{attribute: a, in: [labels]}`` (remove rows whose label is listed) or
                     ``{attribute: a, not_in: [labels]}`` (keep only the listed labels); a multi-label
                     attribute matches when any of its labels is listed (``in``) or none is (``not_in``)
``rating``           the WD tagger's rating (``tagger_rating``) above ``max_rating`` on the scale general <
                     sensitive < questionable < explicit (a rating outside the scale is removed too; rows the
                     tagger did not rate pass)
==================  =====================================================================================

Rows whose image could not be decoded (``error`` set) are always quarantined with reason ``"error: ..."``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError

__all__ = ["FILTERS", "Filter", "build_filters", "AttributeInfo", "Unavailable"]


class Unavailable(UserError):
    """A filter names an attribute or label the dataset does not have: it cannot apply to this dataset (a config
    with ``skip_unavailable: true`` skips it; see :mod:`charattr_hf.curation.config`)."""


@dataclass(frozen=True)
class AttributeInfo:
    """An attribute of the annotated dataset, learned from its features."""

    name: str
    labels: tuple[str, ...]
    multi_label: bool


class Filter:
    """One configured filter. ``apply(table) -> list of reason or None``."""

    name: str = ""
    #: parameter -> (default, check), check returns an error text or None
    params: dict[str, Any] = {}

    def __init__(self, options: Mapping[str, Any], attributes: Mapping[str, AttributeInfo], where: str):
        self.where = where
        self.attributes = attributes
        unknown = sorted(set(options) - set(self.params) - {"enabled"})
        if unknown:
            raise UserError(f"{where}: unknown option(s) {unknown} for filter {self.name!r}; "
                            f"its options: {sorted(self.params)}")
        self.options = {k: options.get(k, default) for k, (default, _) in self.params.items()}
        for k, (_, check) in self.params.items():
            problem = check(self.options[k]) if check else None
            if problem:
                raise UserError(f"{where}: {self.name}.{k} {problem}, got {self.options[k]!r}")
        self.validate()

    def validate(self) -> None:
        """Checks against the dataset's attributes (raise UserError)."""

    def describe(self) -> str:
        return ", ".join(f"{k} = {v}" for k, v in self.options.items())

    def columns(self) -> list[str]:
        return []

    def apply(self, table) -> list[str | None]:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------
    def _attribute(self, name: str) -> AttributeInfo:
        if name not in self.attributes:
            raise Unavailable(f"{self.where}: {self.name} names attribute {name!r}, which the dataset does not have; "
                            f"its attributes: {sorted(self.attributes) or 'none'}")
        return self.attributes[name]

    def _labels(self, attr: AttributeInfo, labels: Sequence[str]) -> list[str]:
        bad = [lab for lab in labels if lab not in attr.labels]
        if bad:
            raise Unavailable(f"{self.where}: {self.name}: {attr.name!r} has no label(s) {bad}; "
                            f"its labels: {list(attr.labels)}")
        return list(labels)


# ------------------------------------------------------------------------------------------ checks
def _positive_number(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and np.isfinite(v)
    return None if ok else "must be a positive number"


def _unit(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
    return None if ok else "must be a number in [0, 1]"


def _ratio(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 and np.isfinite(v)
    return None if ok else "must be a number >= 1"


def _name(v) -> str | None:
    return None if isinstance(v, str) and v else "must be an attribute name"


def _names(v) -> str | None:
    ok = isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v)
    return None if ok else "must be a non-empty list of names"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# ------------------------------------------------------------------------------------------ columns
def _struct_field(table, column: str, field: str) -> np.ndarray:
    col = table.column(column)
    import pyarrow.compute as pc

    values = pc.struct_field(col, field)
    return values.to_numpy(zero_copy_only=False).astype(np.float64)


def _numeric(table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def _labels_of(table, attr: AttributeInfo) -> list:
    """Label name (or list of names) per row; None where missing."""
    values = table.column(attr.name).to_pylist()
    names = attr.labels
    if attr.multi_label:
        return [None if v is None else [names[x] for x in v if x is not None] for v in values]
    return [None if v is None else names[v] for v in values]


def _confidence(table, attr: AttributeInfo) -> np.ndarray:
    """Confidence of the chosen label per row (multi-label: the lowest among chosen labels; none chosen: the
    row has no confident label, NaN), NaN where missing."""
    col = f"{attr.name}_confidence"
    values = table.column(col).to_pylist()
    if attr.multi_label:
        return np.array([np.nan if not v else min(x for x in v if x is not None) if any(x is not None for x in v)
                         else np.nan for v in values], dtype=np.float64)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _reasons(mask: np.ndarray, make: Callable[[int], str]) -> list[str | None]:
    return [make(i) if m else None for i, m in enumerate(mask)]


# ------------------------------------------------------------------------------------------ filters
class TooSmall(Filter):
    name = "too_small"
    params = {"min_side": (128, _positive_number)}

    def columns(self):
        return ["width", "height"]

    def apply(self, table):
        side = np.fmin(_numeric(table, "width"), _numeric(table, "height"))
        t = self.options["min_side"]
        mask = side < t
        return _reasons(mask, lambda i: f"too_small: shorter side {int(side[i])} < {t}")


class AspectRatio(Filter):
    name = "aspect_ratio"
    params = {"max_ratio": (3.0, _ratio)}

    def columns(self):
        return ["width", "height"]

    def apply(self, table):
        w, h = _numeric(table, "width"), _numeric(table, "height")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.fmax(w, h) / np.fmin(w, h)
        t = self.options["max_ratio"]
        mask = ratio > t
        return _reasons(mask, lambda i: f"aspect_ratio: {_fmt(ratio[i])} > {t}")


class _QualityBelow(Filter):
    field_name = ""
    option = ""

    def columns(self):
        return ["quality"]

    def apply(self, table):
        v = _struct_field(table, "quality", self.field_name)
        t = self.options[self.option]
        mask = v < t
        return _reasons(mask, lambda i: f"{self.name}: {self.field_name} {_fmt(v[i])} < {t}")


class Monochrome(_QualityBelow):
    name = "monochrome"
    field_name = "colorfulness"
    option = "max_colorfulness"
    params = {"max_colorfulness": (0.02, _unit)}


class LowContrast(_QualityBelow):
    name = "low_contrast"
    field_name = "contrast"
    option = "min_contrast"
    params = {"min_contrast": (0.04, _unit)}


class Blurry(_QualityBelow):
    name = "blurry"
    field_name = "sharpness"
    option = "min_sharpness"
    params = {"min_sharpness": (0.08, _unit)}


class _LabelIs(Filter):
    """``attribute`` is one of ``labels`` with confidence >= ``min_confidence``."""

    def validate(self):
        self.attr = self._attribute(self.options["attribute"])
        self._labels(self.attr, self.options["labels"])

    def columns(self):
        return [self.attr.name, f"{self.attr.name}_confidence"]

    def apply(self, table):
        labels = _labels_of(table, self.attr)
        conf = _confidence(table, self.attr)
        wanted = set(self.options["labels"])
        t = self.options["min_confidence"]
        out: list[str | None] = []
        for i, lab in enumerate(labels):
            hit = [x for x in ([lab] if isinstance(lab, str) else (lab or [])) if x in wanted]
            if hit and (np.isnan(conf[i]) or conf[i] >= t):
                out.append(f"{self.name}: {self.attr.name} = {hit[0]} (confidence {_fmt(conf[i])} >= {t})")
            else:
                out.append(None)
        return out


class SeveralCharacters(_LabelIs):
    name = "several_characters"
    params = {"attribute": ("character_count", _name), "labels": (["two", "group"], _names),
              "min_confidence": (0.5, _unit)}


class NotIllustration(_LabelIs):
    name = "not_illustration"
    params = {"attribute": ("art_style", _name), "labels": (["realistic", "render_3d"], _names),
              "min_confidence": (0.5, _unit)}


class NoCharacter(Filter):
    name = "no_character"
    params = {"attribute": ("character_count", _name), "min_confidence": (0.2, _unit)}

    def validate(self):
        self.attr = self._attribute(self.options["attribute"])

    def columns(self):
        return [f"{self.attr.name}_confidence"]

    def apply(self, table):
        conf = _confidence(table, self.attr)
        t = self.options["min_confidence"]
        mask = conf < t
        return _reasons(mask, lambda i: f"no_character: {self.attr.name} confidence {_fmt(conf[i])} < {t}")


class LowConfidence(Filter):
    name = "low_confidence"
    params = {"attributes": (None, _names), "min_confidence": (0.5, _unit)}

    def validate(self):
        self.attrs = [self._attribute(a) for a in self.options["attributes"]]

    def columns(self):
        return [f"{a.name}_confidence" for a in self.attrs]

    def apply(self, table):
        t = self.options["min_confidence"]
        out: list[str | None] = [None] * table.num_rows
        for a in self.attrs:
            conf = _confidence(table, a)
            for i in np.flatnonzero(conf < t):
                if out[i] is None:
                    out[i] = f"low_confidence: {a.name} confidence {_fmt(conf[i])} < {t}"
        return out


class LabelRules(Filter):
    name = "label_rules"
    params = {"rules": (None, None)}

    def validate(self):
        rules = self.options["rules"]
        if not isinstance(rules, list) or not rules:
            raise UserError(f"{self.where}: label_rules must be a non-empty list of "
                            "{attribute: NAME, in: [LABELS]} or {attribute: NAME, not_in: [LABELS]}")
        self.rules = []
        for k, rule in enumerate(rules):
            where = f"label_rules[{k}]"
            if not isinstance(rule, Mapping) or "attribute" not in rule or len(set(rule) & {"in", "not_in"}) != 1 \
                    or set(rule) - {"attribute", "in", "not_in"}:
                raise UserError(f"{self.where}: {where} must be {{attribute: NAME, in: [LABELS]}} or "
                                f"{{attribute: NAME, not_in: [LABELS]}}, got {rule!r}")
            op = "in" if "in" in rule else "not_in"
            labels = rule[op]
            if isinstance(labels, str):
                labels = [labels]
            if _names(labels):
                raise UserError(f"{self.where}: {where}.{op} must be a non-empty list of labels, got {labels!r}")
            attr = self._attribute(str(rule["attribute"]))
            self.rules.append((attr, op, set(self._labels(attr, labels))))

    def describe(self):
        return "; ".join(f"{a.name} {op.replace('_', ' ')} [{', '.join(sorted(ls))}]" for a, op, ls in self.rules)

    def columns(self):
        return [a.name for a, _, _ in self.rules]

    def apply(self, table):
        out: list[str | None] = [None] * table.num_rows
        for attr, op, wanted in self.rules:
            for i, lab in enumerate(_labels_of(table, attr)):
                if out[i] is not None or lab is None:
                    continue
                present = set([lab] if isinstance(lab, str) else lab)
                hit = bool(present & wanted)
                if (op == "in" and hit) or (op == "not_in" and not hit):
                    shown = lab if isinstance(lab, str) else "[" + ", ".join(lab) + "]"
                    out[i] = f"label_rules: {attr.name} = {shown} ({op.replace('_', ' ')} [{', '.join(sorted(wanted))}])"
        return out


#: the WD taggers' rating tags (and the names other taggers use for the same levels), least explicit first
RATING_LEVELS = {"general": 0, "safe": 0, "sensitive": 1, "questionable": 2, "explicit": 3, "nsfw": 3}
_RATING_NAMES = ("general", "sensitive", "questionable", "explicit")


def _rating_name(v) -> str | None:
    return None if v in _RATING_NAMES else f"must be one of {', '.join(_RATING_NAMES)}"


class Rating(Filter):
    """The tagger's rating above ``max_rating``: what a dataset for a general audience leaves out. Only the top
    rating is recorded (``tagger_rating``), so the threshold is a level of the rating scale, not a score."""

    name = "rating"
    params = {"max_rating": ("sensitive", _rating_name)}
    #: what to do when the dataset lacks the column
    hint = "annotate with the WD tagger (--tagger) to get it"

    def columns(self):
        return ["tagger_rating"]

    def apply(self, table):
        limit = RATING_LEVELS[self.options["max_rating"]]
        out: list[str | None] = []
        for rating in table.column("tagger_rating").to_pylist():
            level = RATING_LEVELS.get(rating, 99) if rating is not None else None
            if level is None or level <= limit:
                out.append(None)
            elif level == 99:
                out.append(f"rating: {rating!r} is not on the scale {' < '.join(_RATING_NAMES)}")
            else:
                out.append(f"rating: {rating} > {self.options['max_rating']}")
        return out


FILTERS: dict[str, type[Filter]] = {
    f.name: f
    for f in (TooSmall, AspectRatio, Monochrome, LowContrast, Blurry, SeveralCharacters, NoCharacter,
              NotIllustration, LowConfidence, LabelRules, Rating)
}


def build_filters(spec: Mapping[str, Any] | None, attributes: Mapping[str, AttributeInfo], where: str) -> list[Filter]:
    """Filters from the config's ``filters`` mapping (name -> options, ``true`` for the defaults, ``false`` or
    ``{enabled: false}`` to switch one off)."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}: 'filters' must be a mapping of filter name to options")
    out = []
    for name, options in spec.items():
        if name not in FILTERS:
            raise UserError(f"{where}: unknown filter {name!r}; known filters: {sorted(FILTERS)}")
        if options is False or options is None:
            continue
        if options is True:
            options = {}
        if name == "label_rules" and isinstance(options, list):
            options = {"rules": options}
        if not isinstance(options, Mapping):
            raise UserError(f"{where}: filter {name!r} takes a mapping of options (or true/false), got {options!r}")
        if options.get("enabled", True) is False:
            continue
        out.append(FILTERS[name](options, attributes, where))
    return out
