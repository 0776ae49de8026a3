"""Evaluation against ground truth: metric modules (checked by hand and against scikit-learn), the
``evaluate_annotations`` report, joining labels by id, groups, missing predictions, and the recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from charattr_hf.evaluation import (
    ALL_GROUP,
    FUSED,
    EvaluationError,
    evaluate_annotations,
    schema_from_features,
    to_markdown,
    write_report,
)
from charattr_hf.metrics import (
    CalibrationError,
    LabelAccuracy,
    LabelF1,
    SelectiveAccuracy,
    load_metric,
    metric_path,
)
from charattr_hf.schema import Schema

REPO = Path(__file__).resolve().parents[1]

SCHEMA = Schema.from_dict(
    {
        "name": "tiny",
        "attributes": {
            "hair_color": {"labels": ["black", "blonde", "red"]},
            "accessories": {"multi_label": True, "labels": ["glasses", "hat", "scarf"]},
        },
    }
)

# ------------------------------------------------------------------------------------------ the hand-made case
# hair_color (black=0, blonde=1, red=2). Rows 0-5 have truth, row 6 has none (skipped).
#   row  truth  fused (conf)  clip probs            style
#   0    0      0 (0.90)      [0.90, 0.05, 0.05]    flat     right / right
#   1    1      1 (0.65)      [0.30, 0.50, 0.20]    flat     right / right
#   2    2      1 (0.70)      [0.10, 0.20, 0.70]    sketch   wrong / right
#   3    1      1 (0.45)      None                  flat     right / missing
#   4    2      None (error)  [0.50, 0.25, 0.25]    sketch   missing / wrong
#   5    2      2 (0.85)      [0.10, 0.10, 0.80]    sketch   right / right
#   6    None   0 (0.80)      [0.20, 0.30, 0.50]    sketch   skipped
# Fused, all rows with truth: accuracy 4/6, missing 1.
#   macro-F1 over labels {0,1,2}: black 1, blonde 2*2/(4+1+0)=0.8, red 2*1/(2+0+2)=0.5 -> 2.3/3.
#   ECE, 15 bins: rows 0,1,2,3,5 land in bins 13,9,10,6,12 (no two share one), so
#   ECE = (0.10 + 0.35 + 0.70 + 0.55 + 0.15) / 5 = 0.37 (row 4 has no confidence and is left out).
#   Abstaining below 0.5 keeps rows 0,1,2,5: coverage 4/6, accuracy on them 3/4.
# accessories (glasses=0, hat=1, scarf=2), fused:
#   row  truth   fused     clip probs
#   0    [0]     [0]       [0.9, 0.1, 0.2]      exact / exact
#   1    []      []        [0.3, 0.2, 0.1]      exact / exact
#   2    [1,2]   [1]       [0.2, 0.7, 0.6]      wrong / exact
#   3    [1]     [0,1]     None                 wrong / missing
#   4    [0]     None      [0.4, 0.1, 0.1]      missing / wrong
#   5    None    [0]       [0.5, 0.5, 0.5]      skipped
#   6    [2]     [2]       [0.1, 0.3, 0.9]      exact / exact
# Fused: exact match 3/6. TP/FP/FN: glasses 1/1/1, hat 2/0/0, scarf 1/0/1 -> micro-F1 8/11,
#   macro-F1 (0.5 + 1 + 2/3) / 3.

HAIR_TRUTH = [0, 1, 2, 1, 2, 2, None]
HAIR_FUSED = [0, 1, 1, 1, None, 2, 0]
HAIR_CONF = [0.90, 0.65, 0.70, 0.45, None, 0.85, 0.80]
HAIR_CLIP = [
    [0.90, 0.05, 0.05],
    [0.30, 0.50, 0.20],
    [0.10, 0.20, 0.70],
    None,
    [0.50, 0.25, 0.25],
    [0.10, 0.10, 0.80],
    [0.20, 0.30, 0.50],
]
ACC_TRUTH = [[0], [], [1, 2], [1], [0], None, [2]]
ACC_FUSED = [[0], [], [1], [0, 1], None, [0], [2]]
ACC_CLIP = [[0.9, 0.1, 0.2], [0.3, 0.2, 0.1], [0.2, 0.7, 0.6], None, [0.4, 0.1, 0.1], [0.5, 0.5, 0.5], [0.1, 0.3, 0.9]]
STYLES = ["flat", "flat", "sketch", "flat", "sketch", "sketch", "sketch"]
IDS = [f"img-{i}" for i in range(7)]


def _features() -> Features:
    feats = SCHEMA.output_features(sources=("clip", "tags"))
    feats["truth"] = SCHEMA.truth_feature()
    feats["style"] = Value("string")
    return Features(feats)


def make_annotated(with_truth: bool = True) -> Dataset:
    n = len(IDS)
    rows = {name: [None] * n for name in _features()}
    rows.update(
        id=IDS,
        index=list(range(n)),
        flags=[[] for _ in range(n)],
        error=[None, None, None, None, "decode: broken file", None, None],
        style=STYLES,
        hair_color=HAIR_FUSED,
        hair_color_confidence=HAIR_CONF,
        accessories=ACC_FUSED,
        accessories_confidence=[None if f is None else [0.8] * len(f) for f in ACC_FUSED],
        probs_clip=[
            None if (h is None and a is None) else {"hair_color": h, "accessories": a}
            for h, a in zip(HAIR_CLIP, ACC_CLIP)
        ],
        # the tag source ran but found nothing for these rows
        probs_tags=[{"hair_color": None, "accessories": None}] * n,
        truth=[{"hair_color": h, "accessories": a} for h, a in zip(HAIR_TRUTH, ACC_TRUTH)],
    )
    ds = Dataset.from_dict(rows, features=_features())
    return ds if with_truth else ds.remove_columns("truth")


def cell(report: dict, attr: str, source: str, group: str = ALL_GROUP) -> dict:
    return report["attributes"][attr]["results"][source][group]


# ------------------------------------------------------------------------------------------ metric modules
def test_metric_modules_by_hand():
    acc = LabelAccuracy(keep_in_memory=True).compute(predictions=[0, 1, 1, 1, -1, 2], references=[0, 1, 2, 1, 2, 2])
    assert acc == {"accuracy": pytest.approx(4 / 6), "n": 6, "correct": 4, "missing": 1}
    f1 = LabelF1(keep_in_memory=True).compute(predictions=[0, 1, 1, 1, -1, 2], references=[0, 1, 2, 1, 2, 2])
    assert f1["macro_f1"] == pytest.approx((1 + 0.8 + 0.5) / 3)
    # two rows share bin 13 (0.9 and 0.92): mean confidence 0.91, accuracy 0.5 -> ECE 0.41
    ece = CalibrationError(keep_in_memory=True).compute(predictions=[1, 1], references=[1, 0], confidences=[0.9, 0.92])
    assert ece["ece"] == pytest.approx(0.41)
    assert ece["mean_confidence"] == pytest.approx(0.91)
    assert [b["count"] for b in ece["bins"]] == [2]
    # a missing prediction has no confidence: left out of ECE
    ece2 = CalibrationError(keep_in_memory=True).compute(
        predictions=[0, -1, 1], references=[0, 0, 0], confidences=[0.75, 0.99, 0.5]
    )
    assert ece2["n"] == 2 and ece2["ece"] == pytest.approx((0.25 + 0.5) / 2)
    sel = SelectiveAccuracy(keep_in_memory=True).compute(
        predictions=[0, 1, 2, -1], references=[0, 0, 2, 2], confidences=[0.9, 0.4, 0.6, float("nan")], threshold=0.5
    )
    assert sel["coverage"] == pytest.approx(2 / 4) and sel["accuracy"] == 1.0 and sel["kept"] == 2
    at0 = next(p for p in sel["curve"] if p["threshold"] == 0.0)
    assert at0["coverage"] == pytest.approx(3 / 4) and at0["accuracy"] == pytest.approx(2 / 3)


def test_multilabel_modules_by_hand():
    pred = [[1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 0], [-1, -1, -1], [0, 0, 1]]
    ref = [[1, 0, 0], [0, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
    acc = LabelAccuracy("multilabel", keep_in_memory=True).compute(predictions=pred, references=ref)
    assert acc == {"subset_accuracy": 0.5, "n": 6, "correct": 3, "missing": 1}
    f1 = LabelF1("multilabel", keep_in_memory=True).compute(predictions=pred, references=ref)
    assert f1["micro_f1"] == pytest.approx(8 / 11)
    assert f1["macro_f1"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert f1["micro_precision"] == pytest.approx(4 / 5) and f1["micro_recall"] == pytest.approx(4 / 6)
    # presence probabilities 0.9->1, 0.1->0, 0.7->0, 0.35->1, each alone in its bin
    probs, refs = [[0.9, 0.1], [0.7, 0.35]], [[1, 0], [0, 1]]
    ece = CalibrationError("multilabel", keep_in_memory=True).compute(probabilities=probs, references=refs)
    assert ece["ece"] == pytest.approx((0.1 + 0.1 + 0.7 + 0.65) / 4) and ece["n"] == 4
    sel = SelectiveAccuracy("multilabel", keep_in_memory=True)
    # decisions: present .9 (right), absent .9 (right), present .7 (wrong), absent .65 (wrong)
    r = sel.compute(probabilities=probs, references=refs, threshold=0.75)
    assert (r["coverage"], r["accuracy"], r["n"]) == (0.5, 1.0, 4)
    r = sel.compute(probabilities=probs, references=refs, threshold=0.6)
    assert (r["coverage"], r["accuracy"]) == (1.0, 0.5)


def test_metrics_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.6, ref, rng.integers(0, 6, 300))  # label 5 is predicted, never true
    pred[rng.random(300) < 0.1] = -1  # missing
    f1 = LabelF1(keep_in_memory=True).compute(predictions=pred, references=ref)
    labels = sorted(set(ref.tolist()) | set(pred[pred >= 0].tolist()))
    assert f1["macro_f1"] == pytest.approx(metrics.f1_score(ref, pred, labels=labels, average="macro", zero_division=0))
    assert f1["weighted_f1"] == pytest.approx(
        metrics.f1_score(ref, pred, labels=labels, average="weighted", zero_division=0)
    )
    acc = LabelAccuracy(keep_in_memory=True).compute(predictions=pred, references=ref)
    assert acc["accuracy"] == pytest.approx(metrics.accuracy_score(ref, pred))

    y = (rng.random((200, 6)) < 0.3).astype(int)
    y[:, 5] = 0  # a label nobody has...
    p = np.where(rng.random((200, 6)) < 0.8, y, 1 - y)
    p[:, 4] = 0
    y[:, 4] = 0  # ...and one nobody has nor predicts: left out of the macro average
    ml = LabelF1("multilabel", keep_in_memory=True).compute(predictions=p.tolist(), references=y.tolist())
    used = [j for j in range(6) if y[:, j].any() or p[:, j].any()]
    assert 4 not in used and 5 in used
    assert ml["micro_f1"] == pytest.approx(metrics.f1_score(y, p, average="micro", zero_division=0))
    assert ml["macro_f1"] == pytest.approx(metrics.f1_score(y, p, labels=used, average="macro", zero_division=0))
    sub = LabelAccuracy("multilabel", keep_in_memory=True).compute(predictions=p.tolist(), references=y.tolist())
    assert sub["subset_accuracy"] == pytest.approx(metrics.accuracy_score(y, p))


def test_evaluate_load_local_module_offline(tmp_path, monkeypatch):
    import evaluate

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    modules = tmp_path / "modules"
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", str(modules))
    f1 = evaluate.load(metric_path("label_f1"), "multilabel", keep_in_memory=True, cache_dir=str(tmp_path / "m"))
    assert type(f1).__name__ == "LabelF1" and f1.config_name == "multilabel"
    assert f1.compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])["micro_f1"] == pytest.approx(0.8)
    assert any(modules.rglob("label_f1.py")), "evaluate should copy the script into its modules cache"
    combined = evaluate.combine([load_metric("label_accuracy"), load_metric("label_f1")])
    out = combined.compute(predictions=[0, 1, -1], references=[0, 1, 1])
    assert out["accuracy"] == pytest.approx(2 / 3) and out["missing"] == 1 and "macro_f1" in out
    assert not any(workdir.iterdir()), "nothing may be written to the working directory"
    assert not list((tmp_path / "m").rglob("*.arrow")), "keep_in_memory leaves no Arrow cache files"


# ------------------------------------------------------------------------------------------ schema
def test_schema_from_features():
    schema = schema_from_features(make_annotated().features)
    assert schema.attribute_names == ["hair_color", "accessories"]
    assert schema["hair_color"].label_names == ["black", "blonde", "red"] and not schema["hair_color"].multi_label
    assert schema["accessories"].multi_label and schema["accessories"].threshold == 0.5
    with pytest.raises(EvaluationError, match="--schema"):
        schema_from_features(Features({"id": Value("string")}))
    # truth typed with a subset of the labels, in another order: the prediction column's labels win
    subset = Features({"hair_color": ClassLabel(names=["a", "b", "c"]), "truth": {"hair_color": ClassLabel(names=["c", "a"])}})
    assert schema_from_features(subset)["hair_color"].label_names == ["a", "b", "c"]
    clash = Features({"hair_color": ClassLabel(names=["a", "b"]), "truth": {"hair_color": ClassLabel(names=["b", "z"])}})
    with pytest.raises(EvaluationError, match=r"\['z'\] cannot be predicted"):
        schema_from_features(clash)


# ------------------------------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def report() -> dict:
    return evaluate_annotations(make_annotated())


def test_report_fused_single_label(report):
    c = cell(report, "hair_color", FUSED)
    assert (c["n"], c["missing"]) == (6, 1)
    assert c["accuracy"] == pytest.approx(4 / 6)
    assert c["macro_f1"] == pytest.approx(2.3 / 3)
    assert c["ece"] == pytest.approx(0.37, abs=1e-6)  # confidences are stored as float32
    assert c["calibration_n"] == 5 and c["mean_confidence"] == pytest.approx((0.45 + 0.65 + 0.7 + 0.85 + 0.9) / 5)
    assert c["coverage"] == pytest.approx(4 / 6) and c["selective_accuracy"] == pytest.approx(3 / 4)
    assert report["attributes"]["hair_color"]["rows_with_truth"] == 6


def test_report_sources_and_missing(report):
    assert report["sources"] == ["clip", FUSED]  # 'tags' has no probabilities at all: left out
    assert any("tags" in note for note in report["notes"])
    clip = cell(report, "hair_color", "clip")
    assert (clip["accuracy"], clip["missing"]) == (pytest.approx(4 / 6), 1)
    # clip kept rows with max prob >= 0.5: rows 0, 1, 2, 4, 5 (row 4 wrong) -> coverage 5/6, accuracy 4/5
    assert clip["coverage"] == pytest.approx(5 / 6) and clip["selective_accuracy"] == pytest.approx(4 / 5)
    ml = cell(report, "accessories", "clip")
    assert (ml["n"], ml["missing"], ml["subset_accuracy"]) == (6, 1, pytest.approx(4 / 6))
    assert ml["ece"] is not None and ml["calibration_n"] == 5 * 3


def test_report_fused_multi_label(report):
    c = cell(report, "accessories", FUSED)
    assert (c["n"], c["missing"]) == (6, 1)
    assert c["subset_accuracy"] == pytest.approx(3 / 6)
    assert c["micro_f1"] == pytest.approx(8 / 11)
    assert c["macro_f1"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert c["ece"] is None and c["coverage"] is None  # only the chosen labels' confidences are stored


def test_report_groups_by_style(report):
    assert report["group_by"] == "style" and report["groups"] == [ALL_GROUP, "flat", "sketch"]
    flat, sketch = cell(report, "hair_color", FUSED, "flat"), cell(report, "hair_color", FUSED, "sketch")
    assert (flat["n"], flat["accuracy"], flat["missing"]) == (3, 1.0, 0)
    assert (sketch["n"], sketch["accuracy"], sketch["missing"]) == (3, pytest.approx(1 / 3), 1)
    summary = report["summary"][FUSED]
    assert summary[ALL_GROUP]["mean_accuracy"] == pytest.approx(4 / 6) and summary[ALL_GROUP]["num_attributes"] == 1
    assert summary["sketch"]["mean_accuracy"] == pytest.approx(1 / 3)
    ungrouped = evaluate_annotations(make_annotated(), group_by="none")
    assert ungrouped["groups"] == [ALL_GROUP]


def test_mean_accuracy_over_single_label_attributes():
    schema = Schema.from_dict({"name": "two", "attributes": {"a": {"labels": ["x", "y"]}, "b": {"labels": ["u", "v"]}}})
    feats = Features({"id": Value("string"), "a": schema["a"].class_label(), "b": schema["b"].class_label(),
                      "truth": schema.truth_feature()})
    ds = Dataset.from_dict(
        {"id": ["0", "1", "2", "3"], "a": [0, 0, 1, 1], "b": [0, 1, 1, 1],
         "truth": [{"a": 0, "b": 0}, {"a": 0, "b": 0}, {"a": 0, "b": 1}, {"a": 1, "b": None}]},
        features=feats,
    )
    rep = evaluate_annotations(ds)
    # a: 3/4 right; b: rows 0-2 have truth, 2/3 right -> mean (3/4 + 2/3) / 2
    assert rep["summary"][FUSED][ALL_GROUP]["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert rep["summary"][FUSED][ALL_GROUP]["num_attributes"] == 2
    # grouping by a ClassLabel field of a struct uses the label names
    by_truth = evaluate_annotations(ds, group_by="truth.a")
    assert by_truth["groups"] == [ALL_GROUP, "x", "y"]
    assert cell(by_truth, "a", FUSED, "x")["accuracy"] == pytest.approx(2 / 3)


def test_labels_from_jsonl_and_saved_dataset(tmp_path):
    schema = Schema.from_dict({"name": "one", "attributes": {"a": {"labels": ["x", "y"]}}})
    ds = Dataset.from_dict({"id": ["1", "2", "3"], "a": [0, 1, 1]},
                           features=Features({"id": Value("string"), "a": schema["a"].class_label()}))
    ds.save_to_disk(str(tmp_path / "saved"))
    # integer ids in the labels file, string ids in the dataset: compared as strings
    (tmp_path / "labels.jsonl").write_text('{"id": 1, "a": "x"}\n{"id": 2, "a": "x"}\n{"id": 3, "a": "y"}\n')
    rep = evaluate_annotations(str(tmp_path / "saved"), labels=str(tmp_path / "labels.jsonl"))
    assert cell(rep, "a", FUSED)["accuracy"] == pytest.approx(2 / 3)
    assert rep["labels"]["matched_rows"] == 3


def test_join_labels_by_id(tmp_path):
    # labels as names in per-attribute columns, a different row order, an extra id and a missing one
    order = [5, 3, 0, 2, 1, 4]
    names = SCHEMA["hair_color"].label_names
    acc_names = SCHEMA["accessories"].label_names
    labels = Dataset.from_dict(
        {
            "image_id": [IDS[i] for i in order] + ["not-annotated"],
            "hair_color": [None if HAIR_TRUTH[i] is None else names[HAIR_TRUTH[i]] for i in order] + ["red"],
            "accessories": [None if ACC_TRUTH[i] is None else [acc_names[j] for j in ACC_TRUTH[i]] for i in order]
            + [["hat"]],
        }
    )
    path = tmp_path / "labels.parquet"
    labels.to_parquet(str(path))
    joined = evaluate_annotations(make_annotated(with_truth=False), labels=str(path), labels_id_column="image_id")
    c = cell(joined, "hair_color", FUSED)
    # row 6 has no label row: skipped like a null truth. Its hair truth is null anyway, so hair_color matches
    # the truth-column case; accessories loses row 6's true positive (scarf): TP 3, FP 1, FN 2 -> 6/9.
    assert (c["n"], c["accuracy"], c["macro_f1"]) == (6, pytest.approx(4 / 6), pytest.approx(2.3 / 3))
    ml = cell(joined, "accessories", FUSED)
    assert (ml["n"], ml["micro_f1"], ml["subset_accuracy"]) == (5, pytest.approx(6 / 9), pytest.approx(2 / 5))
    assert joined["labels"] == {"id_column": "image_id", "label_rows": 7, "matched_rows": 6, "unmatched_rows": 1,
                                "unused_label_rows": 1, "path": str(path)}

    # a truth struct typed with ClassLabels in another order is remapped by name
    reordered = ClassLabel(names=["red", "black", "blonde"])
    feats = Features({"id": Value("string"), "truth": {"hair_color": reordered}})
    struct = Dataset.from_dict(
        {"id": IDS, "truth": [{"hair_color": None if t is None else reordered.str2int(names[t])} for t in HAIR_TRUTH]},
        features=feats,
    )
    rep = evaluate_annotations(make_annotated(), labels=struct)
    assert cell(rep, "hair_color", FUSED)["accuracy"] == pytest.approx(4 / 6)
    assert "accessories" not in rep["attributes"] and any("accessories" in n for n in rep["notes"])

    dup = Dataset.from_dict({"id": ["img-0", "img-0"], "hair_color": ["red", "black"]})
    with pytest.raises(EvaluationError, match="more than once"):
        evaluate_annotations(make_annotated(), labels=dup)
    with pytest.raises(EvaluationError, match="no ground truth"):
        evaluate_annotations(make_annotated(with_truth=False))
    bad = Dataset.from_dict({"id": IDS, "hair_color": ["purple"] * 7})
    with pytest.raises(EvaluationError, match="purple"):
        evaluate_annotations(make_annotated(), labels=bad)


def test_restrict_sources_and_attributes():
    rep = evaluate_annotations(make_annotated(), sources=[FUSED], attributes=["hair_color"])
    assert rep["sources"] == [FUSED] and list(rep["attributes"]) == ["hair_color"]
    with pytest.raises(EvaluationError, match="blip2"):
        evaluate_annotations(make_annotated(), sources=["blip2"])


def test_markdown_and_json(report, tmp_path):
    md = to_markdown(report)
    assert "| hair_color | all | fused | 6 | 1 | 0.667 | 0.767 | 0.710 | 0.370 | 0.667 | 0.750 |" in md
    assert "| accessories | all | fused | 6 | 1 | 0.500 | 0.727 | 0.722 | - | - | - |" in md
    md_path, js_path = write_report(report, tmp_path / "out")
    assert md_path.read_text() == md
    assert json.loads(js_path.read_text())["attributes"]["hair_color"]["results"]["fused"]["all"]["accuracy"] == (
        pytest.approx(4 / 6)
    )


# ------------------------------------------------------------------------------------------ the recipe
def _run_recipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "evaluate_annotations.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_recipe_writes_eval_files(tmp_path):
    data = tmp_path / "annotated" / "data"
    data.mkdir(parents=True)
    make_annotated().to_parquet(str(data / "train-00000-of-00001.parquet"))
    config = tmp_path / "eval.yaml"
    config.write_text(f"dataset: {tmp_path / 'annotated'}\nabstain_threshold: 0.9\n")
    out = tmp_path / "eval"
    # the flag overrides the YAML's 0.9
    proc = _run_recipe("--config", str(config), "--abstain_threshold", "0.5", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| hair_color | all | fused | 6 | 1 | 0.667 | 0.767 | 0.710 | 0.370 | 0.667 | 0.750 |" in proc.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["settings"]["abstain_threshold"] == 0.5
    c = report["attributes"]["hair_color"]["results"]["fused"]["all"]
    assert c["accuracy"] == pytest.approx(4 / 6) and c["ece"] == pytest.approx(0.37, abs=1e-6)
    assert report["summary"]["fused"]["sketch"]["mean_accuracy"] == pytest.approx(1 / 3)
    assert (out / "eval.md").read_text().startswith("# Annotation accuracy")


def _load_recipe(monkeypatch):
    """The recipe as a module (not named ``evaluate``, which would shadow the library)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_recipe", REPO / "recipes" / "evaluate_annotations.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "evaluate_recipe", module)  # dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))  # the recipe takes its folder off sys.path
    spec.loader.exec_module(module)
    return module


def test_recipe_help_and_errors(tmp_path, capsys, monkeypatch):
    from charattr_hf.cli import run_main

    recipe = _load_recipe(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--dataset", "--labels", "--labels_id_column", "--group_by", "--abstain_threshold",
                   "--num_bins", "--schema", "--config", "--output_dir", "--sources", "--attributes"):
        assert option in help_text
    assert "Confidence below which a decision is withheld" in help_text
    assert run_main(recipe.main, []) == 2 and "--dataset is required" in capsys.readouterr().err
    assert run_main(recipe.main, ["--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "nowhere: no such file or folder" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_recipe_does_not_shadow_the_evaluate_library():
    # A script run from recipes/ has that folder first on sys.path: no recipe may be named like a library it uses.
    import importlib.util

    recipes = REPO / "recipes"
    assert not (recipes / "evaluate.py").exists()
    names = {p.stem for p in recipes.glob("*.py")}
    for library in ("evaluate", "datasets", "transformers", "accelerate", "open_clip", "torch"):
        assert library not in names
    assert importlib.util.find_spec("evaluate") is not None
