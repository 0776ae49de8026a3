"""The one implementation of accuracy, F1, calibration error and coverage in charattr-hf (NumPy).

Everything that scores labels uses it: :mod:`charattr_hf.evaluation` (the evaluation report), the run summary
(:mod:`charattr_hf.summary`), fusion training (:func:`charattr_hf.fusion_training.score`) and the demo model's
measurements (:func:`charattr_hf.demo_clip.evaluate_zero_shot`), through :func:`score_single_label` and
:func:`score_multi_label` or the single metrics below. The ``evaluate.Metric`` modules of
:mod:`charattr_hf.metrics` wrap the same functions for users of the ``evaluate`` library; each module file
stays a self-contained script that ``evaluate.load(<path>)`` can copy and import. The tests check the
arithmetic against scikit-learn on random data.

Conventions shared by every function here:

* single-label predictions and references are label indices; a **negative prediction means "missing"**
  (the source had no evidence, or the row failed). A missing prediction is wrong for accuracy and adds a
  false negative for the true label in F1, so a source that abstains is not flattered.
* multi-label predictions and references are 0/1 indicator matrices of shape ``(rows, labels)``; a row
  of a prediction matrix with any negative entry is missing (treated as "predicts no label" for F1, and
  wrong for exact match).
* references must be complete: rows without ground truth are dropped by the caller.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "DEFAULT_CURVE_THRESHOLDS",
    "input_features",
    "metric_info",
    "as_indicator_matrix",
    "multiclass_accuracy",
    "multiclass_f1",
    "multilabel_accuracy",
    "multilabel_f1",
    "multiclass_calibration",
    "multilabel_calibration",
    "multiclass_selective",
    "multilabel_selective",
    "score_single_label",
    "score_multi_label",
]

#: Confidence thresholds of the coverage/accuracy curve reported next to the chosen threshold.
DEFAULT_CURVE_THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def input_features(config_name: str, inputs: str) -> tuple[object, str | None]:
    """The ``datasets.Features`` and output format of a metric module's config.

    ``inputs``: ``"labels"`` (predictions and references: label indices, or 0/1 vectors for ``multilabel``) or
    ``"confidences"`` (label indices with the predicted label's confidence, or per-label presence
    probabilities with 0/1 references for ``multilabel``).
    """
    import datasets

    value, vector = datasets.Value, datasets.List
    multilabel = config_name == "multilabel"
    if not multilabel and config_name not in ("default", "multiclass"):
        raise ValueError(f"unknown config {config_name!r}; use 'multiclass' or 'multilabel'")
    if inputs == "labels":
        if multilabel:
            return datasets.Features({"predictions": vector(value("int32")), "references": vector(value("int32"))}), None
        return datasets.Features({"predictions": value("int64"), "references": value("int64")}), "numpy"
    if inputs == "confidences":
        # no numpy formatter: it would round float64 confidences to float32
        if multilabel:
            return datasets.Features(
                {"probabilities": vector(value("float64")), "references": vector(value("int32"))}
            ), None
        return datasets.Features(
            {"predictions": value("int64"), "references": value("int64"), "confidences": value("float64")}
        ), None
    raise ValueError(f"inputs must be 'labels' or 'confidences', got {inputs!r}")


def metric_info(config_name: str, inputs: str, description: str, inputs_description: str, citation: str = "",
                **extra: object):
    """The ``evaluate.MetricInfo`` of a metric module: its texts, and the features of :func:`input_features`."""
    import evaluate

    features, fmt = input_features(config_name, inputs)
    return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs_description,
                               features=features, format=fmt, **extra)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def as_indicator_matrix(values: object, what: str, dtype: type = np.int64) -> np.ndarray:
    """``values`` (list of equal-length lists, or a 2-D array) as a 2-D array, with a clear error otherwise."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return values.astype(dtype, copy=False)
    rows = list(values)  # type: ignore[arg-type]
    if not rows:
        return np.zeros((0, 0), dtype=dtype)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"{what}: every row must have the same number of labels, got lengths {sorted(lengths)}")
    return np.asarray(rows, dtype=dtype).reshape(len(rows), lengths.pop())


def _check_same_rows(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names}: different numbers of rows ({a.shape[0]} vs {b.shape[0]})")


# ----------------------------------------------------------------------------------------------- accuracy
def multiclass_accuracy(predictions: Sequence[int], references: Sequence[int]) -> dict:
    """Accuracy over all rows; missing predictions (negative) count as wrong. ``correct`` and ``n`` are the
    counts behind it (so that results of several batches add up)."""
    pred = np.asarray(predictions, dtype=np.int64).reshape(-1)
    ref = np.asarray(references, dtype=np.int64).reshape(-1)
    _check_same_rows(pred, ref, "predictions/references")
    if (ref < 0).any():
        raise ValueError("references contain negative (missing) labels; drop rows without ground truth first")
    n = int(ref.size)
    correct = int((pred == ref).sum())
    return {"accuracy": _ratio(correct, n), "n": n, "correct": correct, "missing": int((pred < 0).sum())}


def multilabel_accuracy(predictions: object, references: object) -> dict:
    """Exact-match (subset) accuracy; a missing row is wrong (``correct``: exactly right rows)."""
    pred = as_indicator_matrix(predictions, "predictions")
    ref = as_indicator_matrix(references, "references")
    _check_same_rows(pred, ref, "predictions/references")
    n = int(ref.shape[0])
    if n == 0:
        return {"subset_accuracy": None, "n": 0, "correct": 0, "missing": 0}
    if pred.shape != ref.shape:
        raise ValueError(f"predictions have {pred.shape[1]} labels, references {ref.shape[1]}")
    missing = (pred < 0).any(axis=1)
    correct = int(((pred == ref).all(axis=1) & ~missing).sum())
    return {"subset_accuracy": _ratio(correct, n), "n": n, "correct": correct, "missing": int(missing.sum())}


# ----------------------------------------------------------------------------------------------- F1
def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros(tp.shape, dtype=np.float64), where=den > 0)


def multiclass_f1(
    predictions: Sequence[int], references: Sequence[int], labels: Iterable[int] | None = None
) -> dict:
    """Macro-F1 (unweighted mean of per-label F1) and weighted F1.

    ``labels`` defaults to the labels occurring in the references or the (non-missing) predictions, as in
    scikit-learn: a label that nobody predicts and nobody has would otherwise add an arbitrary 0 or 1.
    A missing prediction adds a false negative to its row's true label and no false positive.
    """
    pred = np.asarray(predictions, dtype=np.int64).reshape(-1)
    ref = np.asarray(references, dtype=np.int64).reshape(-1)
    _check_same_rows(pred, ref, "predictions/references")
    if labels is None:
        labels_arr = np.union1d(ref[ref >= 0], pred[pred >= 0])
    else:
        labels_arr = np.asarray(sorted(set(int(x) for x in labels)), dtype=np.int64)
    if labels_arr.size == 0:
        return {"macro_f1": None, "weighted_f1": None}
    tp = np.array([np.sum((pred == c) & (ref == c)) for c in labels_arr], dtype=np.float64)
    fp = np.array([np.sum((pred == c) & (ref != c)) for c in labels_arr], dtype=np.float64)
    fn = np.array([np.sum((pred != c) & (ref == c)) for c in labels_arr], dtype=np.float64)
    f1 = _f1(tp, fp, fn)
    support = tp + fn
    return {
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else None,
    }


def multilabel_f1(predictions: object, references: object) -> dict:
    """Micro precision/recall/F1 over all (row, label) pairs, macro-F1 over labels, and per label (``per_label``:
    lists ``f1``, ``precision``, ``recall``, ``support`` indexed by label; 0 where undefined, as scikit-learn's
    ``zero_division=0``).

    Macro-F1 averages over the labels that occur in the references or the predictions (see
    :func:`multiclass_f1`). Missing rows predict no label: every true label of such a row is a false negative.
    """
    pred = as_indicator_matrix(predictions, "predictions")
    ref = as_indicator_matrix(references, "references")
    _check_same_rows(pred, ref, "predictions/references")
    if ref.shape[0] == 0:
        return {"micro_f1": None, "macro_f1": None, "micro_precision": None, "micro_recall": None, "per_label": None}
    if pred.shape != ref.shape:
        raise ValueError(f"predictions have {pred.shape[1]} labels, references {ref.shape[1]}")
    missing = (pred < 0).any(axis=1)
    p = (pred > 0) & ~missing[:, None]
    y = ref > 0
    tp = (p & y).sum(0).astype(np.float64)
    fp = (p & ~y).sum(0).astype(np.float64)
    fn = (~p & y).sum(0).astype(np.float64)
    used = (p | y).any(0)
    f1 = _f1(tp, fp, fn)
    tps, fps, fns = tp.sum(), fp.sum(), fn.sum()
    zeros = np.zeros(tp.shape, dtype=np.float64)
    precision = np.divide(tp, tp + fp, out=zeros.copy(), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=zeros.copy(), where=(tp + fn) > 0)
    return {
        "micro_f1": _ratio(2 * tps, 2 * tps + fps + fns) if (tps + fps + fns) else None,
        "macro_f1": float(f1[used].mean()) if used.any() else None,
        "micro_precision": _ratio(tps, tps + fps),
        "micro_recall": _ratio(tps, tps + fns),
        "per_label": {
            "f1": f1.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "support": (tp + fn).astype(np.int64).tolist(),
        },
    }


# ----------------------------------------------------------------------------------------------- calibration
def _calibration(conf: np.ndarray, outcome: np.ndarray, num_bins: int) -> dict:
    """ECE/MCE of confidences against 0/1 outcomes with ``num_bins`` equal-width bins.

    Bin ``b`` holds confidences in ``(b / num_bins, (b + 1) / num_bins]`` (the first bin also holds 0).
    ECE = sum over bins of (rows in bin / rows) * |mean outcome - mean confidence|.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    n = int(conf.size)
    if n == 0:
        return {"ece": None, "mce": None, "mean_confidence": None, "n": 0, "bins": []}
    conf = np.clip(conf, 0.0, 1.0)
    idx = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(idx, minlength=num_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=num_bins)
    sum_out = np.bincount(idx, weights=outcome.astype(np.float64), minlength=num_bins)
    nonempty = count > 0
    mean_conf = np.divide(sum_conf, count, out=np.zeros(num_bins), where=nonempty)
    mean_out = np.divide(sum_out, count, out=np.zeros(num_bins), where=nonempty)
    gap = np.abs(mean_out - mean_conf)
    bins = [
        {
            "lower": b / num_bins,
            "upper": (b + 1) / num_bins,
            "count": int(count[b]),
            "confidence": float(mean_conf[b]),
            "accuracy": float(mean_out[b]),
        }
        for b in range(num_bins)
        if nonempty[b]
    ]
    return {
        "ece": float((count * gap).sum() / n),
        "mce": float(gap[nonempty].max()),
        "mean_confidence": float(conf.mean()),
        "n": n,
        "bins": bins,
    }


def multiclass_calibration(
    predictions: Sequence[int], references: Sequence[int], confidences: Sequence[float], num_bins: int = 15
) -> dict:
    """Top-label ECE: confidence of the predicted label against whether it is right.

    Rows with a missing prediction or a non-finite confidence carry no confidence and are left out
    (``n`` says how many rows were used).
    """
    pred = np.asarray(predictions, dtype=np.int64).reshape(-1)
    ref = np.asarray(references, dtype=np.int64).reshape(-1)
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    _check_same_rows(pred, ref, "predictions/references")
    _check_same_rows(pred, conf, "predictions/confidences")
    keep = (pred >= 0) & np.isfinite(conf)
    return _calibration(conf[keep], pred[keep] == ref[keep], num_bins)


def multilabel_calibration(probabilities: object, references: object, num_bins: int = 15) -> dict:
    """ECE of per-label presence probabilities against presence, over all (row, label) pairs.

    Rows whose probabilities contain a non-finite value (a source without evidence) are left out.
    """
    prob = as_indicator_matrix(probabilities, "probabilities", dtype=np.float64)
    ref = as_indicator_matrix(references, "references")
    _check_same_rows(prob, ref, "probabilities/references")
    if prob.shape[0] == 0:
        return _calibration(np.zeros(0), np.zeros(0), num_bins)
    if prob.shape != ref.shape:
        raise ValueError(f"probabilities have {prob.shape[1]} labels, references {ref.shape[1]}")
    keep = np.isfinite(prob).all(axis=1)
    return _calibration(prob[keep].reshape(-1), (ref[keep] > 0).reshape(-1), num_bins)


# ----------------------------------------------------------------------------------------------- coverage
def _selective(conf: np.ndarray, correct: np.ndarray, threshold: float, thresholds: Iterable[float]) -> dict:
    """Coverage and accuracy when decisions with confidence below a threshold are withheld.

    ``conf`` is NaN for decisions that cannot be made at all (missing prediction): never kept, but counted
    in the coverage denominator.
    """
    n = int(conf.size)

    def at(t: float) -> dict:
        kept = np.isfinite(conf) & (conf >= t)
        k = int(kept.sum())
        return {
            "threshold": float(t),
            "coverage": _ratio(k, n),
            "accuracy": _ratio(int(correct[kept].sum()), k),
            "kept": k,
        }

    main = at(threshold)
    return {
        "coverage": main["coverage"],
        "accuracy": main["accuracy"],
        "kept": main["kept"],
        "n": n,
        "threshold": float(threshold),
        "curve": [at(t) for t in thresholds],
    }


def multiclass_selective(
    predictions: Sequence[int],
    references: Sequence[int],
    confidences: Sequence[float],
    threshold: float = 0.5,
    thresholds: Iterable[float] = DEFAULT_CURVE_THRESHOLDS,
) -> dict:
    """Keep rows whose top-label confidence is >= ``threshold``: coverage = kept / rows, accuracy on kept."""
    pred = np.asarray(predictions, dtype=np.int64).reshape(-1)
    ref = np.asarray(references, dtype=np.int64).reshape(-1)
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1).copy()
    _check_same_rows(pred, ref, "predictions/references")
    _check_same_rows(pred, conf, "predictions/confidences")
    conf[pred < 0] = np.nan
    return _selective(conf, pred == ref, threshold, thresholds)


def multilabel_selective(
    probabilities: object,
    references: object,
    threshold: float = 0.5,
    label_threshold: float = 0.5,
    thresholds: Iterable[float] = DEFAULT_CURVE_THRESHOLDS,
) -> dict:
    """Per (row, label) decision: present iff probability >= ``label_threshold``, with confidence ``p``
    when present and ``1 - p`` when absent. Decisions below ``threshold`` are withheld; coverage and
    accuracy count label decisions, not rows. Rows without probabilities are withheld entirely.
    """
    prob = as_indicator_matrix(probabilities, "probabilities", dtype=np.float64)
    ref = as_indicator_matrix(references, "references")
    _check_same_rows(prob, ref, "probabilities/references")
    if prob.shape[0] and prob.shape != ref.shape:
        raise ValueError(f"probabilities have {prob.shape[1]} labels, references {ref.shape[1]}")
    prob = prob.copy()
    prob[~np.isfinite(prob).all(axis=1)] = np.nan
    present = prob >= label_threshold
    conf = np.where(present, prob, 1.0 - prob)
    correct = present == (ref > 0)
    return _selective(conf.reshape(-1), correct.reshape(-1), threshold, thresholds)


# ----------------------------------------------------------------------------------------------- all at once
def score_single_label(
    predictions: Sequence[int],
    references: Sequence[int],
    confidences: Sequence[float] | None = None,
    *,
    threshold: float = 0.5,
    num_bins: int = 15,
    thresholds: Iterable[float] = DEFAULT_CURVE_THRESHOLDS,
    labels: Iterable[int] | None = None,
) -> dict:
    """Every metric of one single-label attribute: ``n``, ``correct``, ``missing``, ``accuracy``, ``macro_f1``,
    ``weighted_f1``; with ``confidences`` (of the predicted label) also ``ece``, ``mce``, ``mean_confidence``,
    ``calibration_n``, ``reliability`` (bins), and ``coverage``, ``selective_accuracy``, ``kept``, ``curve``
    when abstaining below ``threshold``; without, those are None (empty lists for bins and curve)."""
    acc = multiclass_accuracy(predictions, references)
    f1 = multiclass_f1(predictions, references, labels=labels)
    out = {**acc, **f1, "ece": None, "mce": None, "mean_confidence": None, "calibration_n": 0, "reliability": [],
           "coverage": None, "selective_accuracy": None, "kept": None, "curve": []}
    if confidences is not None:
        cal = multiclass_calibration(predictions, references, confidences, num_bins)
        sel = multiclass_selective(predictions, references, confidences, threshold, thresholds)
        out.update(ece=cal["ece"], mce=cal["mce"], mean_confidence=cal["mean_confidence"], calibration_n=cal["n"],
                   reliability=cal["bins"], coverage=sel["coverage"], selective_accuracy=sel["accuracy"],
                   kept=sel["kept"], curve=sel["curve"])
    return out


def score_multi_label(
    predictions: object,
    references: object,
    probabilities: object | None = None,
    *,
    label_threshold: float = 0.5,
    threshold: float = 0.5,
    num_bins: int = 15,
    thresholds: Iterable[float] = DEFAULT_CURVE_THRESHOLDS,
) -> dict:
    """Every metric of one multi-label attribute: ``n``, ``correct``, ``missing``, ``subset_accuracy``, micro and
    macro F1, micro precision and recall, ``per_label``; with the presence ``probabilities`` (NaN rows: no
    evidence) also ECE over (row, label) pairs and coverage over per-label decisions (``decisions``); without,
    those are None (empty lists for bins and curve). ``label_threshold``: presence threshold of the decisions."""
    out = {**multilabel_accuracy(predictions, references), **multilabel_f1(predictions, references),
           "ece": None, "mce": None, "calibration_n": 0, "reliability": [], "coverage": None,
           "selective_accuracy": None, "kept": None, "decisions": None, "curve": []}
    if probabilities is not None:
        cal = multilabel_calibration(probabilities, references, num_bins)
        sel = multilabel_selective(probabilities, references, threshold, label_threshold, thresholds)
        out.update(ece=cal["ece"], mce=cal["mce"], calibration_n=cal["n"], reliability=cal["bins"],
                   coverage=sel["coverage"], selective_accuracy=sel["accuracy"], kept=sel["kept"], decisions=sel["n"],
                   curve=sel["curve"])
    return out
