"""An annotated output read on demand: row groups of its Parquet files, never the whole table.

:class:`AnnotatedStore` opens the ``data/<split>-*.parquet`` files of an annotation output (a local folder, a
Parquet file, or a Hub dataset id read through ``huggingface_hub``'s ``HfFileSystem``) as a
``pyarrow.dataset`` and lists its row groups. A :class:`Query` (attribute and label, confidence range, flag,
duplicate group, source disagreement) is evaluated with ``pyarrow.compute`` one row group at a time, reading
only the columns the filter needs, and only as far as the page asked for: browsing page 3 of a billion-row
output reads a few row groups. Pages are read back by row group and position, images included only then.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ..errors import UserError
from ..schema import probs_sources

logger = logging.getLogger(__name__)

__all__ = ["AnnotatedStore", "AttributeInfo", "Query", "fixed_matrix", "resolve_files", "rows_with_ids"]

#: Columns never read when showing a row (large, shown separately or not at all).
HEAVY_COLUMNS = ("image", "embedding")
#: The near-duplicate group column written by curation; without it, rows sharing an image hash are a group.
DUP_COLUMNS = ("dup_group", "duplicate_group")


@dataclass(frozen=True)
class AttributeInfo:
    name: str
    labels: tuple[str, ...]
    multi_label: bool = False
    threshold: float = 0.5


@dataclass
class Query:
    """A filter over annotated rows. Empty fields filter nothing.

    ``attribute`` + ``label``: rows whose fused label (one of them, multi-label) is ``label``.
    ``conf_min``/``conf_max``: the fused confidence of ``attribute`` (its lowest, multi-label), or without an
    attribute the row's lowest confidence over all attributes. ``flag``: rows carrying that flag (``"error"``:
    rows whose image could not be used; ``"any"``: rows with any flag). ``duplicates``: ``"grouped"`` (rows in
    a duplicate group), ``"unique"``, or one group's value. ``disagree``: the sources' top labels differ (for
    ``attribute``, or for any attribute).
    """

    attribute: str | None = None
    label: str | None = None
    conf_min: float = 0.0
    conf_max: float = 1.0
    flag: str | None = None
    duplicates: str | None = None
    disagree: bool = False

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, default=str)


def fixed_matrix(arr: "pa.Array | pa.ChunkedArray", k: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``fixed_size_list<float>[k]`` column as an ``(n, k)`` float matrix (NaN where null) and its validity."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    values = arr.values.slice(arr.offset * k, n * k)
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, k)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return matrix, valid


def _list_contains(arr: "pa.Array | pa.ChunkedArray", value: Any) -> np.ndarray:
    """Rows of a list column that contain ``value``."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    hit = np.zeros(len(arr), dtype=bool)
    if len(arr) == 0:
        return hit
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(arr)
    match = pc.equal(values, pa.scalar(value, type=values.type)).to_numpy(zero_copy_only=False)
    hit[parents[np.asarray(match, dtype=bool)]] = True
    return hit


def resolve_files(source: str, split: str = "train") -> tuple[list[str], Any]:
    """Parquet files of ``split`` in an annotation output, and the filesystem to read them with (None: local).

    ``source``: an output folder (``data/<split>-*.parquet``), a folder of Parquet files, one Parquet file, or a
    Hub dataset id (``user/name``, read lazily over ``HfFileSystem``)."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise UserError(f"{source} is not a Parquet file: give an annotation output folder or a .parquet file")
        return [str(path)], None
    if path.is_dir():
        files = sorted(path.glob(f"data/{split}-*.parquet"))
        if not files:
            files = sorted(p for p in path.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))
            if files and (path / "data").is_dir():
                named = sorted({p.name.split("-")[0] for p in (path / "data").glob("*.parquet")})
                raise UserError(f"{source} has no split {split!r} (splits: {named}); pass --split")
        if not files:
            raise UserError(f"{source} holds no Parquet files: annotate into it first (recipes/annotate.py)")
        return [str(p) for p in files], None
    if source.count("/") == 1 and not source.startswith((".", "/")):
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem()
        pattern = f"datasets/{source}/data/{split}-*.parquet"
        try:
            files = sorted(fs.glob(pattern))
        except Exception as exc:  # noqa: BLE001 - offline, missing repo, no access
            raise UserError(f"cannot list the Hub dataset {source!r}: {type(exc).__name__}: {exc}") from exc
        if not files:
            raise UserError(f"the Hub dataset {source!r} has no files data/{split}-*.parquet")
        return files, fs
    raise UserError(f"--dataset {source!r} is neither a local folder or file nor a Hub dataset id (user/name)")


class AnnotatedStore:
    """Lazy, row-group-wise access to an annotated dataset (see the module docstring)."""

    def __init__(self, source: str, split: str = "train"):
        from datasets import ClassLabel, Features, List, Sequence as HfSequence

        self.source, self.split = source, split
        self.files, fs = resolve_files(source, split)
        if fs is not None:
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            self.filesystem = PyFileSystem(FSSpecHandler(fs))
        else:
            self.filesystem = None
        self.dataset = pads.dataset(self.files, format="parquet", filesystem=self.filesystem)
        self.schema = self.dataset.schema
        # (fragment of one row group, number of rows, first global row)
        self.groups: list[tuple[Any, int, int]] = []
        start = 0
        for fragment in self.dataset.get_fragments():
            for rg in fragment.split_by_row_group():
                n = rg.row_groups[0].num_rows
                self.groups.append((rg, n, start))
                start += n
        self.num_rows = start
        try:
            self.features = Features.from_arrow_schema(self.schema)
        except Exception:  # noqa: BLE001 - a Parquet file written without datasets' metadata
            self.features = None
        self.attributes: list[AttributeInfo] = []
        names = set(self.schema.names)
        for name in self.schema.names:
            if f"{name}_confidence" not in names or self.features is None:
                continue
            feat = self.features[name]
            multi = isinstance(feat, (List, HfSequence, list))
            inner = feat.feature if multi and not isinstance(feat, list) else (feat[0] if multi else feat)
            if isinstance(inner, ClassLabel):
                self.attributes.append(AttributeInfo(name, tuple(inner.names), multi))
        self.sources = probs_sources(self.schema.names)
        self.dup_column = next((c for c in DUP_COLUMNS if c in names), None)
        self._dup_hashes: pa.Array | None = None
        self._queries: dict[str, dict] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ description
    def attribute(self, name: str) -> AttributeInfo:
        for a in self.attributes:
            if a.name == name:
                return a
        raise UserError(f"{self.source} has no attribute {name!r}; attributes: {[a.name for a in self.attributes]}")

    def flag_names(self, max_groups: int = 8) -> list[str]:
        """Flags seen in the first row groups (for the filter menu)."""
        if "flags" not in self.schema.names:
            return []
        seen: set[str] = set()
        for rg, _, _ in self.groups[:max_groups]:
            flat = pc.list_flatten(rg.to_table(columns=["flags"]).column("flags").combine_chunks())
            seen.update(v for v in flat.to_pylist() if v)
        return sorted(seen)

    # ------------------------------------------------------------------ filtering
    def _needed(self, q: Query) -> list[str]:
        cols: set[str] = set()
        attrs = [q.attribute] if q.attribute else [a.name for a in self.attributes]
        if q.attribute and q.label:
            cols.add(q.attribute)
        if (q.conf_min > 0.0 or q.conf_max < 1.0):
            cols.update(f"{a}_confidence" for a in attrs)
        if q.flag:
            cols.add("error" if q.flag == "error" else "flags")
        if q.duplicates:
            cols.add(self.dup_column or "sha256")
        if q.disagree:
            cols.update(f"probs_{s}" for s in self.sources)
        return sorted(c for c in cols if c in self.schema.names)

    def mask(self, table: pa.Table, q: Query) -> np.ndarray:
        """Which rows of ``table`` (one row group, the columns of :meth:`_needed`) pass ``q``."""
        n = table.num_rows
        keep = np.ones(n, dtype=bool)
        if q.attribute and q.label:
            info = self.attribute(q.attribute)
            if q.label not in info.labels:
                raise UserError(f"{q.attribute} has no label {q.label!r}; labels: {list(info.labels)}")
            index = info.labels.index(q.label)
            col = table.column(q.attribute)
            if info.multi_label:
                keep &= _list_contains(col, index)
            else:
                keep &= np.asarray(pc.fill_null(pc.equal(col, index), False).to_numpy(zero_copy_only=False), bool)
        if q.conf_min > 0.0 or q.conf_max < 1.0:
            keep &= self._confidence_ok(table, q)
        if q.flag:
            if q.flag == "error":
                keep &= np.asarray(table.column("error").is_valid().to_numpy(zero_copy_only=False), bool)
            elif q.flag == "any":
                lengths = pc.fill_null(pc.list_value_length(table.column("flags")), 0)
                keep &= lengths.to_numpy(zero_copy_only=False) > 0
            else:
                keep &= _list_contains(table.column("flags"), q.flag)
        if q.duplicates:
            keep &= self._duplicates_ok(table, q.duplicates)
        if q.disagree:
            keep &= self.disagreement(table, [q.attribute] if q.attribute else None) > 0
        return keep

    def _confidence_ok(self, table: pa.Table, q: Query) -> np.ndarray:
        attrs = [self.attribute(q.attribute)] if q.attribute else self.attributes
        lowest = np.full(table.num_rows, np.inf)
        for info in attrs:
            col = table.column(f"{info.name}_confidence")
            if info.multi_label:  # the lowest confidence of the chosen labels; NaN when none was chosen
                col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
                arr = np.full(table.num_rows, np.nan)
                flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
                if len(flat):
                    np.fmin.at(arr, pc.list_parent_indices(col).to_numpy(zero_copy_only=False), flat)
            else:
                arr = col.to_numpy(zero_copy_only=False).astype(np.float64)
            lowest = np.fmin(lowest, arr)
        lowest[np.isinf(lowest)] = np.nan
        with np.errstate(invalid="ignore"):
            return (lowest >= q.conf_min) & (lowest <= q.conf_max)  # rows without a label never pass

    def _duplicates_ok(self, table: pa.Table, mode: str) -> np.ndarray:
        if self.dup_column:
            col = table.column(self.dup_column)
            grouped = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
            if mode == "grouped":
                return grouped
            if mode == "unique":
                return ~grouped
            values = np.asarray(pc.cast(col, pa.string()).to_pylist(), dtype=object)
            return values == mode
        hashes = table.column("sha256")
        dup = self.duplicate_hashes()
        grouped = np.asarray(pc.fill_null(pc.is_in(hashes, value_set=dup), False).to_numpy(zero_copy_only=False),
                             bool)
        if mode == "grouped":
            return grouped
        if mode == "unique":
            return ~grouped
        return np.asarray(pc.fill_null(pc.equal(hashes, mode), False).to_numpy(zero_copy_only=False), bool)

    def duplicate_hashes(self) -> pa.Array:
        """Image hashes that occur more than once (exact duplicates), counted over the whole output once (the
        hash column alone, ~70 bytes a row)."""
        if self._dup_hashes is None:
            column = self.dataset.to_table(columns=["sha256"]).column("sha256").drop_null()
            counts = pc.value_counts(column.combine_chunks()) if len(column) else pa.array([], pa.struct(
                [("values", pa.string()), ("counts", pa.int64())]))
            many = pc.greater(counts.field("counts"), 1)
            self._dup_hashes = pc.filter(counts.field("values"), many)
        return self._dup_hashes

    def disagreement(self, table: pa.Table, attributes: Sequence[str] | None = None) -> np.ndarray:
        """Per row, the number of attributes on which the sources with evidence pick different top labels
        (multi-label: differ on any label's presence)."""
        count = np.zeros(table.num_rows, dtype=np.int64)
        sources = [s for s in self.sources if f"probs_{s}" in table.column_names]
        if len(sources) < 2:
            return count
        for info in self.attributes:
            if attributes is not None and info.name not in attributes:
                continue
            picks = []
            for s in sources:
                child = pc.struct_field(table.column(f"probs_{s}"), info.name)
                matrix, valid = fixed_matrix(child, len(info.labels))
                if info.multi_label:
                    top = (matrix >= info.threshold).astype(np.int64) @ (1 << np.arange(len(info.labels)))
                else:
                    top = np.where(valid, np.nan_to_num(matrix, nan=-1.0).argmax(1), -1)
                picks.append(np.where(valid, top, -1))
            stack = np.stack(picks)  # (sources, rows)
            present = stack >= 0
            hi = np.where(present, stack, np.iinfo(np.int64).min).max(0)
            lo = np.where(present, stack, np.iinfo(np.int64).max).min(0)
            count += (present.sum(0) >= 2) & (hi != lo)
        return count

    def query_state(self, q: Query) -> dict:
        """Progress of ``q``: matches found so far (global row numbers), row groups scanned, done or not."""
        with self._lock:
            key = q.key()
            state = self._queries.get(key)
            if state is None:
                if len(self._queries) > 32:
                    self._queries.clear()
                state = {"matches": [], "scanned": 0, "done": False}
                self._queries[key] = state
            return state

    def find(self, q: Query, upto: int) -> dict:
        """Scan row groups until ``upto`` matches are known (or all row groups are read); returns the state."""
        state = self.query_state(q)
        needed = self._needed(q)
        with self._lock:
            while len(state["matches"]) < upto and state["scanned"] < len(self.groups):
                rg, n, start = self.groups[state["scanned"]]
                if needed:
                    table = rg.to_table(columns=needed)
                    hits = np.flatnonzero(self.mask(table, q))
                else:
                    hits = np.arange(n)
                state["matches"].extend((start + hits).tolist())
                state["scanned"] += 1
            state["done"] = state["scanned"] >= len(self.groups)
        return state

    def page(self, q: Query, page: int, size: int) -> tuple[list[int], dict]:
        """Global row numbers of page ``page`` (0-based) of ``q``'s matches, and the scan state."""
        state = self.find(q, (page + 1) * size)
        return state["matches"][page * size : (page + 1) * size], state

    # ------------------------------------------------------------------ reading rows
    def _locate(self, row: int) -> tuple[int, int]:
        starts = [g[2] for g in self.groups]
        g = int(np.searchsorted(starts, row, side="right") - 1)
        if g < 0 or row >= self.num_rows:
            raise IndexError(f"row {row} out of range (0..{self.num_rows - 1})")
        return g, row - self.groups[g][2]

    def read_rows(self, rows: Iterable[int], columns: Sequence[str] | None = None) -> list[dict]:
        """Rows by global number, as Python dicts (labels stay indices), reading only their row groups."""
        rows = list(rows)
        if columns is None:
            columns = [c for c in self.schema.names if c not in HEAVY_COLUMNS]
        by_group: dict[int, list[tuple[int, int]]] = {}
        for k, r in enumerate(rows):
            g, offset = self._locate(r)
            by_group.setdefault(g, []).append((k, offset))
        out: list[dict | None] = [None] * len(rows)
        for g, items in by_group.items():
            table = self.groups[g][0].to_table(columns=list(columns))
            picked = table.take(pa.array([o for _, o in items])).to_pylist()
            for (k, _), row in zip(items, picked):
                out[k] = row
        return out  # type: ignore[return-value]

    def images(self, rows: Sequence[int], paths: Sequence[str | None] | None = None) -> list:
        """PIL images of rows (None where there is none): the stored bytes when the output kept images (one read
        of the image column per row group), else the file at the row's ``path`` when its bytes hash to the row's
        ``sha256`` (a row cannot make the app show a file it does not already know)."""
        columns = [c for c in ("image", "sha256") if c in self.schema.names]
        cells = self.read_rows(rows, columns) if columns else [{}] * len(rows)
        paths = list(paths) if paths is not None else [None] * len(rows)
        return [_open_image((c or {}).get("image"), p, (c or {}).get("sha256")) for c, p in zip(cells, paths)]

    def image_of(self, row: dict, row_number: int | None = None):
        """The PIL image of one row (see :meth:`images`)."""
        if row_number is None:
            return _open_image(None, row.get("path"), row.get("sha256"))
        return self.images([row_number], [row.get("path")])[0]

    def label_name(self, attribute: str, value: Any) -> Any:
        info = self.attribute(attribute)
        if value is None:
            return None
        if info.multi_label:
            return [info.labels[v] for v in value]
        return info.labels[value]

    def describe(self) -> dict:
        return {"source": self.source, "split": self.split, "rows": self.num_rows, "files": len(self.files),
                "row_groups": len(self.groups), "attributes": [a.name for a in self.attributes],
                "sources": self.sources, "duplicate_column": self.dup_column or "sha256 (exact duplicates)"}



def _open_image(cell: dict | None, path: str | None, sha256: str | None = None):
    from PIL import Image

    from ..image_access import read_verified

    data = (cell or {}).get("bytes")
    if data is None:  # a file the row names: only when it is the file that was annotated
        data = read_verified((cell or {}).get("path"), sha256) or read_verified(path, sha256)
    if data is None:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Exception:  # noqa: BLE001 - a broken image is shown as a placeholder
        return None


def rows_with_ids(store: AnnotatedStore, ids: Iterable[str], columns: Sequence[str]) -> pa.Table:
    """The rows of ``store`` whose ``id`` is in ``ids`` (``columns`` only), reading the ``id`` column of every
    row group and the other columns only of row groups that hold a wanted id."""
    wanted = pa.array(sorted({str(i) for i in ids}), type=pa.string())
    columns = [c for c in columns if c in store.schema.names]
    parts = []
    for rg, _, _ in store.groups:
        hit = pc.is_in(rg.to_table(columns=["id"]).column("id"), value_set=wanted)
        index = np.flatnonzero(np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), bool))
        if len(index):
            parts.append(rg.to_table(columns=columns).take(pa.array(index)))
    if not parts:
        return store.schema.empty_table().select(columns)
    return pa.concat_tables(parts)
