"""Summary of an annotated dataset: rows, errors, flags, label distributions and, where ground truth is
present, accuracy. Reads only the small columns of the Parquet files, so it is cheap for millions of rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
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


def summarize(files: Sequence[Path], top: int = 3) -> dict[str, Any]:
    """Statistics of the annotated Parquet ``files`` (one dataset split)."""
    files = [Path(f) for f in files]
    features = features_of(files)
    attrs = {
        name: info
        for name, feat in features.items()
        if f"{name}_confidence" in features and (info := _label_info(feat)) is not None
    }
    cols = ["error", "flags"] + list(attrs) + [f"{a}_confidence" for a in attrs]
    if "truth" in features:
        cols.append("truth")
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files]) if files else None
    n = table.num_rows if table is not None else 0
    out: dict[str, Any] = {"rows": n, "attributes": {}, "flags": {}, "errors": 0, "error_examples": {}}
    if not n:
        return out
    errors = [e for e in table.column("error").to_pylist() if e]
    out["errors"] = len(errors)
    out["error_examples"] = dict(Counter(e.split(":")[0] if len(e) > 80 else e for e in errors).most_common(5))
    flag_counts: Counter = Counter()
    flagged = 0
    for row in table.column("flags").to_pylist():
        if row:
            flagged += 1
            flag_counts.update(row)
    out["flagged_rows"] = flagged
    out["flags"] = dict(flag_counts.most_common())
    truth = table.column("truth").to_pylist() if "truth" in cols else None
    truth_labels = {
        name: info[0] for name, feat in (features["truth"].items() if truth is not None else []) if (info := _label_info(feat))
    }
    for name, (labels, multi) in attrs.items():
        values = table.column(name).to_pylist()
        confs = table.column(f"{name}_confidence").to_pylist()
        counts: Counter = Counter()
        conf_vals: list[float] = []
        annotated = 0
        for v, c in zip(values, confs):
            if v is None:
                continue
            annotated += 1
            if multi:
                counts.update(labels[i] for i in v)
                conf_vals.extend(c or [])
            else:
                counts[labels[v]] += 1
                conf_vals.append(c)
        info: dict[str, Any] = {
            "annotated": annotated,
            "multi_label": multi,
            "top": [(lab, cnt, cnt / max(annotated, 1)) for lab, cnt in counts.most_common(top)],
            "mean_confidence": float(np.mean(conf_vals)) if conf_vals else None,
        }
        if name in truth_labels:
            # truth may be typed by another schema (other label order): compare label names
            tnames = truth_labels[name]
            pairs = [(v, (t or {}).get(name)) for v, t in zip(values, truth)]
            pairs = [(v, t) for v, t in pairs if t is not None]
            if pairs:
                if multi:
                    hits = [v is not None and {labels[i] for i in v} == {tnames[i] for i in t} for v, t in pairs]
                else:
                    hits = [v is not None and labels[v] == tnames[t] for v, t in pairs]
                info["accuracy"] = float(np.mean(hits))
                info["evaluated"] = len(pairs)
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
