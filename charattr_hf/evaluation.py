"""Measure annotation accuracy against ground truth, per attribute, per source and per group.

An annotated dataset holds, per attribute ``a``, the fused decision (``a``, ``a_confidence``) and each
source's probabilities (``probs_<source>.a``). Given ground truth (a ``truth`` struct column, or labels
joined by id from another dataset), :func:`evaluate_annotations` scores every source on its own (argmax for
single-label attributes, ``p >= threshold`` per label for multi-label ones) and the fused output
(``source = "fused"``), overall (``group = "all"``) and per group (the ``style`` column by default).

Metrics (computed by :mod:`charattr_hf.metrics.core`, the arithmetic behind the offline ``evaluate`` modules
of :mod:`charattr_hf.metrics`, so a report and those modules always agree):

* single-label: accuracy, macro-F1 (and support-weighted F1), top-label ECE, coverage and accuracy when
  abstaining below ``abstain_threshold`` (plus a small coverage/accuracy curve);
* multi-label: exact-match (subset) accuracy, micro and macro-F1, ECE of per-label presence probabilities,
  coverage/accuracy over per-label decisions;
* per source and group, the mean accuracy (and macro-F1) over single-label attributes.

How rows are counted (the same for every source, so sources compare fairly):

* a row whose ground truth for an attribute is null is skipped for that attribute;
* a row whose prediction is null (the source had no evidence, or the row failed) still counts, as a wrong
  answer, and is reported in ``missing`` - a source that abstains is not flattered;
* except for ECE (a missing prediction has no confidence to calibrate; ``calibration_n`` says how many
  rows were used) and for coverage, where a missing prediction is an abstention: it lowers coverage and
  does not enter the accuracy on kept rows.

Fused multi-label columns only keep the confidences of the chosen labels, so ECE and coverage are not
defined for them (reported as ``None``). Sources whose ``probs_<source>`` column is null everywhere (not
run) are left out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, LargeList, List

from .markdown import markdown_table
from .metrics import core
from .metrics.core import DEFAULT_CURVE_THRESHOLDS
from .reader import read_dataset
from .schema import Attribute, Label, Schema, load_schema, probs_sources
from .sources import order_sources

__all__ = [
    "FUSED",
    "ALL_GROUP",
    "evaluate_annotations",
    "schema_from_features",
    "read_truth",
    "fused_prediction",
    "load_annotations",
    "to_markdown",
    "write_report",
    "EvaluationError",
]

#: Name under which the fused ``<attr>`` columns are reported, next to the sources.
FUSED = "fused"
#: Name of the group holding every row.
ALL_GROUP = "all"
#: Group name of rows whose group column is null.
NULL_GROUP = "(none)"
TRUTH = "truth"
_PROBS_PREFIX = "probs_"


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated, with the reason."""


# ============================================================================================ schema
def _list_inner(feature: Any) -> Any | None:
    """The element feature of a list feature (``List``/``Sequence``/``LargeList``), else None."""
    if isinstance(feature, (List, LargeList)):
        return feature.feature
    return None


def _class_label_of(feature: Any) -> tuple[ClassLabel | None, bool]:
    """(ClassLabel, is_list) when ``feature`` is a ClassLabel or a list of them."""
    if isinstance(feature, ClassLabel):
        return feature, False
    inner = _list_inner(feature)
    if isinstance(inner, ClassLabel):
        return inner, True
    return None, False


def schema_from_features(
    features: Features, name: str = "inferred", thresholds: Mapping[str, float] | None = None
) -> Schema:
    """Rebuild the attribute schema of an annotated dataset from its ``ClassLabel`` names.

    Attributes are the top-level columns typed ``ClassLabel`` (single-label) or a list of ``ClassLabel``
    (multi-label), and the fields of the ``truth`` struct typed the same way. Where both exist, the
    prediction column's labels are used and the truth's must be among them (they are matched by name, so a
    truth drawn from a subset of the labels, in another order, is fine). Prompts and tags are not
    stored in a dataset and are not needed to score it. The presence threshold of multi-label attributes
    (used to threshold source probabilities) is not stored either: it is 0.5 unless ``thresholds`` says
    otherwise - pass the real schema (``--schema``) when it used other thresholds.
    """
    thresholds = dict(thresholds or {})
    found: dict[str, tuple[ClassLabel, bool]] = {}
    for col, feature in features.items():
        cl, multi = _class_label_of(feature) if col != TRUTH else (None, False)
        if cl is not None:
            found[col] = (cl, multi)
    # Ground truth may use a subset of the labels (e.g. data drawn from a smaller schema): labels are matched
    # by name later, so the prediction columns' typing wins as long as every true label is one of theirs.
    truth = features.get(TRUTH)
    for attr, feature in (truth.items() if isinstance(truth, dict) else ()):
        cl, multi = _class_label_of(feature)
        if cl is None:
            continue
        if attr not in found:
            found[attr] = (cl, multi)
            continue
        pred, pred_multi = found[attr]
        extra = [n for n in cl.names if n not in pred.names]
        if multi != pred_multi or extra:
            raise EvaluationError(
                f"'{TRUTH}.{attr}' ({cl.names}, multi-label={multi}) does not fit the prediction column "
                f"{attr!r} ({pred.names}, multi-label={pred_multi})"
                + (f": labels {extra} cannot be predicted" if extra else "")
                + "; pass --schema"
            )
    if not found:
        raise EvaluationError(
            "cannot infer the attribute schema: no ClassLabel columns (or 'truth' fields) in the dataset; "
            "pass the schema used for annotation (--schema default, or a YAML path)"
        )
    unknown = set(thresholds) - set(found)
    if unknown:
        raise EvaluationError(f"thresholds given for unknown attributes: {sorted(unknown)}")
    attrs = []
    for attr, (cl, multi) in found.items():
        labels = tuple(Label(n, n.replace("_", " ")) for n in cl.names)
        attrs.append(Attribute(attr, labels, multi_label=multi, threshold=float(thresholds.get(attr, 0.5))))
    return Schema(name=name, attributes=tuple(attrs))


# ============================================================================================ loading
def load_annotations(path: "str | os.PathLike | Dataset | DatasetDict", split: str = "train") -> Dataset:
    """Open an annotated (or labels) dataset from wherever it lives, with :func:`charattr_hf.reader.read_dataset`:
    a ``Dataset``; a ``DatasetDict`` (takes ``split``); a ``save_to_disk`` folder; a Parquet, JSON Lines or CSV
    file (or glob); the annotation output folder (``data/train-*.parquet`` + README.md) or a Hub id."""
    return read_dataset(path, split)


# ============================================================================================ arrow -> numpy
def _combine(arr: "pa.Array | pa.ChunkedArray") -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 0:
            return pa.array([], type=arr.type)
        return arr.combine_chunks()
    return arr


def _names_map(attr: Attribute, names: Sequence[str], where: str) -> np.ndarray:
    """Index map from a column's ClassLabel names to the schema's label indices."""
    out = np.empty(len(names), dtype=np.int64)
    for i, n in enumerate(names):
        try:
            out[i] = attr.index(n)
        except KeyError:
            raise EvaluationError(
                f"{where}: label {n!r} is not a label of attribute {attr.name!r} {attr.label_names}; "
                "was the data annotated with another schema?"
            ) from None
    return out


def _to_indices(values: pa.Array, feature: Any, attr: Attribute, where: str) -> np.ndarray:
    """Flat label values (ints typed by ``feature``, or label names) as schema indices; nulls -> -1."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        lookup = {n: i for i, n in enumerate(attr.label_names)}
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values.to_pylist()):
            if v is None:
                out[i] = -1
            elif v in lookup:
                out[i] = lookup[v]
            else:
                raise EvaluationError(f"{where}: {v!r} is not a label of {attr.name!r} {attr.label_names}")
        return out
    if pa.types.is_null(values.type):
        return np.full(len(values), -1, dtype=np.int64)
    if not pa.types.is_integer(values.type):
        raise EvaluationError(f"{where}: expected label indices or names, got Arrow type {values.type}")
    idx = pc.fill_null(values, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if isinstance(feature, ClassLabel) and list(feature.names) != attr.label_names:
        remap = _names_map(attr, feature.names, where)
        if (idx >= len(remap)).any():
            raise EvaluationError(f"{where}: label index out of range for {feature.names}")
        idx = np.where(idx >= 0, remap[np.clip(idx, 0, None)], -1)
    if (idx >= attr.num_labels).any() or (idx < -1).any():
        bad = int(idx[(idx >= attr.num_labels) | (idx < -1)][0])
        raise EvaluationError(f"{where}: label index {bad} out of range for {attr.name!r} ({attr.num_labels} labels)")
    return idx


def _single_labels(arr: pa.Array, feature: Any, attr: Attribute, where: str) -> np.ndarray:
    """One label per row as schema indices (-1 for null)."""
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        raise EvaluationError(f"{where}: {attr.name!r} is single-label but holds lists")
    return _to_indices(arr, feature, attr, where)


def _multi_labels(arr: pa.Array, feature: Any, attr: Attribute, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Lists of labels as a (rows, labels) 0/1 matrix, and the mask of non-null rows."""
    n = len(arr)
    if pa.types.is_null(arr.type):
        return np.zeros((n, attr.num_labels), dtype=np.int8), np.zeros(n, dtype=bool)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise EvaluationError(f"{where}: {attr.name!r} is multi-label and needs a list of labels per row")
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = _to_indices(pc.list_flatten(arr), _list_inner(feature), attr, where)
    if (flat < 0).any():
        raise EvaluationError(f"{where}: null label inside a list of {attr.name!r}")
    ind = np.zeros((n, attr.num_labels), dtype=np.int8)
    ind[np.repeat(np.arange(n), lengths), flat] = 1
    return ind, valid


def _prob_matrix(arr: pa.Array, attr: Attribute, where: str) -> np.ndarray:
    """Per-row probability vectors as a (rows, labels) float matrix; rows without evidence are NaN."""
    n, k = len(arr), attr.num_labels
    out = np.full((n, k), np.nan)
    if pa.types.is_null(arr.type) or n == 0:
        return out
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    if (lengths[valid] != k).any():
        bad = int(lengths[valid][lengths[valid] != k][0])
        raise EvaluationError(
            f"{where}: probability vectors of {attr.name!r} have {bad} values, the schema has {k} labels"
        )
    flat = pc.fill_null(pc.list_flatten(arr), float("nan")).to_numpy(zero_copy_only=False)
    out[valid] = np.asarray(flat, dtype=np.float64).reshape(-1, k)
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out


def _struct_field(col: pa.Array, field: str) -> pa.Array | None:
    """A struct column's field, with the struct's own nulls applied; None when there is no such field."""
    if not pa.types.is_struct(col.type) or col.type.get_field_index(field) < 0:
        return None
    return _combine(pc.struct_field(col, field))


# ============================================================================================ truth
def read_truth(
    table: pa.Table, features: Features, schema: Schema, where: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Ground truth per attribute, from a ``truth`` struct or from top-level columns named like attributes.

    Returns ``{attr: (labels, valid)}``: labels are indices (single-label, -1 = null) or a 0/1 matrix.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    truth_col = _combine(table.column(TRUTH)) if TRUTH in table.column_names else None
    truth_feats = features.get(TRUTH) if isinstance(features.get(TRUTH), dict) else {}
    for attr in schema:
        if truth_col is not None:
            arr = _struct_field(truth_col, attr.name)
            feature = truth_feats.get(attr.name)
            src = f"{where}: '{TRUTH}.{attr.name}'"
        elif attr.name in table.column_names:
            arr = _combine(table.column(attr.name))
            feature = features.get(attr.name)
            src = f"{where}: column {attr.name!r}"
        else:
            arr = None
        if arr is None:
            continue
        if attr.multi_label:
            out[attr.name] = _multi_labels(arr, feature, attr, src)
        else:
            labels = _single_labels(arr, feature, attr, src)
            out[attr.name] = (labels, labels >= 0)
    return out


def _join_truth(
    ids: Sequence[Any],
    labels: Dataset,
    labels_id_column: str,
    schema: Schema,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Ground truth from a separate labels dataset, aligned with ``ids`` (rows without labels get null truth)."""
    if labels_id_column not in labels.column_names:
        raise EvaluationError(
            f"labels have no id column {labels_id_column!r}; columns: {labels.column_names} "
            "(set --labels_id_column)"
        )
    table = labels.with_format("arrow")[:]
    label_ids = table.column(labels_id_column).to_pylist()
    position: dict[Any, int] = {}
    for i, key in enumerate(label_ids):
        if key is None:
            continue
        if key in position:
            raise EvaluationError(f"labels: id {key!r} appears more than once in {labels_id_column!r}")
        position[key] = i
    # Ids are compared as strings when the two sides disagree on type (int ids in CSV, str in the dataset).
    first_id = next((i for i in ids if i is not None), None)
    first_label_id = next((i for i in label_ids if i is not None), None)
    if first_id is not None and first_label_id is not None and type(first_id) is not type(first_label_id):
        position = {str(k): v for k, v in position.items()}
        ids = [None if i is None else str(i) for i in ids]
    pos = np.array([position.get(i, -1) if i is not None else -1 for i in ids], dtype=np.int64)
    raw = read_truth(table, labels.features, schema, "labels")
    if not raw:
        raise EvaluationError(
            f"labels have neither a {TRUTH!r} struct nor columns named like the attributes "
            f"{schema.attribute_names}; columns: {labels.column_names}"
        )
    hit = pos >= 0
    safe = np.where(hit, pos, 0)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (lab, valid) in raw.items():
        if lab.ndim == 1:
            aligned = np.where(hit, lab[safe] if lab.size else -1, -1)
            out[name] = (aligned, aligned >= 0)
        else:
            aligned = lab[safe] if lab.size else np.zeros((len(ids), lab.shape[1]), dtype=lab.dtype)
            out[name] = (aligned, hit & (valid[safe] if valid.size else False))
    matched_label_rows = len(set(pos[hit].tolist()))
    info = {
        "id_column": labels_id_column,
        "label_rows": len(label_ids),
        "matched_rows": int(hit.sum()),
        "unmatched_rows": int((~hit).sum()),
        "unused_label_rows": len(position) - matched_label_rows,
    }
    return out, info


# ============================================================================================ predictions
def _present_sources(table: pa.Table) -> list[str]:
    """Sources with a ``probs_<source>`` column, the pipeline's known sources first."""
    return order_sources(probs_sources(table.column_names))


def _source_is_empty(col: pa.Array) -> bool:
    if col.null_count == len(col):
        return True
    if pa.types.is_struct(col.type):
        return all(
            _combine(pc.struct_field(col, f.name)).null_count == len(col) for f in col.type
        )
    return False


class _Prediction:
    """One source's predictions for one attribute, in the metric modules' encoding."""

    __slots__ = ("labels", "confidences", "probabilities")

    def __init__(self, labels: np.ndarray, confidences: np.ndarray | None, probabilities: np.ndarray | None):
        self.labels = labels  # single: indices, -1 = missing; multi: 0/1 matrix, rows of -1 = missing
        self.confidences = confidences  # single: top-label confidence (NaN = missing)
        self.probabilities = probabilities  # multi: presence probabilities (NaN rows = missing)


def _source_prediction(table: pa.Table, source: str, attr: Attribute) -> _Prediction:
    col = _combine(table.column(_PROBS_PREFIX + source))
    arr = _struct_field(col, attr.name)
    n = table.num_rows
    probs = _prob_matrix(arr, attr, f"{_PROBS_PREFIX}{source}.{attr.name}") if arr is not None else np.full(
        (n, attr.num_labels), np.nan
    )
    valid = np.isfinite(probs).all(axis=1)
    if attr.multi_label:
        labels = np.where(probs >= attr.threshold, 1, 0).astype(np.int8)
        labels[~valid] = -1
        return _Prediction(labels, None, probs)
    labels = np.full(n, -1, dtype=np.int64)
    conf = np.full(n, np.nan)
    if valid.any():
        labels[valid] = probs[valid].argmax(axis=1)
        conf[valid] = probs[valid].max(axis=1)
    return _Prediction(labels, conf, None)


def fused_prediction(table: pa.Table, features: Features, attr: Attribute) -> _Prediction:
    """The fused ``<attr>`` (and ``<attr>_confidence``) columns as label indices (single-label, -1 = none) or a
    0/1 matrix with rows of -1 for none (multi-label), in ``attr``'s label order (matched by name)."""
    arr = _combine(table.column(attr.name))
    where = f"column {attr.name!r}"
    if attr.multi_label:
        ind, valid = _multi_labels(arr, features.get(attr.name), attr, where)
        ind[~valid] = -1
        return _Prediction(ind, None, None)
    labels = _single_labels(arr, features.get(attr.name), attr, where)
    conf_name = f"{attr.name}_confidence"
    if conf_name in table.column_names:
        conf = pc.fill_null(pc.cast(_combine(table.column(conf_name)), pa.float64()), float("nan"))
        conf = conf.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        conf = np.full(table.num_rows, np.nan)
    conf = np.where(labels >= 0, conf, np.nan)
    return _Prediction(labels, conf, None)


# ============================================================================================ groups
def _group_values(table: pa.Table, features: Features, group_by: str) -> np.ndarray:
    """Group name of every row (``group_by`` may be a dotted path into a struct: ``truth.art_style``)."""
    head, _, rest = group_by.partition(".")
    if head not in table.column_names:
        raise EvaluationError(f"group_by: no column {head!r}; columns: {table.column_names}")
    arr = _combine(table.column(head))
    feature: Any = features.get(head)
    for part in rest.split(".") if rest else []:
        field = _struct_field(arr, part)
        if field is None:
            raise EvaluationError(f"group_by: {group_by!r} - {head!r} has no field {part!r}")
        arr = field
        feature = feature.get(part) if isinstance(feature, dict) else None
    values = arr.to_pylist()
    if isinstance(feature, ClassLabel):
        values = [None if v is None else feature.int2str(int(v)) for v in values]
    elif values and any(isinstance(v, (list, dict)) for v in values if v is not None):
        raise EvaluationError(f"group_by: {group_by!r} holds lists or structs; choose a scalar column")
    return np.array([NULL_GROUP if v is None else str(v) for v in values], dtype=object)


# ============================================================================================ metrics
def _json_default(x: Any) -> Any:
    """NumPy scalars as Python numbers for ``json.dumps``; anything else is a bug worth an error."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def _cell(
    pred: _Prediction, ref: np.ndarray, mask: np.ndarray, attr: Attribute, threshold: float, bins: int,
    curve: Sequence[float],
) -> dict:
    """All metrics of one (attribute, source, group) on the rows of ``mask``."""
    settings = {"threshold": threshold, "num_bins": bins, "thresholds": curve}
    if attr.multi_label:
        # NaN probability rows (no evidence) go through as NaN: left out of ECE and withheld from coverage.
        prob = None if pred.probabilities is None else pred.probabilities[mask]
        return core.score_multi_label(pred.labels[mask], ref[mask], prob, label_threshold=attr.threshold, **settings)
    return core.score_single_label(pred.labels[mask], ref[mask], pred.confidences[mask], **settings)  # type: ignore[index]


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ============================================================================================ entry point
def evaluate_annotations(
    dataset: "Dataset | DatasetDict | str | os.PathLike",
    *,
    schema: "Schema | str | None" = None,
    labels: "Dataset | str | os.PathLike | None" = None,
    labels_id_column: str = "id",
    id_column: str = "id",
    group_by: str | None = "auto",
    sources: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    abstain_threshold: float = 0.5,
    num_bins: int = 15,
    curve_thresholds: Sequence[float] = DEFAULT_CURVE_THRESHOLDS,
    split: str = "train",
) -> dict:
    """Score an annotated dataset against ground truth; returns the JSON-able report.

    Args:
        dataset: the annotated dataset, or a path/Hub id for :func:`load_annotations`.
        schema: schema name, YAML path or :class:`Schema`; default: rebuilt from the dataset's ClassLabels
            (:func:`schema_from_features`). Labels are matched by name, so column label order may differ.
        labels: ground truth joined by id (a dataset or path) with a ``truth`` struct or one column per
            attribute (label indices typed by ClassLabel, or label names); overrides a ``truth`` column.
        labels_id_column / id_column: the id columns of ``labels`` and of ``dataset``.
        group_by: a column (or dotted struct path) to break results down by; ``"auto"`` uses ``style``
            when present; None or ``"none"`` for no breakdown. ``"all"`` is always reported.
        sources: restrict to these sources (``clip``, ``tags``, ``blip2``, ``fused``); default: all present.
        attributes: restrict to these attributes; default: every attribute with ground truth.
        abstain_threshold: confidence below which a decision is withheld, for coverage.
        num_bins: ECE bins.
        curve_thresholds: thresholds of the coverage/accuracy curve.

    Returns:
        ``{"attributes": {attr: {"multi_label", "labels", "rows_with_truth", "results": {source: {group:
        metrics}}}}, "summary": {source: {group: {"mean_accuracy", "mean_macro_f1", "num_attributes"}}},
        "num_rows", "sources", "groups", "group_by", "settings", "notes", ...}``.
    """
    if not 0.0 <= abstain_threshold <= 1.0:
        raise EvaluationError(f"abstain_threshold must be in [0, 1], got {abstain_threshold}")
    if num_bins < 1:
        raise EvaluationError(f"num_bins must be >= 1, got {num_bins}")
    dataset_name = None if isinstance(dataset, (Dataset, DatasetDict)) else os.fspath(dataset)
    ds = load_annotations(dataset, split=split)
    if ds.num_rows == 0:
        raise EvaluationError("the annotated dataset has no rows")
    features = ds.features
    if schema is None:
        schema_obj = schema_from_features(features)
    else:
        schema_obj = load_schema(schema)
    notes: list[str] = []

    # -- group column
    if group_by == "auto":
        group_by = "style" if "style" in ds.column_names else None
    if group_by in ("", "none", "None"):
        group_by = None

    # -- read the needed columns once, as Arrow
    wanted = {TRUTH, id_column, f"{group_by}".split(".")[0] if group_by else ""}
    wanted |= {c for c in ds.column_names if c.startswith(_PROBS_PREFIX)}
    for attr in schema_obj:
        wanted |= {attr.name, f"{attr.name}_confidence"}
    table = ds.select_columns([c for c in ds.column_names if c in wanted]).with_format("arrow")[:]

    # -- ground truth
    labels_info = None
    if labels is not None:
        if id_column not in table.column_names:
            raise EvaluationError(f"the annotated dataset has no id column {id_column!r} (set --id_column)")
        labels_name = None if isinstance(labels, (Dataset, DatasetDict)) else os.fspath(labels)
        labels_ds = load_annotations(labels, split=split)
        if TRUTH in table.column_names:
            notes.append(f"the dataset's own '{TRUTH}' column was replaced by the joined labels")
        truth, labels_info = _join_truth(table.column(id_column).to_pylist(), labels_ds, labels_id_column, schema_obj)
        labels_info["path"] = labels_name
        if labels_info["matched_rows"] == 0:
            raise EvaluationError(
                f"no row of the dataset matched an id of the labels ({id_column!r} vs {labels_id_column!r})"
            )
    elif TRUTH in table.column_names:
        truth = read_truth(table.select([TRUTH]), features, schema_obj, "dataset")
    else:
        raise EvaluationError(
            f"no ground truth: the dataset has no {TRUTH!r} column; join labels with "
            "labels=... (--labels path --labels_id_column id)"
        )

    # -- attributes to score
    attr_names = list(attributes) if attributes else schema_obj.attribute_names
    for a in attr_names:
        schema_obj[a]  # raises a clear KeyError for unknown names
    without = [a for a in attr_names if a not in truth or not truth[a][1].any()]
    if without:
        notes.append(f"no ground truth for: {', '.join(without)} (not scored)")
    attr_names = [a for a in attr_names if a not in without]
    if not attr_names:
        raise EvaluationError("no attribute has ground truth; nothing to evaluate")

    # -- sources to score
    present = _present_sources(table)
    empty = [s for s in present if _source_is_empty(_combine(table.column(_PROBS_PREFIX + s)))]
    if empty:
        notes.append(f"sources with no probabilities at all (not run?), left out: {', '.join(empty)}")
    available = [s for s in present if s not in empty]
    if any(a in table.column_names for a in attr_names):
        available.append(FUSED)
    if sources:
        unknown = [s for s in sources if s not in available]
        if unknown:
            raise EvaluationError(f"sources not available in the dataset: {unknown}; available: {available}")
        available = [s for s in available if s in sources]
    if not available:
        raise EvaluationError("the dataset has neither fused attribute columns nor probs_<source> columns")

    # -- groups
    n = table.num_rows
    groups: dict[str, np.ndarray] = {ALL_GROUP: np.ones(n, dtype=bool)}
    if group_by:
        values = _group_values(table, features, group_by)
        for g in sorted(set(values.tolist())):
            if g == ALL_GROUP:
                raise EvaluationError(f"group_by: a group is named {ALL_GROUP!r}, which is reserved")
            groups[g] = values == g

    # -- score
    results: dict[str, Any] = {}
    for name in attr_names:
        attr = schema_obj[name]
        ref, valid = truth[name]
        per_source: dict[str, dict[str, dict]] = {}
        for source in available:
            if source == FUSED:
                if name not in table.column_names:
                    continue
                pred = fused_prediction(table, features, attr)
            else:
                pred = _source_prediction(table, source, attr)
            per_group: dict[str, dict] = {}
            for g, gmask in groups.items():
                mask = gmask & valid
                if not mask.any():
                    continue
                per_group[g] = _cell(pred, ref, mask, attr, abstain_threshold, num_bins, curve_thresholds)
            per_source[source] = per_group
        results[name] = {
            "multi_label": attr.multi_label,
            "labels": attr.label_names,
            "threshold": attr.threshold if attr.multi_label else None,
            "rows_with_truth": int(valid.sum()),
            "results": per_source,
        }

    # -- averages over single-label attributes
    summary: dict[str, dict[str, dict]] = {}
    single = [a for a in attr_names if not schema_obj[a].multi_label]
    for source in available:
        summary[source] = {}
        for g in groups:
            cells = [results[a]["results"].get(source, {}).get(g) for a in single]
            cells = [c for c in cells if c is not None]
            summary[source][g] = {
                "mean_accuracy": _mean(c["accuracy"] for c in cells),
                "mean_macro_f1": _mean(c["macro_f1"] for c in cells),
                "mean_ece": _mean(c["ece"] for c in cells),
                "num_attributes": len(cells),
            }
    if any(schema_obj[a].multi_label for a in attr_names) and FUSED in available:
        notes.append(
            "fused multi-label columns keep only the chosen labels' confidences: ECE and coverage not defined"
        )

    report: dict[str, Any] = {
        "dataset": dataset_name,
        "num_rows": n,
        "schema": schema_obj.name,
        "group_by": group_by,
        "groups": list(groups),
        "sources": available,
        "settings": {
            "abstain_threshold": float(abstain_threshold),
            "num_bins": int(num_bins),
            "curve_thresholds": [float(t) for t in curve_thresholds],
        },
        "counting": (
            "rows with null truth are skipped per attribute; null predictions count as wrong and are "
            "reported as 'missing', except in ECE (no confidence) and coverage (an abstention)"
        ),
        "summary": summary,
        "attributes": results,
        "notes": notes,
    }
    if labels_info is not None:
        report["labels"] = labels_info
    return report


# ============================================================================================ reporting
def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the per-source mean over single-label attributes, then one row per
    (attribute, group, source)."""
    t = report["settings"]["abstain_threshold"]
    groups = report["groups"]
    lines = [f"# Annotation accuracy{' of ' + str(report['dataset']) if report.get('dataset') else ''}", ""]
    lines.append(
        f"{report['num_rows']} rows; schema `{report['schema']}`; "
        + (f"groups by `{report['group_by']}`; " if report.get("group_by") else "")
        + f"abstain threshold {t:g}; ECE with {report['settings']['num_bins']} bins."
    )
    lines.append("Missing predictions count as wrong (`missing`), except in ECE and coverage.")
    if report.get("labels"):
        info = report["labels"]
        lines.append(
            f"Labels joined by `{info['id_column']}`: {info['matched_rows']} rows matched, "
            f"{info['unmatched_rows']} without labels, {info['unused_label_rows']} label rows unused."
        )
    lines.append("")
    lines.append("## Mean accuracy over single-label attributes")
    lines.append("")
    rows = [[s] + [report["summary"][s][g]["mean_accuracy"] for g in groups] for s in report["sources"]]
    lines.append(markdown_table(["source", *groups], rows))
    single_rows, multi_rows = [], []
    for name, a in report["attributes"].items():
        for g in groups:
            for s in report["sources"]:
                c = a["results"].get(s, {}).get(g)
                if c is None:
                    continue
                if a["multi_label"]:
                    multi_rows.append(
                        [name, g, s, c["n"], c["missing"], c["subset_accuracy"], c["micro_f1"], c["macro_f1"],
                         c["ece"], c["coverage"], c["selective_accuracy"]]
                    )
                else:
                    single_rows.append(
                        [name, g, s, c["n"], c["missing"], c["accuracy"], c["macro_f1"], c["mean_confidence"],
                         c["ece"], c["coverage"], c["selective_accuracy"]]
                    )
    if single_rows:
        lines += ["", "## Single-label attributes", ""]
        lines.append(markdown_table(
            ["attribute", "group", "source", "n", "missing", "accuracy", "macro-F1", "mean conf.", "ECE",
             f"coverage@{t:g}", f"accuracy@{t:g}"],
            single_rows,
        ))
    if multi_rows:
        lines += ["", "## Multi-label attributes", ""]
        lines.append(f"Coverage and accuracy@{t:g} count per-label decisions, not rows.")
        lines.append("")
        lines.append(markdown_table(
            ["attribute", "group", "source", "n", "missing", "exact match", "micro-F1", "macro-F1", "ECE",
             f"coverage@{t:g}", f"accuracy@{t:g}"],
            multi_rows,
        ))
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], output_dir: "str | os.PathLike") -> tuple[Path, Path]:
    """Write ``eval.md`` and ``eval.json`` into ``output_dir`` (created if needed); returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "eval.md", out / "eval.json"
    md.write_text(to_markdown(report))
    js.write_text(json.dumps(report, indent=1, allow_nan=False, default=_json_default) + "\n")
    return md, js
