"""Summary of an annotated dataset: rows, errors, flags, label distributions and, where ground truth is
present, accuracy. Reads only the small columns of the Parquet files, so it is cheap for millions of rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pyarrow.parquet as pq
from datasets import ClassLabel, Features, List

__all__ = ["summarize", "format_summary", "features_of"]


def features_of(files: Sequence[Path]) -> Features:
    return Features.from_arrow_schema(pq.read_schema(files[0]))


def _label_info(feature) -> tuple[list[str], bool] | None:
    if isinstance(feature, ClassLabel):
        return feature.names, False
    if isinstance(feature, List) and isinstance(feature.feature, ClassLabel):
        return feature.feature.names, True
    return None


def summarize(files: Sequence[Path], top: int = 3, batch_rows: int = 65_536) -> dict[str, Any]:
    """Statistics of the annotated Parquet ``files`` (one dataset split), read in bounded batches."""
    files = [Path(f) for f in files]
    features = features_of(files)
    attrs = {
        name: info
        for name, feat in features.items()
        if f"{name}_confidence" in features and (info := _label_info(feat)) is not None
    }
    truth_labels = {}
    if "truth" in features:
        truth_labels = {n: i[0] for n, f in features["truth"].items() if (i := _label_info(f)) and n in attrs}
    cols = ["error", "flags"] + list(attrs) + [f"{a}_confidence" for a in attrs]
    if truth_labels:
        cols.append("truth")

    n = errors = flagged = 0
    error_kinds: Counter = Counter()
    flag_counts: Counter = Counter()
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
            truth = batch.column("truth").to_pylist() if truth_labels else None
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
                if name in truth_labels:
                    # truth may be typed by another schema (another label order): compare label names
                    tnames = truth_labels[name]
                    for v, t in zip(values, truth):
                        t = (t or {}).get(name)
                        if t is None:
                            continue
                        a["evaluated"] += 1
                        if multi:
                            a["hits"] += v is not None and {labels[i] for i in v} == {tnames[i] for i in t}
                        else:
                            a["hits"] += v is not None and labels[v] == tnames[t]

    out: dict[str, Any] = {
        "rows": n,
        "errors": errors,
        "error_examples": dict(error_kinds.most_common(5)),
        "flagged_rows": flagged,
        "flags": dict(flag_counts.most_common()),
        "attributes": {},
    }
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


def format_summary(stats: dict[str, Any], images_per_second: float | None = None) -> str:
    """A compact text table for the terminal (also used in the dataset card)."""
    lines = [f"rows: {stats['rows']}   errors: {stats['errors']}   flagged: {stats.get('flagged_rows', 0)}"]
    if images_per_second is not None:
        lines[0] += f"   throughput: {images_per_second:.1f} images/s"
    if stats.get("error_examples"):
        lines.append("errors: " + "; ".join(f"{k} ({v})" for k, v in stats["error_examples"].items()))
    if stats.get("flags"):
        lines.append("flags: " + ", ".join(f"{k} {v}" for k, v in stats["flags"].items()))
    attrs = stats.get("attributes", {})
    if attrs:
        has_acc = any("accuracy" in a for a in attrs.values())
        header = f"{'attribute':<20} {'top labels':<52} {'mean conf':>9}" + (f" {'accuracy':>9}" if has_acc else "")
        lines += ["", header, "-" * len(header)]
        for name, a in attrs.items():
            top = ", ".join(f"{lab} {share:.0%}" for lab, _, share in a["top"]) or "-"
            conf = f"{a['mean_confidence']:.2f}" if a["mean_confidence"] is not None else "-"
            row = f"{name:<20} {top[:52]:<52} {conf:>9}"
            if has_acc:
                row += f" {a['accuracy']:>9.1%}" if "accuracy" in a else f" {'-':>9}"
            lines.append(row)
    return "\n".join(lines)
