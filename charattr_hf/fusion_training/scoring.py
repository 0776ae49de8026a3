"""Scoring fusion methods on labelled rows: the sources alone, the fixed fusion rules and learned policies,
through the shared metrics of :mod:`charattr_hf.metrics.core` (used by the training recipe and
``benchmarks/fusion.py``)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..metrics import core as metric_core
from ..models.fusion import CharattrFusionConfig, CharattrFusionModel
from ..schema import probs_column
from ..stages.fusion import SimpleFusion
from .data import FusionData

__all__ = ["predict", "method_probs", "score", "compare_methods", "summarize"]


@torch.no_grad()
def predict(model: CharattrFusionModel, data: FusionData, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities ``(N, A, L)`` and availability ``(N, A)`` for every row of ``data``."""
    model.eval()
    device = model.label_bias.device
    probs, avail = [], []
    for start in range(0, len(data), batch_size):
        chunk = {k: torch.from_numpy(v[start : start + batch_size]).to(device) for k, v in data.inputs.items()}
        out = model(**chunk)
        probs.append(out.probs.float().cpu().numpy())
        avail.append(out.available.cpu().numpy())
    A, L = model.config.num_attributes, model.config.max_labels
    if not probs:
        return np.zeros((0, A, L), np.float32), np.zeros((0, A), bool)
    return np.concatenate(probs), np.concatenate(avail)


def _policy_vectors(policy: Any, columns: Mapping[str, Sequence], config: CharattrFusionConfig) -> dict[str, list]:
    if isinstance(policy, str):
        policy = SimpleFusion(config.to_schema(), sources=config.sources, method=policy)
    if isinstance(policy, CharattrFusionModel):
        return policy.fuse_columns(columns)
    if hasattr(policy, "fuse"):
        return policy.fuse(columns)
    if callable(policy):
        return policy(columns)
    raise TypeError(f"cannot use {type(policy).__name__} as a logging policy")


def method_probs(
    method: str, columns: Mapping[str, Sequence], config: CharattrFusionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Padded probabilities of a fixed method: ``"source:<name>"`` (one source alone) or a
    :class:`~charattr_hf.stages.fusion.SimpleFusion` rule (``"mean"``, ``"confidence"``, ``"vote"``)."""
    n = len(columns["id"]) if "id" in columns else len(next(iter(columns.values())))
    A, L = config.num_attributes, config.max_labels
    probs = np.zeros((n, A, L), dtype=np.float32)
    avail = np.zeros((n, A), dtype=bool)
    if method.startswith("source:"):
        col = columns.get(probs_column(method.split(":", 1)[1])) or [None] * n
        vectors = {a: [(cell or {}).get(a) for cell in col] for a in config.attribute_names}
    else:
        vectors = _policy_vectors(method, columns, config)
    for i, attr in enumerate(config.attributes):
        k = len(attr["labels"])
        for r, vec in enumerate(vectors[attr["name"]]):
            if vec is not None:
                probs[r, i, :k] = vec
                avail[r, i] = True
    return probs, avail


def score(
    probs: np.ndarray,
    available: np.ndarray,
    labels: np.ndarray,
    config: CharattrFusionConfig,
    method: str,
    groups: Sequence[Any] | None = None,
    num_bins: int = 15,
) -> list[dict]:
    """Accuracy and ECE per attribute (overall, and per group when ``groups`` is given) of one method.

    Counted as :mod:`charattr_hf.evaluation` counts (both call :mod:`charattr_hf.metrics.core`): rows without
    ground truth are skipped; a row where the method has no answer is a wrong answer for accuracy (``missing``)
    and is left out of ECE. Accuracy is exact match for multi-label attributes; ECE is top-label for single-label
    attributes and over per-label presence probabilities for multi-label ones."""
    records: list[dict] = []
    group_keys = None if groups is None else np.asarray([str(g) for g in groups])
    for i, attr in enumerate(config.attributes):
        k = len(attr["labels"])
        y = labels[:, i, :k]
        rows = np.flatnonzero((y >= 0).all(-1))
        if len(rows) == 0:
            continue
        p, y, ok = probs[rows, i, :k].astype(np.float64), y[rows], available[rows, i]
        if attr["multi_label"]:
            pred = np.where(ok[:, None], (p >= attr["threshold"]).astype(np.int64), -1)
            ref = (y > 0.5).astype(np.int64)
            conf = np.where(ok[:, None], p, np.nan)

            def measure(sel, pred=pred, ref=ref, conf=conf):
                out = metric_core.score_multi_label(pred[sel], ref[sel], conf[sel], num_bins=num_bins)
                return out["subset_accuracy"], out["ece"], out["missing"]
        else:
            pred = np.where(ok, p.argmax(-1), -1).astype(np.int64)
            ref = y.argmax(-1).astype(np.int64)
            conf = np.where(ok, p.max(-1) / np.clip(p.sum(-1), 1e-12, None), np.nan)

            def measure(sel, pred=pred, ref=ref, conf=conf):
                out = metric_core.score_single_label(pred[sel], ref[sel], conf[sel], num_bins=num_bins)
                return out["accuracy"], out["ece"], out["missing"]

        selections = [(None, np.arange(len(rows)))]
        if group_keys is not None:
            keys = group_keys[rows]
            selections += [(key, np.flatnonzero(keys == key)) for key in sorted(set(keys.tolist()))]
        for key, sel in selections:
            acc, ece, missing = measure(sel)
            records.append({"attribute": attr["name"], "method": method, "style": key, "accuracy": acc, "ece": ece,
                            "n": int(len(sel)), "missing": int(missing)})
    return records


def compare_methods(
    columns: Mapping[str, Sequence],
    data: FusionData,
    config: CharattrFusionConfig,
    policies: Mapping[str, CharattrFusionModel] | None = None,
    baselines: Iterable[str] = ("mean", "confidence", "vote"),
    include_sources: bool = True,
) -> list[dict]:
    """Records ``{"attribute", "method", "style", "accuracy", "ece", "n", "missing"}`` for every source alone,
    every fixed rule and every given policy, on the labelled rows of ``data`` (built from the same
    ``columns``); per group too when ``data.groups`` is set (``style`` None = all rows). See :func:`score`."""
    if data.labels is None:
        raise ValueError("comparing methods needs labels")
    methods = ([f"source:{s}" for s in config.sources] if include_sources else []) + list(baselines)
    records: list[dict] = []
    for method in methods:
        probs, avail = method_probs(method, columns, config)
        records += score(probs, avail, data.labels, config, method.replace("source:", ""), data.groups)
    for name, policy in (policies or {}).items():
        probs, avail = predict(policy, data)
        records += score(probs, avail, data.labels, config, name, data.groups)
    return records


def summarize(records: Sequence[Mapping[str, Any]], method: str, style: str | None = None) -> float:
    """Mean accuracy over attributes of one method (on one style, or all rows)."""
    accs = [r["accuracy"] for r in records
            if r["method"] == method and r.get("style") == style and r["accuracy"] is not None]
    return float(np.mean(accs)) if accs else float("nan")
