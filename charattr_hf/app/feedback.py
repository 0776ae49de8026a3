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

The log is a folder of Parquet files (a Parquet dataset: ``<log>.parquet/part-*.parquet``, all with the schema
above) that grows by whole files: a decision writes one small file (to a hidden name, then renamed), so it costs
the same with ten events in the log as with a million, and training can read the log while the app runs. Every
256 decisions the app merges its latest 256 small files into one, and continuing the policy merges the whole
log into one file first. Processes sharing the log (the app, ``recipes/app.py --retrain``) take a lock on it
(``<log>.parquet/.lock``) to merge and read it, and a merge a process died in is finished by the next one, so every
event is there exactly once (a reader that takes no lock, e.g. ``train_fusion.py``, may see some events twice
while a merge runs). Images
uploaded to the app have no row in the annotated dataset: their model inputs (``probs_*``, ``quality``,
``flags``) are kept beside the log in ``<log>.rows.parquet/``, an annotated dataset of its own that
``train_fusion.py --dataset`` also reads. A log written as one Parquet file by an earlier version becomes such a
folder when the app opens it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import threading
import time
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

try:
    import fcntl
except ImportError:  # not on POSIX: each process's own lock is all there is
    fcntl = None

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


class PartFolder:
    """A Parquet dataset folder that grows by whole files: :meth:`append` writes one file (to a hidden name, then
    renamed, so readers never see half of it), :meth:`merge` replaces files by one. Readers (``pyarrow``,
    ``datasets.load_dataset``) skip the hidden names; files sort in the order they were written.

    ``merge_every``: after that many appends, the files they wrote are merged into one (the cost of a merge does
    not grow with the folder, so an append stays O(1) amortised while the folder keeps about n / merge_every
    files).

    Several processes may share the folder (the app serving, ``recipes/app.py --retrain`` beside it): a merge and
    :meth:`read` hold an exclusive ``fcntl.flock`` on ``<folder>/.lock``, so a merge never works from files
    another one is replacing, and a read never sees a merge half done. An append needs no lock (it only adds a
    file). A merge is crash-safe: the merged rows go to a new file, and before it is renamed into place a small
    manifest (``.merge.json``) names it and the files it replaces; whoever takes the lock next finishes the removal
    of those files (the merged file is there) or drops the merged file (it is not), so every row is in the folder
    exactly once whatever the point at which a process died."""

    def __init__(self, path: Path, merge_every: int = 256):
        self.path = path
        self.merge_every = merge_every
        self._fresh: list[Path] = []  # files appended since the last merge
        self._seq = 0

    def files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir()
                      if p.suffix == ".parquet" and not p.name.startswith((".", "_")) and p.is_file())

    def _name(self) -> Path:
        self._seq += 1
        return self.path / f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"

    def _write(self, table: pa.Table, final: Path) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    def append(self, table: pa.Table) -> None:
        self._fresh.append(self._write(table, self._name()))
        if len(self._fresh) >= self.merge_every:
            self.merge(self._fresh)

    @contextlib.contextmanager
    def locked(self):
        """Hold the folder's lock (exclusive, across processes and threads), after finishing an interrupted merge."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            self._recover()
            yield

    def _recover(self) -> None:
        """Finish (or undo) a merge a dead process left: see the class docstring."""
        manifest = self.path / _MANIFEST
        if manifest.exists():
            try:
                plan = json.loads(manifest.read_text())
                merged, replaced = plan["merged"], plan["replaces"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{manifest} is damaged ({exc}); the files it names may hold rows twice: move it "
                                "away after checking the folder") from exc
            if (self.path / merged).is_file():  # the merged file is in place: the replaced ones go
                for name in replaced:
                    if name != merged:
                        (self.path / name).unlink(missing_ok=True)
                logger.info("%s: finished an interrupted merge of %d files", self.path, len(replaced))
            manifest.unlink()
        for tmp in self.path.glob(".merging-*"):  # half-written by a merge that died (an append's are its own)
            tmp.unlink(missing_ok=True)

    def merge(self, files: Sequence[Path] | None = None) -> None:
        """Replace ``files`` (default: every file) by one, named after the last of them so that it keeps their
        place in the order. Files another process removed in the meantime are left out."""
        with self.locked():
            files = sorted(p for p in (self.files() if files is None else files) if p.exists())
            merged = set(files)
            self._fresh = [p for p in self._fresh if p not in merged]
            if len(files) < 2:
                return
            target = self.path / _merged_name(files[-1].name)
            tmp = target.with_name(f".merging-{target.name}")
            pq.write_table(_read_files(files), tmp)
            plan = {"merged": target.name, "replaces": [p.name for p in files]}
            _write_text(self.path / _MANIFEST, json.dumps(plan))
            os.replace(tmp, target)
            for p in files:
                p.unlink(missing_ok=True)
            (self.path / _MANIFEST).unlink()

    def read(self, columns: Sequence[str] | None = None) -> pa.Table | None:
        if not self.path.is_dir():
            return None
        with self.locked():
            files = self.files()
            return _read_files(files, columns) if files else None

    def schema(self) -> pa.Schema | None:
        if not self.path.is_dir():
            return None
        with self.locked():
            files = self.files()
            return pq.read_schema(files[0]) if files else None


#: The manifest of a merge under way (see :class:`PartFolder`).
_MANIFEST = ".merge.json"


def _merged_name(name: str) -> str:
    """The name of a merge of files ending with ``name``: ``part-X.parquet`` -> ``part-X.m1.parquet`` ->
    ``part-X.m2.parquet``; it sorts where ``name`` did (after every earlier file, before every later one) and is
    never a name still in the folder."""
    base, _, rest = name.partition(".")
    m = re.fullmatch(r"m(\d+)\.parquet", rest)
    return f"{base}.m{int(m.group(1)) + 1 if m else 1}.parquet"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".merging-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_files(files: Sequence[Path], columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of ``files``, in that order."""
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in files])


class FeedbackLog:
    """The append-only feedback log: a Parquet dataset folder (see the module docstring). Thread-safe within a
    process; the counts and the set of decided items are kept in memory, so a decision costs O(1)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if self.path.suffix != ".parquet":
            raise UserError(f"--feedback_log must name a .parquet file, got {str(path)!r}")
        self.rows_path = self.path.with_name(self.path.stem + ".rows.parquet")
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._events = PartFolder(self.path)
        self._rows = PartFolder(self.rows_path)
        for folder in (self.path, self.rows_path):
            _folder_from_file(folder, _normalise_events if folder == self.path else None)
        # a folder that is not a feedback log fails now, not at the first decision
        t = self.read_table(columns=["id", "attribute"])
        self._count = t.num_rows
        self._decided = set(zip(t.column("id").to_pylist(), t.column("attribute").to_pylist()))
        rows = self._rows.read(columns=["id"])
        self._row_ids = set(rows.column("id").to_pylist()) if rows is not None else set()

    # ------------------------------------------------------------------ events
    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every event, in the order logged, typed by :data:`FEEDBACK_LOG_FEATURES` (``columns``: some only)."""
        schema = FEEDBACK_LOG_FEATURES.arrow_schema
        with self._lock, (self._events.locked() if self.path.is_dir() else contextlib.nullcontext()):
            files = self._events.files()
            tables = []
            for p in files:  # usually one or a few files (merged); a file of another layout is normalised alone
                names = pq.read_schema(p).names
                missing = [c for c in ("id", "attribute", "action", "propensity", "reward") if c not in names]
                if missing:
                    raise UserError(f"{p} is not part of a feedback log (no columns {missing}); choose another "
                                    "--feedback_log")
            if files:
                try:
                    tables.append(_read_files(files, columns))
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    tables = [_normalise_events(pq.read_table(p)).select(columns or schema.names) for p in files]
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        if not tables:
            return schema.empty_table()
        return pa.concat_tables([t.cast(schema) for t in tables])

    def read(self) -> Dataset:
        """The log as a ``datasets.Dataset`` (typed by :data:`FEEDBACK_LOG_FEATURES`)."""
        return Dataset(self.read_table())

    def __len__(self) -> int:
        return self._count

    def append(self, events: Sequence[dict]) -> int:
        """Append events (one small file); returns the number of events in the log afterwards."""
        if not events:
            return len(self)
        schema = FEEDBACK_LOG_FEATURES.arrow_schema
        new = pa.Table.from_pylist([{c: e.get(c) for c in schema.names} for e in events], schema=schema)
        with self._lock:
            self._events.append(new)
            self._count += new.num_rows
            self._decided.update((str(e["id"]), e["attribute"]) for e in events)
            return self._count

    def decided(self) -> "collections.abc.Set[tuple[str, str]]":
        """(id, attribute) pairs that already have a decision: a read-only view of the log's own set, so that asking
        costs nothing whatever the log's size (a membership test and ``len`` are atomic; iterating copies)."""
        return _SetView(self._decided, self._lock)

    def compact(self) -> None:
        """Merge the log (and the uploaded images' rows) into one file each."""
        with self._lock:
            self._events.merge()
            self._rows.merge()

    # ------------------------------------------------------------------ rows of uploaded images
    def add_rows(self, rows: Iterable[dict], schema: Schema, sources: Sequence[str]) -> None:
        """Keep the model inputs of uploaded images (once per id) for training."""
        feats = _row_features(schema, sources)
        with self._lock:
            fresh = []
            for r in rows:
                if r["id"] in self._row_ids:
                    continue
                self._row_ids.add(r["id"])
                fresh.append({c: r.get(c) for c in feats})
            if not fresh:
                return
            new = pa.Table.from_pylist(fresh, schema=feats.arrow_schema)
            old = self._rows.schema()
            if old is not None and not old.equals(new.schema, check_metadata=False):
                self._row_ids.difference_update(r["id"] for r in fresh)
                raise UserError(f"{self.rows_path} was written for another schema or sources; move it away "
                                f"or use another --feedback_log")
            self._rows.append(new)

    def read_rows(self) -> pa.Table | None:
        with self._lock:
            return self._rows.read()


class _SetView(collections.abc.Set):
    """A read-only view of a set that another thread may add to."""

    def __init__(self, items: set, lock: threading.Lock):
        self._items, self._lock = items, lock

    def __contains__(self, item) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        with self._lock:
            return iter(list(self._items))


def _normalise_events(table: pa.Table) -> pa.Table:
    """A log table with the columns of :data:`FEEDBACK_LOG_FEATURES` (those a log written before a column
    existed lacks, e.g. one written by ``simulate_feedback``, as nulls)."""
    schema = FEEDBACK_LOG_FEATURES.arrow_schema
    missing = [c for c in ("id", "attribute", "action", "propensity", "reward") if c not in table.column_names]
    if missing:
        raise UserError(f"not a feedback log (no columns {missing}); choose another --feedback_log")
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _folder_from_file(path: Path, normalise) -> None:
    """Turn a log (or rows) file of an earlier version, one Parquet file at ``path``, into the folder that holds
    it; an interrupted conversion is finished."""
    building = path.with_name(f".{path.name}.folder")
    old = path.with_name(f".{path.name}.file")
    if path.is_file():
        try:
            table = pq.read_table(path)
            table = normalise(table) if normalise is not None else table
        except UserError as exc:
            raise UserError(f"{path} is {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{path} is not a feedback log ({exc}); choose another --feedback_log") from exc
        building.mkdir(exist_ok=True)
        pq.write_table(table, building / "part-00000000000000000000-0-000000.parquet")
        os.replace(path, old)
    if building.is_dir() and not path.exists():
        os.rename(building, path)
        logger.info("%s: converted to a folder of Parquet files, the feedback log's format now", path)
    if path.is_dir():
        old.unlink(missing_ok=True)


def _row_features(schema: Schema, sources: Sequence[str]) -> Features:
    feats: dict[str, Any] = {"id": Value("string"), "quality": QUALITY_FEATURES, "flags": List(Value("string"))}
    for s in sources:
        feats[probs_column(s)] = schema.probs_feature()
    return Features(feats)


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
