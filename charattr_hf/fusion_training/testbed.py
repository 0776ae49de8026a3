"""A test bed for fusion: an annotated dataset with ground truth where each simulated source's reliability
depends on the kind of image (see :data:`DEFAULT_PROFILES`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from datasets import Dataset, Features, List, Value

from ..schema import QUALITY_FEATURES, QUALITY_FIELDS, Schema, load_schema, probs_column

__all__ = ["SIM_STYLES", "SourceProfile", "DEFAULT_PROFILES", "simulate_annotated"]


SIM_STYLES = ("anime", "realistic", "sketch", "pixel_art")


@dataclass(frozen=True)
class SourceProfile:
    """How one simulated source behaves on one kind of image.

    ``accuracy``: probability that its evidence points at the truth (per label for multi-label attributes);
    None = pure noise (a random label). ``confidence``: logit margin of that evidence. ``wrong_confidence``:
    factor on the margin when it is wrong (1 = as sure when wrong as when right; < 1 = its confidence is
    informative). ``missing``: probability of no evidence for an attribute. ``blind_to``: substrings of
    attribute names it cannot see here (pure noise for those)."""

    accuracy: float | None = 0.8
    confidence: float = 3.0
    wrong_confidence: float = 1.0
    missing: float = 0.0
    blind_to: tuple[str, ...] = ()


#: Default reliability: CLIP reads photos and anime well, cannot see colours in sketches and is shaky on
#: pixel art; tags are excellent where present, absent on photos and wrong on pixel art; blip2 is pure noise.
DEFAULT_PROFILES: dict[str, dict[str, SourceProfile]] = {
    "clip": {
        "anime": SourceProfile(0.72, 2.5, wrong_confidence=0.7),
        "realistic": SourceProfile(0.82, 2.5, wrong_confidence=0.7),
        "sketch": SourceProfile(0.65, 2.5, wrong_confidence=0.7, blind_to=("color",)),
        "pixel_art": SourceProfile(0.6, 2.0, wrong_confidence=0.8),
    },
    "tags": {
        "anime": SourceProfile(0.92, 4.0, missing=0.35),
        "realistic": SourceProfile(0.9, 4.0, missing=0.9),
        "sketch": SourceProfile(0.9, 4.0, missing=0.4),
        "pixel_art": SourceProfile(0.3, 4.0, missing=0.3),
    },
    "blip2": {style: SourceProfile(None, 3.0, missing=0.05) for style in SIM_STYLES},
}

# quality (brightness, contrast, saturation, colorfulness, sharpness) and flag rates per style
_STYLE_QUALITY = {
    "anime": (0.65, 0.50, 0.55, 0.50, 200.0),
    "realistic": (0.50, 0.45, 0.35, 0.30, 120.0),
    "sketch": (0.85, 0.30, 0.03, 0.02, 300.0),
    "pixel_art": (0.55, 0.70, 0.70, 0.65, 900.0),
}
_STYLE_FLAGS = {
    "anime": {"small": 0.05},
    "realistic": {"jpeg_artifacts": 0.3, "small": 0.05},
    "sketch": {"grayscale": 0.85, "small": 0.05},
    "pixel_art": {"low_resolution": 0.6, "small": 0.05},
}


def simulate_annotated(
    schema: "Schema | str | None" = None,
    num_rows: int = 2000,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    profiles: Mapping[str, Mapping[str, SourceProfile]] | None = None,
    styles: Sequence[str] = SIM_STYLES,
    embedding_dim: int = 0,
    id_prefix: str | None = None,
) -> Dataset:
    """An annotated dataset with ground truth whose sources' reliability depends on the kind of image.

    Columns: ``id``, ``index``, ``style`` (the hidden kind of image, for evaluation only), ``truth``,
    ``probs_<source>``, ``quality`` and ``flags`` (which reveal the style, noisily), and ``embedding`` when
    ``embedding_dim`` > 0. The ``art_style`` attribute, when the schema has it, follows the style, so the
    sources' art-style vectors are a hint too. Row ``i`` depends only on ``(seed, i)``: the first rows of a
    bigger simulation are the same rows."""
    schema = load_schema(schema)
    profiles = profiles or DEFAULT_PROFILES
    sources = tuple(profiles) if sources is None else sources  # default: every source it has profiles for
    for s in sources:
        if s not in profiles:
            raise ValueError(f"no simulation profile for source {s!r}; profiles: {sorted(profiles)}")
    n = int(num_rows)
    priors = {a.name: _world_rng("prior", a.name).dirichlet(np.full(a.num_labels, 2.0)) for a in schema}
    centroids = _world_rng("embedding", *styles).normal(size=(len(styles), embedding_dim)) if embedding_dim else None
    row_styles, truth, quality, flags, embeddings = [], [], [], [], []
    probs: dict[str, list[dict]] = {s: [] for s in sources}
    for r in range(n):
        rng = np.random.default_rng([seed, r])  # one generator per row: simulate(10) == simulate(100)[:10]
        style_i = int(rng.integers(len(styles)))
        style = styles[style_i]
        row_truth: dict[str, Any] = {}
        for attr in schema:
            if attr.multi_label:
                row_truth[attr.name] = [int(i) for i in np.flatnonzero(rng.random(attr.num_labels) < 0.2)]
            else:
                value = int(rng.choice(attr.num_labels, p=priors[attr.name]))
                if attr.name == "art_style" and style in attr.label_names and rng.random() < 0.9:
                    value = attr.index(style)
                row_truth[attr.name] = value
        for source in sources:
            prof = profiles[source][style]
            cell: dict[str, Any] = {}
            for attr in schema:
                if rng.random() < prof.missing:
                    cell[attr.name] = None
                    continue
                blind = prof.accuracy is None or any(b in attr.name for b in prof.blind_to)
                cell[attr.name] = _emit(rng, attr.multi_label, attr.num_labels, row_truth[attr.name], prof, blind)
            probs[source].append(cell)
        base = _STYLE_QUALITY.get(style, (0.5, 0.5, 0.5, 0.5, 200.0))
        values = [float(np.clip(b + rng.normal(0, 0.08), 0, 1)) for b in base[:4]]
        values.append(float(base[4] * rng.lognormal(0.0, 0.35)))
        quality.append(dict(zip(QUALITY_FIELDS, values)))
        flags.append([f for f, rate in _STYLE_FLAGS.get(style, {}).items() if rng.random() < rate])
        if centroids is not None:
            e = centroids[style_i] + rng.normal(scale=1.5, size=embedding_dim)
            embeddings.append((e / np.linalg.norm(e)).astype(np.float16).tolist())
        row_styles.append(style)
        truth.append(row_truth)
    prefix = id_prefix if id_prefix is not None else f"sim{seed}"
    data: dict[str, list] = {
        "id": [f"{prefix}-{r:06d}" for r in range(n)],
        "index": list(range(n)),
        "style": row_styles,
        "truth": truth,
        **{probs_column(s): probs[s] for s in sources},
        "quality": quality,
        "flags": flags,
    }
    feats: dict[str, Any] = {
        "id": Value("string"),
        "index": Value("int64"),
        "style": Value("string"),
        "truth": schema.truth_feature(),
        **{probs_column(s): schema.probs_feature() for s in sources},
        "quality": QUALITY_FEATURES,
        "flags": List(Value("string")),
    }
    if embedding_dim:
        data["embedding"] = embeddings
        feats["embedding"] = List(Value("float16"), length=embedding_dim)
    return Dataset.from_dict(data, features=Features(feats))


def _world_rng(*key: str) -> np.random.Generator:
    """Randomness that belongs to the simulated world, not to one sample of it (label frequencies, style
    centroids): the same for every seed, so train and test sets drawn with different seeds match."""
    digest = hashlib.sha256("/".join(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _emit(rng: np.random.Generator, multi: bool, k: int, truth: Any, prof: SourceProfile, blind: bool) -> list[float]:
    """One simulated probability vector."""
    margin = prof.confidence * rng.uniform(0.5, 1.5)
    if multi:
        y = np.zeros(k)
        y[list(truth)] = 1.0
        sign = 2.0 * y - 1.0
        if blind:
            right = rng.random(k) < 0.5
        else:
            right = rng.random(k) < prof.accuracy
        scale = np.where(right, 1.0, prof.wrong_confidence)
        logits = np.where(right, sign, -sign) * margin * scale + rng.normal(0, 1.0, k)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).tolist()
    if blind:
        peak, right = int(rng.integers(k)), True
    elif rng.random() < prof.accuracy:
        peak, right = int(truth), True
    else:
        peak = int(rng.choice([i for i in range(k) if i != truth]))
        right = False
    logits = rng.normal(0, 1.0, k)
    logits[peak] += margin * (1.0 if right else prof.wrong_confidence)
    p = np.exp(logits - logits.max())
    return (p / p.sum()).astype(np.float32).tolist()
