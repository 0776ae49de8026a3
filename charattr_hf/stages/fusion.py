"""Fusion: per-source probabilities in, one label and confidence per attribute out.

:class:`FusionStage` is the replaceable part: it turns fused probability vectors into the output columns
(:meth:`FusionStage.decide`), and subclasses decide how the vectors are fused. :class:`SimpleFusion`
implements the fixed rules used as defaults and baselines (mean, confidence-weighted mean, majority vote);
the learned policy (:mod:`charattr_hf.stages.policy`) is another subclass.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..constants import FUSION_METHODS
from ..schema import Attribute, Schema, load_schema, probs_column
from .base import Stage

__all__ = ["FusionStage", "SimpleFusion", "decide", "fit_source_weights", "FUSION_METHODS"]


def decide(attr: Attribute, probs: np.ndarray | None) -> tuple[Any, Any]:
    """Label(s) and confidence(s) from one fused probability vector (None when no source had evidence)."""
    if probs is None:
        return (None, None)
    if attr.multi_label:
        chosen = [i for i, p in enumerate(probs) if p >= attr.threshold]
        return chosen, [float(probs[i]) for i in chosen]
    i = int(np.argmax(probs))
    return i, float(probs[i])


def certainty(attr: Attribute, probs: np.ndarray) -> np.ndarray:
    """How far from "no idea" a vector is, in [0, 1]: per label for multi-label, a scalar otherwise."""
    if attr.multi_label:
        return np.abs(2.0 * probs - 1.0)
    n = probs.shape[-1]
    return np.clip((probs.max(-1) - 1.0 / n) / (1.0 - 1.0 / n), 0.0, 1.0)


class FusionStage(Stage):
    """Base of fusion stages: reads ``probs_<source>`` columns, writes ``<attr>`` and ``<attr>_confidence``."""

    name = "fusion"

    def __init__(self, schema: "Schema | str | None" = None, sources: Sequence[str] = ("clip", "tags")):
        self.schema = load_schema(schema)
        self.sources = tuple(sources)

    def params(self) -> dict:
        return {"schema": self.schema.fingerprint(), "sources": list(self.sources)}

    def input_columns(self) -> list[str]:
        return [probs_column(s) for s in self.sources]

    def features(self) -> dict:
        feats: dict = {}
        for attr in self.schema:
            feats[attr.name] = attr.label_feature()
            feats[f"{attr.name}_confidence"] = attr.confidence_feature()
        return feats

    def fuse(self, batch: dict[str, list]) -> dict[str, list[np.ndarray | None]]:
        """Per attribute, one fused probability vector per row (None where no source has evidence)."""
        raise NotImplementedError

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        fused = self.fuse(batch)
        errors = batch.get("error") or []
        out: dict[str, list] = {}
        for attr in self.schema:
            # a row whose image failed is quarantined: no labels, even where its tags gave evidence
            rows = [None if i < len(errors) and errors[i] else p for i, p in enumerate(fused[attr.name])]
            labels, confs = zip(*(decide(attr, p) for p in rows)) if rows else ((), ())
            out[attr.name] = list(labels)
            out[f"{attr.name}_confidence"] = list(confs)
        return out

    def source_probs(self, batch: dict[str, list], attr: Attribute) -> list[list[np.ndarray | None]]:
        """For each row, the list of available source vectors for ``attr`` (same order as ``self.sources``)."""
        n = len(next(iter(batch.values())))
        rows: list[list[np.ndarray | None]] = [[] for _ in range(n)]
        for source in self.sources:
            col = batch.get(probs_column(source))
            for i in range(n):
                cell = col[i] if col is not None else None
                vec = cell.get(attr.name) if cell else None
                rows[i].append(None if vec is None else np.asarray(vec, dtype=np.float64))
        return rows


class SimpleFusion(FusionStage):
    """Fixed fusion rules over the sources that have evidence for a row.

    - ``confidence``: mean weighted by each source's certainty (0 for a uniform vector, 1 for one-hot),
      times an optional prior weight per source (one number, or one per attribute; see
      :func:`fit_source_weights` to fit them on labelled rows). The default.
    - ``mean``: plain mean of the available vectors.
    - ``vote``: majority vote of the sources' top labels (ties split); for multi-label, per-label vote.
    """

    def __init__(
        self,
        schema: "Schema | str | None" = None,
        sources: Sequence[str] = ("clip", "tags"),
        method: str = "confidence",
        source_weights: "Mapping[str, float | Mapping[str, float]] | None" = None,
    ):
        super().__init__(schema, sources)
        if method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion method {method!r}; choose from {FUSION_METHODS}")
        self.method = method
        # per source: one weight for every attribute, or {attribute: weight} (attributes not named: 1.0)
        self.source_weights: dict[str, float | dict[str, float]] = {}
        for s in self.sources:
            w = (source_weights or {}).get(s, 1.0)
            self.source_weights[s] = {a: float(v) for a, v in w.items()} if isinstance(w, Mapping) else float(w)

    def params(self) -> dict:
        return {**super().params(), "method": self.method, "weights": self.source_weights}

    def weights_for(self, attribute: str) -> np.ndarray:
        """Prior weight of each source (in ``self.sources`` order) for one attribute."""
        out = []
        for s in self.sources:
            w = self.source_weights[s]
            out.append(w.get(attribute, 1.0) if isinstance(w, dict) else w)
        return np.asarray(out, dtype=np.float64)

    def fuse(self, batch: dict[str, list]) -> dict[str, list[np.ndarray | None]]:
        out: dict[str, list[np.ndarray | None]] = {}
        for attr in self.schema:
            prior = self.weights_for(attr.name)
            fused_rows: list[np.ndarray | None] = []
            for vecs in self.source_probs(batch, attr):
                present = [(v, w) for v, w in zip(vecs, prior) if v is not None and w > 0]
                if not present:
                    fused_rows.append(None)
                    continue
                fused_rows.append(self._combine(attr, [v for v, _ in present], np.array([w for _, w in present])))
            out[attr.name] = fused_rows
        return out

    def _combine(self, attr: Attribute, vecs: list[np.ndarray], prior: np.ndarray) -> np.ndarray:
        stack = np.stack(vecs)  # (sources, labels)
        if self.method == "vote":
            if attr.multi_label:
                return ((stack >= attr.threshold).astype(float) * prior[:, None]).sum(0) / prior.sum()
            votes = np.zeros(stack.shape[1])
            for v, w in zip(stack, prior):
                top = np.flatnonzero(v == v.max())
                votes[top] += w / len(top)
            return votes / votes.sum()
        if self.method == "mean":
            weights = prior[:, None] * np.ones_like(stack)
        else:
            cert = certainty(attr, stack)
            weights = prior[:, None] * (cert if attr.multi_label else cert[:, None] * np.ones_like(stack)) + 1e-6
        fused = (weights * stack).sum(0) / weights.sum(0)
        if not attr.multi_label:
            fused = fused / fused.sum()
        return fused


def _confidence_rule(probs: np.ndarray, mask: np.ndarray, prior: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``confidence`` rule of :class:`SimpleFusion`, vectorised over rows.

    ``probs`` (N, S, K), ``mask`` (N, S) (source has a vector), ``prior`` (S,) -> fused (N, K) and a (N,) mask of
    rows where some source with a positive weight had evidence. Same arithmetic as ``SimpleFusion._combine``."""
    use = mask & (prior[None, :] > 0)
    if multi_label:
        cert = np.abs(2.0 * probs - 1.0)
    else:
        k = probs.shape[-1]
        cert = np.clip((probs.max(-1) - 1.0 / k) / (1.0 - 1.0 / k), 0.0, 1.0)[..., None]
    weights = (prior[None, :, None] * cert + 1e-6) * use[..., None]
    total = weights.sum(1)
    fused = (weights * probs).sum(1) / np.clip(total, 1e-12, None)
    if not multi_label:
        fused = fused / np.clip(fused.sum(-1, keepdims=True), 1e-12, None)
    return fused, use.any(1)


def fit_source_weights(
    source_probs: np.ndarray,
    source_mask: np.ndarray,
    labels: np.ndarray,
    attributes: Sequence[Mapping[str, Any]],
    sources: Sequence[str],
    grid: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 5.0),
    rounds: int = 3,
    objective: str = "accuracy",
) -> dict[str, dict[str, float]]:
    """Per-source, per-attribute weights for the ``confidence`` rule, fitted on labelled rows.

    Inputs are the arrays a fusion policy is trained on (:func:`charattr_hf.fusion_training.build_features`):
    ``source_probs`` (N, S, A, L), ``source_mask`` (N, S, A), ``labels`` (N, A, L) with -1 for unknown, and the
    config's ``attributes`` (dicts with ``name``, ``labels``, ``multi_label``) and ``sources``. For each attribute,
    coordinate descent over ``grid`` (a weight of 0 drops the source) minimises, over the rows where some source
    has evidence, the error rate of the fused decision (exact match for multi-label attributes) with the log-loss
    breaking ties (``objective="accuracy"``, the default), or the mean negative log-likelihood of the true
    label(s) alone (``objective="log_loss"``; binary cross-entropy per label for multi-label attributes). On the
    fusion benchmark the accuracy objective was the stronger baseline (see benchmarks/README.md). Deterministic; weights are scaled so the largest is 1. Returns
    ``{source: {attribute: weight}}``, ready for ``SimpleFusion(source_weights=...)``."""
    if objective not in ("log_loss", "accuracy"):
        raise ValueError(f"objective must be 'log_loss' or 'accuracy', got {objective!r}")
    S = len(sources)
    grid = sorted(set(float(g) for g in grid) | {1.0})
    fitted: dict[str, dict[str, float]] = {s: {} for s in sources}
    for a, attr in enumerate(attributes):
        k = len(attr["labels"])
        y = labels[:, a, :k]
        rows = np.flatnonzero((y >= 0).all(-1) & source_mask[:, :, a].any(1))
        weights = np.ones(S)
        if len(rows):
            probs = source_probs[rows, :, a, :k].astype(np.float64)
            mask = source_mask[rows, :, a]
            target = y[rows].astype(np.float64)
            multi = bool(attr["multi_label"])

            def loss(prior: np.ndarray) -> float:
                fused, ok = _confidence_rule(probs, mask, prior, multi)
                p = np.clip(fused, 1e-6, 1 - 1e-6)
                if multi:
                    nll = -(target * np.log(p) + (1 - target) * np.log(1 - p)).sum(-1)
                else:
                    nll = -np.log((p * target).sum(-1))
                # a row left without evidence costs what a uniform guess would
                nll = np.where(ok, nll, k * np.log(2.0) if multi else np.log(k))
                if objective == "log_loss":
                    return float(nll.mean())
                if multi:
                    wrong = ((fused >= attr.get("threshold", 0.5)) != (target > 0.5)).any(-1)
                else:
                    wrong = fused.argmax(-1) != target.argmax(-1)
                wrong = wrong | ~ok
                return float(wrong.mean()) + 1e-3 * float(nll.mean())

            best = loss(weights)
            for _ in range(rounds):
                changed = False
                for s in range(S):
                    for g in grid:
                        trial = weights.copy()
                        trial[s] = g
                        if not trial.any():
                            continue
                        value = loss(trial)
                        if value < best - 1e-9:
                            best, weights, changed = value, trial, True
                if not changed:
                    break
        weights = weights / weights.max()  # only ratios matter; the most trusted source gets 1
        for s, name in enumerate(sources):
            fitted[name][attr["name"]] = round(float(weights[s]), 4)
    return fitted
