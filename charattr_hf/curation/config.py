"""The curation config: duplicate thresholds and filters, from YAML, checked before any work starts.

::

    dedup:
      exact: true                    # same sha256
      near:                          # whole picture (thumbnail + pHash, mirrors too) or local features, then
        thumb_threshold: 3.2         # aligned thumbnails agree (see charattr_hf.curation.dedup.near_pairs)
        phash_radius: 12             # bits of 64
        min_inliers: 13              # local features on one scale and shift (0: whole-picture path only)
        neighbours: 16               # most duplicates linked per row
        leaf: 512                    # rows per k-means cell compared all-pairs
        rounds: 2                    # independent partitions into cells
      semantic:                      # needs an `embedding` column (annotate with --keep_embedding)
        threshold: 0.95              # cosine similarity
        leaf: 1024                   # rows per k-means cluster compared all-pairs
        rounds: 2                    # independent clusterings (1 = SemDeDup's one)
    filters:
      too_small: {min_side: 128}
      aspect_ratio: {max_ratio: 3.0}
      monochrome: {max_colorfulness: 0.02}
      low_contrast: {min_contrast: 0.04}
      blurry: {min_sharpness: 0.08}
      several_characters: {attribute: character_count, labels: [two, group], min_confidence: 0.5}
      no_character: {attribute: character_count, min_confidence: 0.2}
      not_illustration: {attribute: art_style, labels: [realistic, render_3d], min_confidence: 0.5}
      low_confidence: {attributes: [hair_color], min_confidence: 0.3}
      label_rules:
        - {attribute: hair_color, not_in: [black, brown]}
      rating: {max_rating: sensitive}  # the WD tagger's rating (annotate with --tagger)
    examples: 4                      # example duplicate groups on the card
    skip_unavailable: true           # skip (and name) steps the dataset cannot take, instead of stopping

A section or filter left out is off; ``near: false`` switches that kind off. Without a config file,
:func:`default_config` is used: exact and near duplicates, semantic ones when the dataset has embeddings,
``too_small`` (64 px), ``aspect_ratio`` (3), ``low_contrast`` (0.02), and the character-count and art-style
filters when the dataset's schema has those attributes with their default labels.

A step can be unavailable on a dataset: semantic duplicates without an ``embedding`` column (annotated without
``--keep_embedding``), near duplicates without ``signature``, a filter naming an attribute or label the dataset's
schema lacks (the default annotate output uses the ``synthetic`` schema, without ``character_count``), a filter
reading a column the dataset lacks. With ``skip_unavailable: true`` (the shipped config and the default) such a
step is skipped, and named with the reason in the log and on the card; without it, it is a user error before any
work (a config written for one dataset asks for exactly what it names). A mistake is an error either way: an
unknown section, filter or option, a threshold out of range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Collection, Mapping

import yaml

from ..errors import UserError
from .dedup import NearConfig, SemanticConfig
from .filters import FILTERS, AttributeInfo, Filter, Unavailable, build_filters

__all__ = ["CurateConfig", "load_config", "default_config_dict"]

_TOP = {"dedup", "filters", "examples", "skip_unavailable"}


@dataclass
class CurateConfig:
    exact: bool = True
    near: NearConfig | None = field(default_factory=NearConfig)
    semantic: SemanticConfig | None = field(default_factory=SemanticConfig)
    filters: list[Filter] = field(default_factory=list)
    examples: int = 4
    source: str = "default"
    raw: dict = field(default_factory=dict)
    #: steps left out because the dataset cannot take them: (step, why), with ``skip_unavailable``
    skipped: list[tuple[str, str]] = field(default_factory=list)


def default_config_dict(attributes: Mapping[str, AttributeInfo]) -> dict[str, Any]:
    filters: dict[str, Any] = {
        "too_small": {"min_side": 64},
        "aspect_ratio": {"max_ratio": 3.0},
        "low_contrast": {"min_contrast": 0.02},
    }
    cc = attributes.get("character_count")
    if cc is not None and {"two", "group"} <= set(cc.labels):
        filters["several_characters"] = {}
    art = attributes.get("art_style")
    if art is not None and {"realistic", "render_3d"} <= set(art.labels):
        filters["not_illustration"] = {}
    return {"dedup": {"exact": True, "near": {}, "semantic": {}}, "filters": filters, "examples": 4,
            "skip_unavailable": True}


def _section(value: Any, cls: type, where: str):
    """A dataclass from a mapping (``true``/``{}`` = defaults, ``false``/missing = off)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping of options, true or false; got {value!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
    obj = cls(**value)
    if obj.enabled is False:
        return None
    for name, f in known.items():
        v = getattr(obj, name)
        default = f.default
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise UserError(f"{where}.{name} must be true or false, got {v!r}")
        elif isinstance(default, (int, float)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"{where}.{name} must be a number, got {v!r}")
    return obj


def _check_near(c: NearConfig, where: str) -> None:
    if not (isinstance(c.phash_radius, int) and 0 <= c.phash_radius <= 64):
        raise UserError(f"{where}.phash_radius must be an integer in [0, 64], got {c.phash_radius!r}")
    for name in ("thumb_threshold", "candidate_radius"):
        if getattr(c, name) < 0:
            raise UserError(f"{where}.{name} must be >= 0, got {getattr(c, name)!r}")
    if not (isinstance(c.min_inliers, int) and 0 <= c.min_inliers <= 48):
        raise UserError(f"{where}.min_inliers must be an integer in [0, 48], got {c.min_inliers!r}")
    if not (c.hash_bits in (8, 16, 24, 32) and isinstance(c.hash_tables, int) and 1 <= c.hash_tables <= 8):
        raise UserError(f"{where}: hash_bits must be 8, 16, 24 or 32 and hash_tables an integer in [1, 8]")
    if not (isinstance(c.neighbours, int) and 1 <= c.neighbours <= 1024):
        raise UserError(f"{where}.neighbours must be an integer in [1, 1024], got {c.neighbours!r}")
    _check_clusters(c, where)


def _check_clusters(c, where: str) -> None:
    if not (isinstance(c.leaf, int) and c.leaf >= 16):
        raise UserError(f"{where}.leaf must be an integer >= 16, got {c.leaf!r}")
    if not (isinstance(c.rounds, int) and 1 <= c.rounds <= 8):
        raise UserError(f"{where}.rounds must be an integer in [1, 8], got {c.rounds!r}")
    if not (isinstance(c.assign, int) and 1 <= c.assign <= 16):
        raise UserError(f"{where}.assign must be an integer in [1, 16], got {c.assign!r}")


def _check_semantic(c: SemanticConfig, where: str) -> None:
    if not -1.0 <= c.threshold <= 1.0:
        raise UserError(f"{where}.threshold is a cosine similarity in [-1, 1], got {c.threshold!r}")
    _check_clusters(c, where)
    if not (isinstance(c.neighbours, int) and 1 <= c.neighbours <= 1024):
        raise UserError(f"{where}.neighbours must be an integer in [1, 1024], got {c.neighbours!r}")
    if not (isinstance(c.iterations, int) and c.iterations >= 1):
        raise UserError(f"{where}.iterations must be an integer >= 1, got {c.iterations!r}")


def load_config(path: str | Path | None, attributes: Mapping[str, AttributeInfo], has_embedding: bool,
                columns: "Collection[str] | None" = None) -> CurateConfig:
    """Read and check ``path`` (or the default) against the dataset's attributes and ``columns`` (all of them
    taken as present when None). Raises :class:`UserError`; steps the dataset cannot take are skipped instead
    when the config says ``skip_unavailable: true`` (see the module docstring)."""
    if path is None:
        data, where = default_config_dict(attributes), "default curation config"
    else:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise UserError(f"curation config not found: {path}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, Mapping):
            raise UserError(f"{path}: expected a mapping with 'dedup' and/or 'filters'")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise UserError(f"{where}: unknown section(s) {unknown}; sections: {sorted(_TOP)}")
    skip = data.get("skip_unavailable", False)
    if not isinstance(skip, bool):
        raise UserError(f"{where}: skip_unavailable must be true or false, got {skip!r}")
    skipped: list[tuple[str, str]] = []

    def unavailable(step: str, why: str) -> None:
        if not skip:
            raise UserError(f"{where}: {step} {why} (or set skip_unavailable: true to skip what a dataset lacks)")
        skipped.append((step, why))
    dedup = data.get("dedup") or {}
    if not isinstance(dedup, Mapping):
        raise UserError(f"{where}: 'dedup' must be a mapping with exact, near, semantic")
    bad = sorted(set(dedup) - {"exact", "near", "semantic"})
    if bad:
        raise UserError(f"{where}: unknown dedup kind(s) {bad}; kinds: exact, near, semantic")
    exact = dedup.get("exact", False)
    if not isinstance(exact, bool):
        raise UserError(f"{where}: dedup.exact must be true or false, got {exact!r}")
    near = _section(dedup.get("near"), NearConfig, f"{where}: dedup.near")
    if near is not None:
        _check_near(near, f"{where}: dedup.near")
        if columns is not None and "signature" not in columns:
            unavailable("dedup.near", "needs a 'signature' column, which the dataset lacks (annotate with this "
                        "version of charattr-hf, or set near: false)")
            near = None
    semantic = _section(dedup.get("semantic"), SemanticConfig, f"{where}: dedup.semantic")
    if semantic is not None:
        _check_semantic(semantic, f"{where}: dedup.semantic")
        if not has_embedding:
            unavailable("dedup.semantic", "needs an 'embedding' column; annotate with --keep_embedding or set "
                        "semantic: false")
            semantic = None
    examples = data.get("examples", 4)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise UserError(f"{where}: examples must be an integer >= 0, got {examples!r}")
    spec = data.get("filters")
    if spec is not None and not isinstance(spec, Mapping):
        build_filters(spec, attributes, where)  # raises its message
    filters: list[Filter] = []
    for name, options in (spec or {}).items():  # one at a time, so that one the dataset cannot take is skipped alone
        try:
            built = build_filters({name: options}, attributes, where)
        except Unavailable as exc:
            if not skip:
                raise UserError(f"{exc} (or set skip_unavailable: true to skip what a dataset lacks)") from None
            why = str(exc).removeprefix(f"{where}: ")
            skipped.append((name, why.removeprefix(f"{name}: ").removeprefix(f"{name} ")))
            continue
        for f in built:
            missing = [c for c in f.columns() if columns is not None and c not in columns]
            if missing:
                hint = getattr(f, "hint", None)
                unavailable(f.name, f"needs column(s) {missing}, which the dataset lacks" + (f"; {hint}" if hint else ""))
            else:
                filters.append(f)
    return CurateConfig(exact=exact, near=near, semantic=semantic, filters=filters, examples=examples,
                        source=where, raw=dict(data), skipped=skipped)


KNOWN_FILTERS = sorted(FILTERS)
