"""The one implementation of accuracy, F1, calibration and coverage (charattr_hf.metrics.core), checked against
scikit-learn on random data, and the places that use it: the ``evaluate`` modules, the run summary, fusion
training's scoring and the demo model's measurements."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, Features, Value

from charattr_hf.metrics import core

metrics = pytest.importorskip("sklearn.metrics")
calibration = pytest.importorskip("sklearn.calibration")


def _single(seed: int, n: int = 400, k: int = 5):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, ref, rng.integers(0, k + 1, n))  # label k: predicted, never true
    pred[rng.random(n) < 0.1] = -1  # missing
    conf = np.where(pred >= 0, rng.random(n), np.nan)
    return pred, ref, conf


def _multi(seed: int, n: int = 300, k: int = 6):
    rng = np.random.default_rng(seed)
    ref = (rng.random((n, k)) < 0.3).astype(np.int64)
    prob = np.clip(ref * 0.55 + rng.random((n, k)) * 0.6, 0.0, 0.999)
    prob[rng.random(n) < 0.1] = np.nan  # rows without evidence
    pred = np.where(np.isfinite(prob), (prob >= 0.5).astype(np.int64), -1)
    return pred, ref, prob


def _sklearn_ece(conf: np.ndarray, outcome: np.ndarray, bins: int) -> float:
    """ECE from scikit-learn's reliability curve (uniform bins) weighted by the bins' counts."""
    frac_true, mean_pred = calibration.calibration_curve(outcome, conf, n_bins=bins, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0.0, 1.0, bins + 1))[0]
    counts = counts[counts > 0]
    return float((counts * np.abs(frac_true - mean_pred)).sum() / counts.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_matches_sklearn(seed):
    pred, ref, conf = _single(seed)
    out = core.score_single_label(pred, ref, conf, threshold=0.4, num_bins=10)
    labels = sorted(set(ref.tolist()) | set(pred[pred >= 0].tolist()))
    assert out["accuracy"] == pytest.approx(metrics.accuracy_score(ref, pred))
    assert out["correct"] == int((pred == ref).sum()) and out["missing"] == int((pred < 0).sum())
    for average in ("macro", "weighted"):
        expected = metrics.f1_score(ref, pred, labels=labels, average=average, zero_division=0)
        assert out[f"{average}_f1"] == pytest.approx(expected)
    known = pred >= 0
    assert out["ece"] == pytest.approx(_sklearn_ece(conf[known], pred[known] == ref[known], 10))
    assert out["calibration_n"] == int(known.sum())
    kept = known & (conf >= 0.4)  # a missing prediction is an abstention: counted, never kept
    assert out["coverage"] == pytest.approx(kept.mean())
    assert out["selective_accuracy"] == pytest.approx(metrics.accuracy_score(ref[kept], pred[kept]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_label_matches_sklearn(seed):
    pred, ref, prob = _multi(seed)
    out = core.score_multi_label(pred, ref, prob, label_threshold=0.5, threshold=0.7, num_bins=12)
    as_sklearn = np.where(pred < 0, 0, pred)  # a missing row predicts no label
    known = (pred >= 0).all(1)  # a missing row is wrong even where its truth is the empty set
    exact_known = metrics.accuracy_score(ref[known], pred[known], normalize=False)
    assert out["subset_accuracy"] == pytest.approx(exact_known / len(ref))
    assert out["micro_f1"] == pytest.approx(metrics.f1_score(ref, as_sklearn, average="micro", zero_division=0))
    p, r, f, s = metrics.precision_recall_fscore_support(ref, as_sklearn, average=None, zero_division=0)
    per = out["per_label"]
    np.testing.assert_allclose(per["precision"], p)
    np.testing.assert_allclose(per["recall"], r)
    np.testing.assert_allclose(per["f1"], f)
    assert per["support"] == s.tolist()
    used = (ref.any(0) | as_sklearn.any(0)).nonzero()[0].tolist()
    assert out["macro_f1"] == pytest.approx(metrics.f1_score(ref, as_sklearn, labels=used, average="macro", zero_division=0))
    rows = np.isfinite(prob).all(1)
    assert out["ece"] == pytest.approx(_sklearn_ece(prob[rows].ravel(), ref[rows].ravel(), 12))
    present = prob[rows] >= 0.5
    conf = np.where(present, prob[rows], 1 - prob[rows])
    kept = conf >= 0.7
    assert out["decisions"] == ref.size and out["kept"] == int(kept.sum())
    assert out["selective_accuracy"] == pytest.approx((present == (ref[rows] > 0))[kept].mean())


def test_score_functions_are_what_the_evaluate_modules_return():
    from charattr_hf.metrics import CalibrationError, LabelAccuracy, LabelF1, SelectiveAccuracy

    pred, ref, conf = _single(5)
    out = core.score_single_label(pred, ref, conf)
    kw = {"predictions": pred, "references": ref}
    assert LabelAccuracy(keep_in_memory=True).compute(**kw).items() <= out.items()
    assert LabelF1(keep_in_memory=True).compute(**kw).items() <= out.items()
    cal = CalibrationError(keep_in_memory=True).compute(**kw, confidences=conf.tolist())
    assert (cal["ece"], cal["bins"]) == (out["ece"], out["reliability"])
    sel = SelectiveAccuracy(keep_in_memory=True).compute(**kw, confidences=conf.tolist())
    assert (sel["coverage"], sel["curve"]) == (out["coverage"], out["curve"])

    mpred, mref, mprob = _multi(5)
    out = core.score_multi_label(mpred, mref, mprob)
    mkw = {"predictions": mpred.tolist(), "references": mref.tolist()}
    assert LabelAccuracy("multilabel", keep_in_memory=True).compute(**mkw).items() <= out.items()
    assert LabelF1("multilabel", keep_in_memory=True).compute(**mkw)["per_label"] == out["per_label"]
    cal = CalibrationError("multilabel", keep_in_memory=True).compute(probabilities=mprob.tolist(),
                                                                     references=mref.tolist())
    assert cal["ece"] == pytest.approx(out["ece"], abs=1e-12)


def test_summary_counts_accuracy_as_the_evaluation_does(tmp_path):
    from charattr_hf.evaluation import FUSED, evaluate_annotations
    from charattr_hf.schema import Schema
    from charattr_hf.summary import summarize

    schema = Schema.from_dict({"name": "s", "attributes": {
        "hair": {"labels": ["black", "red", "blue", "green"]},
        "acc": {"multi_label": True, "labels": ["glasses", "hat", "scarf"]},
    }})
    rng = np.random.default_rng(11)
    n = 101
    pred_hair, ref_hair, _ = _single(11, n=n, k=4)
    pred_hair = np.where(pred_hair > 3, 0, pred_hair)
    pred_acc, ref_acc, _ = _multi(11, n=n, k=3)
    feats = Features({"id": Value("string"), "error": Value("string"), "flags": [Value("string")],
                      **schema.label_features(), "hair_confidence": Value("float32"), "acc_confidence": [Value("float32")],
                      "truth": schema.truth_feature()})
    rows = {
        "id": [str(i) for i in range(n)], "error": [None] * n, "flags": [[] for _ in range(n)],
        "hair": [None if p < 0 else int(p) for p in pred_hair],
        "hair_confidence": [None if p < 0 else float(c) for p, c in zip(pred_hair, rng.random(n))],
        "acc": [None if (p < 0).any() else np.flatnonzero(p).tolist() for p in pred_acc],
        "acc_confidence": [None if (p < 0).any() else [0.9] * int(p.sum()) for p in pred_acc],
        "truth": [{"hair": None if i % 13 == 0 else int(h), "acc": np.flatnonzero(a).tolist()}
                  for i, (h, a) in enumerate(zip(ref_hair, ref_acc))],
    }
    path = tmp_path / "part.parquet"
    Dataset.from_dict(rows, features=feats).to_parquet(str(path))
    stats = summarize([path], batch_rows=16)  # several batches: counts must add up
    report = evaluate_annotations(str(path), group_by=None)
    for name, key in (("hair", "accuracy"), ("acc", "subset_accuracy")):
        cell = report["attributes"][name]["results"][FUSED]["all"]
        assert stats["attributes"][name]["accuracy"] == pytest.approx(cell[key])
        assert stats["attributes"][name]["evaluated"] == cell["n"]
    assert stats["attributes"]["hair"]["evaluated"] == n - len(range(0, n, 13))


def test_demo_model_scores_match_sklearn():
    from charattr_hf.demo_clip import _score
    from charattr_hf.schema import load_schema

    schema = load_schema("synthetic")
    rng = np.random.default_rng(3)
    probs, truths = [], []
    for _ in range(300):
        p = {a.name: rng.dirichlet(np.ones(a.num_labels)).tolist() if not a.multi_label
             else rng.random(a.num_labels).tolist() for a in schema}
        t = {a.name: np.flatnonzero(rng.random(a.num_labels) < 0.3).tolist() if a.multi_label
             else int(rng.integers(a.num_labels)) for a in schema}
        probs.append(p)
        truths.append(t)
    out = _score(schema, probs, truths)
    for attr in schema:
        if attr.multi_label:
            y = np.zeros((len(truths), attr.num_labels), dtype=int)
            for r, t in enumerate(truths):
                y[r, t[attr.name]] = 1
            p = (np.array([q[attr.name] for q in probs]) >= attr.threshold).astype(int)
            f1 = metrics.f1_score(y, p, average=None, zero_division=0)
            assert [out[attr.name]["labels"][lab]["f1"] for lab in attr.label_names] == pytest.approx(f1.tolist())
            assert out[attr.name]["exact"] == pytest.approx(metrics.accuracy_score(y, p))
        else:
            y = [t[attr.name] for t in truths]
            p = [int(np.argmax(q[attr.name])) for q in probs]
            assert out[attr.name]["accuracy"] == pytest.approx(metrics.accuracy_score(y, p))


def test_fusion_scores_match_sklearn():
    from charattr_hf import fusion_training as ft

    ds = ft.simulate_annotated("synthetic", 300, seed=4, sources=("clip", "tags"))
    config = ft.build_config("synthetic", ds, hidden_size=8)
    data = ft.build_features(ds, config)
    columns = ds.to_dict()
    records = {r["attribute"]: r for r in ft.compare_methods(columns, data, config, baselines=(), include_sources=True)
               if r["method"] == "clip"}
    probs, avail = ft.method_probs("source:clip", columns, config)
    for i, attr in enumerate(config.attributes):
        k = len(attr["labels"])
        y = data.labels[:, i, :k]
        if attr["multi_label"]:
            pred = np.where(avail[:, i, None], probs[:, i, :k] >= attr["threshold"], -1)
            expected = float(((pred == y).all(1) & avail[:, i]).mean())
        else:
            pred = np.where(avail[:, i], probs[:, i, :k].argmax(-1), -1)
            expected = metrics.accuracy_score(y.argmax(-1), pred)
        assert records[attr["name"]]["accuracy"] == pytest.approx(expected)
