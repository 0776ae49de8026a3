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
    examples: 4                      # example duplicate groups on the card

A section or filter left out is off; ``near: false`` switches that kind off. Without a config file,
:func:`default_config` is used: exact and near duplicates, semantic ones when the dataset has embeddings,
``too_small`` (64 px), ``aspect_ratio`` (3), ``low_contrast`` (0.02), and the character-count and art-style
filters when the dataset's schema has those attributes with their default labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import UserError
from .dedup import NearConfig, SemanticConfig
from .filters import FILTERS, AttributeInfo, Filter, build_filters

__all__ = ["CurateConfig", "load_config", "default_config_dict"]

_TOP = {"dedup", "filters", "examples"}


@dataclass
class CurateConfig:
    exact: bool = True
    near: NearConfig | None = field(default_factory=NearConfig)
    semantic: SemanticConfig | None = field(default_factory=SemanticConfig)
    filters: list[Filter] = field(default_factory=list)
    examples: int = 4
    source: str = "default"
    raw: dict = field(default_factory=dict)


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
    return {"dedup": {"exact": True, "near": {}, "semantic": {}}, "filters": filters, "examples": 4}


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


def load_config(path: str | Path | None, attributes: Mapping[str, AttributeInfo],
                has_embedding: bool) -> CurateConfig:
    """Read and check ``path`` (or the default) against the dataset's attributes. Raises :class:`UserError`."""
    if path is None:
        data, where = default_config_dict(attributes), "default curation config"
        if not has_embedding:
            data["dedup"]["semantic"] = False
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
    semantic = _section(dedup.get("semantic"), SemanticConfig, f"{where}: dedup.semantic")
    if semantic is not None:
        _check_semantic(semantic, f"{where}: dedup.semantic")
        if not has_embedding:
            raise UserError(f"{where}: dedup.semantic needs an 'embedding' column; annotate with --keep_embedding "
                            "or set semantic: false")
    examples = data.get("examples", 4)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise UserError(f"{where}: examples must be an integer >= 0, got {examples!r}")
    filters = build_filters(data.get("filters"), attributes, where)
    return CurateConfig(exact=exact, near=near, semantic=semantic, filters=filters, examples=examples,
                        source=where, raw=dict(data))


KNOWN_FILTERS = sorted(FILTERS)
