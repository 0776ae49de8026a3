"""Summary of an annotated dataset: rows, errors, flags, label distributions and, where ground truth is
present, accuracy. Reads only the small columns of the Parquet files, so it is cheap for millions of rows.

Accuracy is counted as :mod:`charattr_hf.evaluation` counts it, with the same code: truth and predictions are
read by :func:`~charattr_hf.evaluation.read_truth` and :func:`~charattr_hf.evaluation.fused_prediction`
(labels matched by name) and scored by :mod:`charattr_hf.metrics.core`; rows without truth are skipped, a row
without a prediction is wrong."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Features, List

from .markdown import markdown_table
from .metrics import core

logger = logging.getLogger(__name__)

__all__ = ["summarize", "format_summary", "features_of"]

_TAGS_FROM = "tags_from"  # the tags source's output column (charattr_hf.sources.tags.stage.TAGS_FROM)
_FROM_NAMES = {"tags": "the tags column", "caption": "the caption column",
               "tags+caption": "the tags and caption columns", "None": "nothing (no tags, caption or embedded prompt)",
               "a1111": "embedded A1111 prompts", "novelai": "embedded NovelAI prompts",
               "comfyui": "embedded ComfyUI prompts", "fooocus": "embedded Fooocus prompts"}


def features_of(files: Sequence[Path]) -> Features:
    return Features.from_arrow_schema(pq.read_schema(files[0]))


def _label_info(feature) -> tuple[list[str], bool] | None:
    if isinstance(feature, ClassLabel):
        return feature.names, False
    if isinstance(feature, List) and isinstance(feature.feature, ClassLabel):
        return feature.feature.names, True
    return None


def _truth_schema(features: Features, attributes: Sequence[str]):
    """The schema to score the fused columns against the ``truth`` column, or None when there is nothing to
    score (no truth) or it cannot be scored (truth labels the predictions cannot take: see the evaluation)."""
    from .evaluation import TRUTH, EvaluationError, schema_from_features

    truth = features.get(TRUTH)
    if not isinstance(truth, dict) or not any(a in truth for a in attributes):
        return None
    try:
        schema = schema_from_features(features)
    except EvaluationError as exc:
        logger.warning("no accuracy in the summary: %s", exc)
        return None
    return schema.restrict({a: None for a in attributes if a in truth and a in schema})


def _accuracy_counts(batch: pa.RecordBatch, features: Features, schema, where: Any) -> dict[str, tuple[int, int]]:
    """``{attribute: (right, rows with truth)}`` of the fused columns in one batch."""
    from .evaluation import fused_prediction, read_truth

    table = pa.Table.from_batches([batch])
    truth = read_truth(table.select(["truth"]), features, schema, str(where))
    out = {}
    for attr in schema:
        if attr.name not in truth:
            continue
        ref, valid = truth[attr.name]
        pred = fused_prediction(table, features, attr).labels
        score = core.multilabel_accuracy if attr.multi_label else core.multiclass_accuracy
        m = score(pred[valid], ref[valid])
        out[attr.name] = (m["correct"], m["n"])
    return out


def summarize(files: Sequence[Path], top: int = 3, batch_rows: int = 65_536) -> dict[str, Any]:
    """Statistics of the annotated Parquet ``files`` (one dataset split), read in bounded batches."""
    files = [Path(f) for f in files]
    features = features_of(files)
    attrs = {
        name: info
        for name, feat in features.items()
        if f"{name}_confidence" in features and (info := _label_info(feat)) is not None
    }
    schema = _truth_schema(features, list(attrs))
    cols = ["error", "flags"] + list(attrs) + [f"{a}_confidence" for a in attrs]
    has_from = _TAGS_FROM in features  # where the tags source's text came from, per row (#17)
    if has_from:
        cols.append(_TAGS_FROM)
    if schema is not None:
        cols.append("truth")

    n = errors = flagged = 0
    error_kinds: Counter = Counter()
    flag_counts: Counter = Counter()
    from_counts: Counter = Counter()
    acc = {a: {"counts": Counter(), "conf_sum": 0.0, "conf_n": 0, "annotated": 0, "hits": 0, "evaluated": 0}
           for a in attrs}
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=cols):
            n += batch.num_rows
            for e in batch.column("error").to_pylist():
                if e:
                    errors += 1
                    error_kinds[e.split(":")[0] if len(e) > 80 else e] += 1
            for row in batch.column("flags").to_pylist():
                if row:
                    flagged += 1
                    flag_counts.update(row)
            if has_from:
                from_counts.update(batch.column(_TAGS_FROM).to_pylist())
            for name, (labels, multi) in attrs.items():
                a = acc[name]
                values = batch.column(name).to_pylist()
                confs = batch.column(f"{name}_confidence").to_pylist()
                for v, c in zip(values, confs):
                    if v is None:
                        continue
                    a["annotated"] += 1
                    if multi:
                        a["counts"].update(labels[i] for i in v)
                        a["conf_sum"] += float(sum(c or []))
                        a["conf_n"] += len(c or [])
                    else:
                        a["counts"][labels[v]] += 1
                        a["conf_sum"] += float(c)
                        a["conf_n"] += 1
            if schema is not None:
                for name, (hits, evaluated) in _accuracy_counts(batch, features, schema, path).items():
                    acc[name]["hits"] += hits
                    acc[name]["evaluated"] += evaluated

    out: dict[str, Any] = {
        "rows": n,
        "errors": errors,
        "error_examples": dict(error_kinds.most_common(5)),
        "flagged_rows": flagged,
        "flags": dict(flag_counts.most_common()),
        "attributes": {},
    }
    if has_from:  # None: rows with no text at all
        out[_TAGS_FROM] = {str(k): v for k, v in from_counts.most_common()}
    for name, (labels, multi) in attrs.items():
        a = acc[name]
        info: dict[str, Any] = {
            "annotated": a["annotated"],
            "multi_label": multi,
            "top": [(lab, cnt, cnt / max(a["annotated"], 1)) for lab, cnt in a["counts"].most_common(top)],
            "mean_confidence": a["conf_sum"] / a["conf_n"] if a["conf_n"] else None,
        }
        if a["evaluated"]:
            info["accuracy"] = a["hits"] / a["evaluated"]
            info["evaluated"] = a["evaluated"]
        out["attributes"][name] = info
    return out


def _flag_note(flag: str) -> str:
    """What a flag whose name alone could alarm means (#21: the 64 px synthetic sample is all low_resolution)."""
    if flag == "low_resolution":
        from .stages.decode import FlagThresholds

        return f" (shorter side under {FlagThresholds().min_side} px)"
    return ""


def format_summary(stats: dict[str, Any], images_per_second: float | None = None,
                   warnings: Sequence[str] = ()) -> str:
    """Counts, then a Markdown table of the attributes: for the terminal and the dataset card. ``warnings`` (the
    pipeline's, e.g. a demo model run on real images) come first, one ``WARNING:`` line each."""
    flagged = stats.get("flagged_rows", 0)
    lines = [f"WARNING: {w}" for w in warnings] + ([""] if warnings else [])
    lines.append(f"rows: {stats['rows']}   errors: {stats['errors']}   flagged: {flagged}"
                 + (" (quality hints: the rows keep their labels)" if flagged else ""))
    if images_per_second is not None:
        lines[-1] += f"   throughput: {images_per_second:.1f} images/s"
    if stats.get("error_examples"):
        lines.append("errors: " + "; ".join(f"{k} ({v})" for k, v in stats["error_examples"].items()))
    if stats.get("flags"):
        lines.append("flags: " + ", ".join(f"{k} {v}" + _flag_note(k) for k, v in stats["flags"].items()))
    if stats.get(_TAGS_FROM):
        lines.append("tags source read: " + ", ".join(
            f"{v} row{'' if v == 1 else 's'} from {_FROM_NAMES.get(k, f'embedded {k} prompts')}"
            for k, v in stats[_TAGS_FROM].items()))
    attrs = stats.get("attributes", {})
    if attrs:
        has_acc = any("accuracy" in a for a in attrs.values())
        rows = []
        for name, a in attrs.items():
            top = ", ".join(f"{lab} {share:.0%}" for lab, _, share in a["top"]) or None
            conf = f"{a['mean_confidence']:.2f}" if a["mean_confidence"] is not None else None
            acc = [f"{a['accuracy']:.1%}" if "accuracy" in a else None] if has_acc else []
            rows.append([name, top, conf, *acc])
        header = ["attribute", "top labels", "mean conf", *(["accuracy"] if has_acc else [])]
        lines += ["", markdown_table(header, rows, align="llr")]
    return "\n".join(lines)
