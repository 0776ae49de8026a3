"""The reviewers' feedback log, and continuing the fusion policy from it.

The log is one Parquet file, in the format ``recipes/train_fusion.py --mode feedback --feedback LOG`` reads
(:data:`charattr_hf.fusion_training.FEEDBACK_FEATURES`), extended with columns that training ignores:

=================  =================================================================================================
``id``             the row id in the annotated dataset (``upload-<sha256 prefix>`` for an image uploaded to the app)
``attribute``      the attribute reviewed
``action``         the label index the event is about: the label shown (single-label), or the label whose presence
                   was shown (multi-label)
``propensity``     the probability the showing policy had of showing it (1.0: shown deterministically, or a label
                   the reviewer gave)
``reward``         1.0 the label is right (accept, or the reviewer's correction), 0.0 it is wrong (reject)
``policy_version`` the policy that chose what was shown (``simple-confidence`` for the fixed rule)
``timestamp``      when (UTC)
``label``          the name of label ``action``
``shown``          the name of the label the reviewer was shown
``verdict``        ``accept``, ``reject`` or ``correct``
``decision_id``    one per reviewer decision: a correction writes two events with the same id
``reviewer``       who decided (free text; ``app`` by default)
=================  =================================================================================================

One decision becomes events as follows. *Accept*: the shown label, reward 1. *Reject*: the shown label, reward
0. *Correct to label j* (single-label): the shown label with reward 0 and its propensity, and label ``j`` with
reward 1 and propensity 1.0 (the reviewer revealed the true label: a full-information event, which the
likelihood objective turns into the cross-entropy of ``j``). *Correct* a multi-label attribute to a set: one
event per label of the attribute, reward 1 for the labels in the set, 0 for the others, propensity 1.0.

Writes are atomic (the whole file is rewritten to a temporary name and renamed; a log of a million decisions
is ~20 MB), so training can read the log while the app runs. Images uploaded to the app have no row in the
annotated dataset: their model inputs (``probs_*``, ``quality``, ``flags``) are kept beside the log in
``<log>.rows.parquet``, an annotated dataset of its own that ``train_fusion.py --dataset`` also reads.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, List, Value

from .. import fusion_training as ft
from ..errors import UserError
from ..schema import QUALITY_FEATURES, Schema, probs_column

logger = logging.getLogger(__name__)

__all__ = ["FEEDBACK_LOG_FEATURES", "VERDICTS", "FeedbackLog", "decision_events", "continue_policy",
           "MODEL_INPUT_COLUMNS"]

FEEDBACK_LOG_FEATURES = Features(
    {
        **ft.FEEDBACK_FEATURES,
        "label": Value("string"),
        "shown": Value("string"),
        "verdict": Value("string"),
        "decision_id": Value("string"),
        "reviewer": Value("string"),
    }
)
VERDICTS = ("accept", "reject", "correct")
#: Columns of an annotated row the policy reads (besides the ``probs_<source>`` columns).
MODEL_INPUT_COLUMNS = ("id", "quality", "flags", "embedding")


def decision_events(
    schema: Schema,
    row_id: str,
    attribute: str,
    shown: int,
    propensity: float,
    verdict: str,
    correct: "str | Sequence[str] | None" = None,
    policy_version: str = "",
    reviewer: str = "app",
    now: _dt.datetime | None = None,
) -> list[dict]:
    """The log rows of one reviewer decision (see the module docstring)."""
    attr = schema[attribute]
    k = attr.num_labels
    if not 0 <= int(shown) < k:
        raise UserError(f"shown label {shown} out of range for {attribute!r} ({k} labels)")
    if not 0.0 < float(propensity) <= 1.0:
        raise UserError(f"propensity must be in (0, 1], got {propensity}")
    if verdict not in VERDICTS:
        raise UserError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    decision = uuid.uuid4().hex
    shown_name = attr.labels[int(shown)].name
    base = {"id": str(row_id), "attribute": attribute, "policy_version": policy_version or "", "timestamp": now,
            "shown": shown_name, "verdict": verdict, "decision_id": decision, "reviewer": reviewer or "app"}

    def event(action: int, prop: float, reward: float) -> dict:
        return {**base, "action": int(action), "propensity": float(prop), "reward": float(reward),
                "label": attr.labels[int(action)].name}

    if verdict == "accept":
        return [event(shown, propensity, 1.0)]
    if verdict == "reject":
        return [event(shown, propensity, 0.0)]
    if correct is None or correct == "" or correct == []:
        raise UserError(f"a correction of {attribute!r} needs the right label(s)")
    if attr.multi_label:
        names = [correct] if isinstance(correct, str) else list(correct)
        chosen = {attr.index(n) for n in names if n}
        return [event(j, 1.0, float(j in chosen)) for j in range(k)]
    if not isinstance(correct, str):
        raise UserError(f"{attribute!r} takes one label, got {correct!r}")
    j = attr.index(correct)
    if j == int(shown):  # "correcting" to the label shown is an accept
        return [{**event(shown, propensity, 1.0), "verdict": "accept"}]
    return [event(shown, propensity, 0.0), event(j, 1.0, 1.0)]


class FeedbackLog:
    """An append-only feedback log in one Parquet file (atomic rewrites; thread-safe within a process)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if self.path.suffix != ".parquet":
            raise UserError(f"--feedback_log must name a .parquet file, got {str(path)!r}")
        self.rows_path = self.path.with_name(self.path.stem + ".rows.parquet")
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.read_table()  # a file that is not a feedback log fails now, not at the first decision

    # ------------------------------------------------------------------ events
    def read_table(self) -> pa.Table:
        schema = FEEDBACK_LOG_FEATURES.arrow_schema
        if not self.path.exists():
            return schema.empty_table()
        table = pq.read_table(self.path)
        missing = [c for c in ("id", "attribute", "action", "propensity", "reward") if c not in table.column_names]
        if missing:
            raise UserError(f"{self.path} is not a feedback log (no columns {missing}); choose another --feedback_log")
        columns = []
        for f in schema:
            if f.name in table.column_names:
                columns.append(table.column(f.name).cast(f.type))
            else:  # a log written before a column existed (e.g. by simulate_feedback)
                columns.append(pa.nulls(table.num_rows, f.type))
        return pa.Table.from_arrays(columns, schema=schema)

    def read(self) -> Dataset:
        """The log as a ``datasets.Dataset`` (typed by :data:`FEEDBACK_LOG_FEATURES`)."""
        return Dataset(self.read_table())

    def __len__(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows if self.path.exists() else 0

    def append(self, events: Sequence[dict]) -> int:
        """Append events; returns the number of events in the log afterwards."""
        if not events:
            return len(self)
        schema = FEEDBACK_LOG_FEATURES.arrow_schema
        new = pa.Table.from_pylist([{c: e.get(c) for c in schema.names} for e in events], schema=schema)
        with self._lock:
            table = pa.concat_tables([self.read_table(), new])
            _write_atomic(table, self.path)
            return table.num_rows

    def decided(self) -> set[tuple[str, str]]:
        """(id, attribute) pairs that already have a decision."""
        if not self.path.exists():
            return set()
        t = pq.read_table(self.path, columns=["id", "attribute"])
        return set(zip(t.column("id").to_pylist(), t.column("attribute").to_pylist()))

    # ------------------------------------------------------------------ rows of uploaded images
    def add_rows(self, rows: Iterable[dict], schema: Schema, sources: Sequence[str]) -> None:
        """Keep the model inputs of uploaded images (once per id) for training."""
        feats = _row_features(schema, sources)
        rows = [r for r in rows]
        if not rows:
            return
        with self._lock:
            old = pq.read_table(self.rows_path) if self.rows_path.exists() else None
            have = set(old.column("id").to_pylist()) if old is not None else set()
            fresh, seen = [], set()
            for r in rows:
                if r["id"] in have or r["id"] in seen:
                    continue
                seen.add(r["id"])
                fresh.append({c: r.get(c) for c in feats})
            if not fresh:
                return
            new = pa.Table.from_pylist(fresh, schema=feats.arrow_schema)
            if old is not None:
                try:
                    new = pa.concat_tables([old.cast(new.schema), new])
                except (pa.ArrowInvalid, ValueError) as exc:
                    raise UserError(f"{self.rows_path} was written for another schema or sources; move it away "
                                    f"or use another --feedback_log ({exc})") from exc
            _write_atomic(new, self.rows_path)

    def read_rows(self) -> pa.Table | None:
        return pq.read_table(self.rows_path) if self.rows_path.exists() else None


def _row_features(schema: Schema, sources: Sequence[str]) -> Features:
    feats: dict[str, Any] = {"id": Value("string"), "quality": QUALITY_FEATURES, "flags": List(Value("string"))}
    for s in sources:
        feats[probs_column(s)] = schema.probs_feature()
    return Features(feats)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def continue_policy(
    model: Any,
    schema: Schema,
    log: FeedbackLog,
    tables: Sequence[pa.Table],
    sources: Sequence[str],
    args: "ft.FusionTrainingConfig | None" = None,
    policy_version: str | None = None,
    command: str | None = None,
) -> tuple[Any, dict]:
    """Train a copy of ``model`` (a ``CharattrFusionModel``; None: a fresh policy for ``schema`` and ``sources``)
    on the feedback log; ``tables``: annotated rows (with ``id``, ``probs_*``, ``quality``, ``flags``) covering
    the logged ids, and other rows, on which a trained ``model`` keeps its earlier answers (the library's
    defaults, ``args`` None). Returns the new model and a summary of the round."""
    import copy

    events = log.read()
    if len(events) == 0:
        raise UserError("the feedback log is empty: review some rows first")
    parts = [t for t in tables if t is not None and t.num_rows]
    if not parts:
        raise UserError("none of the logged rows is in the annotated dataset or the app's uploads")
    common = sorted(set.intersection(*(set(t.column_names) for t in parts)), key=parts[0].column_names.index)
    table = pa.concat_tables([t.select(common) for t in parts], promote_options="permissive")
    data_ds = Dataset(table)
    ids, first = np.unique(np.asarray(data_ds["id"], dtype=object), return_index=True)
    if len(ids) < len(data_ds):
        data_ds = data_ds.select(sorted(first.tolist()))
    if model is None:
        config = ft.build_config(schema, data_ds, sources=list(sources), hidden_size=32)
        model = ft.build_model(config, seed=0)
    else:
        model = copy.deepcopy(model)
    data = ft.build_features(data_ds, model.config, label_column=None)
    args = args or ft.FusionTrainingConfig()
    result = ft.train_from_feedback(model, data, events, args=args, data_name=log.path.name, command=command,
                                    policy_version=policy_version)
    model.eval()
    info = dict(model.config.training_info[-1])
    info.update({"best_epoch": result.best_epoch, "validation_loss": result.best_val_loss,
                 "events_in_log": len(events)})
    return model, info
