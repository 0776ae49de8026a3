"""Curating an annotated dataset: global duplicate groups and explained filters -> ``train`` and ``quarantine``.

:func:`curate` reads the annotated Parquet shards (``data/<split>-*.parquet`` of an output folder, or of a Hub
dataset snapshot), checks the config against the dataset's columns before any work, then:

1. filters: a reason per row and filter (``charattr_hf.curation.filters``); rows with a decode ``error`` are
   always removed;
2. duplicates: exact, near and semantic edges over *all* rows at once (``charattr_hf.curation.dedup``); their
   connected components are the candidate groups;
3. one representative per group is kept, the better file (:mod:`charattr_hf.curation.keep`): a row that passes
   the filters, then the larger picture (without flat borders), then lossless over lossy and the higher JPEG
   quality or bits per pixel, then the sharper, then the fewer ``flags``, then the first row; the others'
   reasons name the criterion that ruled them out. Each other member must itself be a duplicate of the kept row
   (the same sha256, or the near or semantic check passed on that pair): one that is not, linked only through
   other members, leaves the group and is grouped again with the others that left, by the edges among them
   (:func:`assign_groups`); so a chain of small steps between two different pictures is never one group;
4. every row gets ``dup_group`` (int64 shared by the members of a group, null when the row has no duplicate),
   ``duplicate_of`` (the representative's ``id`` for the others, null for representatives and rows without
   duplicates) and ``reasons`` (list of strings; empty for a kept row). Rows with no reason go to ``train``,
   the others to ``quarantine``; rows in = train + quarantine. A row with an ``error`` keeps its ``sha256`` and
   ``error`` but no ``image``, whatever the annotated output held (older versions kept bytes that did not decode).

Steps of the config that the dataset cannot take (semantic duplicates without embeddings, a filter on an attribute
its schema lacks) stop the run before any work, or, with ``skip_unavailable: true`` (the shipped config, the
default), are skipped and named in the log, on the card and in ``curation.json``.

The output folder has the layout ``push_to_hub`` writes (``data/train-*.parquet``, ``data/quarantine-*.parquet``,
README.md with the YAML header ``load_dataset`` reads) plus ``curation.json`` and the card's pictures.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import ClassLabel, Features, List, Value

from ..errors import UserError
from .config import CurateConfig, load_config
from .card import write_curation_card
from .dedup import Pairs, connected_components, exact_pairs, near_distance, near_pairs, semantic_pairs
from .filters import AttributeInfo
from .keep import RowFacts, rank_groups, reason as why_kept
from .result import CurateResult
from ..stages.signatures import THUMB_BYTES, decode_hex, decode_keypoints

logger = logging.getLogger(__name__)

__all__ = ["CurateResult", "curate", "annotated_files", "attributes_of", "assign_groups", "Groups"]

NEW_COLUMNS = {"dup_group": Value("int64"), "duplicate_of": Value("string"), "reasons": List(Value("string"))}


# ------------------------------------------------------------------------------------------ input
def annotated_files(dataset: str, split: str = "train", revision: str | None = None) -> list[Path]:
    """The Parquet shards of ``split`` of an annotated output folder or Hub dataset (downloaded)."""
    path = Path(dataset).expanduser()
    if not path.exists():
        if dataset.startswith((".", "/", "~")) or dataset.count("/") != 1:
            raise UserError(f"annotated dataset not found: {dataset} (give an annotated output folder or a Hub id)")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(dataset, repo_type="dataset", revision=revision,
                                          allow_patterns=["data/*.parquet", "README.md"]))
        except Exception as exc:  # noqa: BLE001 - offline, missing or private repository
            raise UserError(f"cannot download the Hub dataset {dataset}: {type(exc).__name__}: {exc}") from None
    if path.is_file():
        if path.suffix != ".parquet":
            raise UserError(f"{dataset}: expected an annotated output folder or Parquet file")
        return _readable([path])
    files = sorted((path / "data").glob(f"{split}-*.parquet"))
    if not files:
        present = sorted({f.name.rsplit("-", 3)[0] for f in (path / "data").glob("*-*-of-*.parquet")})
        if present:
            raise UserError(f"{dataset}: no split {split!r}; splits: {present} (use --split)")
        raise UserError(f"{dataset}: no annotated shards (data/{split}-*.parquet); annotate with recipes/annotate.py "
                        "first")
    return _readable(files)


def _readable(files: list[Path]) -> list[Path]:
    """``files``, once each has been checked to be Parquet (its footer read): a damaged or foreign shard is one line
    before any work, not a traceback half-way."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            pq.read_metadata(f)
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise UserError(f"{f}: not a readable Parquet file ({str(exc).splitlines()[0]}); is this an annotated "
                            "dataset (recipes/annotate.py)?") from None
    return files


def attributes_of(features: Features) -> dict[str, AttributeInfo]:
    """Attributes of an annotated dataset: class-label columns with a ``<name>_confidence`` column."""
    out = {}
    for name, feat in features.items():
        if f"{name}_confidence" not in features:
            continue
        if isinstance(feat, ClassLabel):
            out[name] = AttributeInfo(name, tuple(feat.names), False)
        elif isinstance(feat, List) and isinstance(feat.feature, ClassLabel):
            out[name] = AttributeInfo(name, tuple(feat.feature.names), True)
    return out


def _read(files: list[Path], columns: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]) if files else pa.table({})


def _embeddings(column: pa.ChunkedArray, wanted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, vectors)`` of the rows with an embedding (and among ``wanted``, when given)."""
    col = column.combine_chunks()
    present = ~col.is_null().to_numpy(zero_copy_only=False)
    valid = np.flatnonzero(present if wanted is None else present & wanted)
    values = col.take(pa.array(valid))
    if pa.types.is_fixed_size_list(values.type):
        dim = values.type.list_size
    else:
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != dim).any():
            raise UserError("the embedding column has vectors of different lengths")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return valid, flat.reshape(len(valid), dim) if dim else np.zeros((0, 0), np.float16)


# ------------------------------------------------------------------------------------------ groups
class Groups(NamedTuple):
    """What :func:`assign_groups` decides, one entry per row."""

    #: group number (numbered by each group's first row), -1 for a row without duplicates
    group: np.ndarray
    #: the group's kept row, -1 for a row without duplicates
    rep: np.ndarray
    #: 0 exact (the kept row's sha256), 1 near, 2 semantic: the strongest kind that links the row to its kept row
    #: itself (for a kept row: the strongest among its members), -1 none
    kind: np.ndarray
    #: the criterion (index in ``keep.STAGES``) that ruled a non-kept member out, -1 otherwise
    stage: np.ndarray


def assign_groups(n: int, pairs: list[Pairs], facts: RowFacts,
                  check: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Groups:
    """Duplicate groups of ``n`` rows from the edges, each with its kept row.

    The connected components of all the edges are the candidate groups; in each, the better file is kept
    (:func:`charattr_hf.curation.keep.rank_groups`). Then each other member is checked against the kept row itself:
    the same sha256 (exact), else a direct edge with it, else ``check(kept_rows, rows)`` (kind per pair: 1 near, 2
    semantic, -1 neither; :func:`curate` passes the pairs' own near and semantic checks, run on that pair), so that
    a chain of small steps between two different pictures does not make one group. Members that fail leave the
    group and are grouped again among themselves, by the edges between them, the same way; a row left without
    edges has no duplicate. Every round settles at least two rows, and only the rows of groups are checked."""
    kinds = {"exact": 0, "near": 1, "semantic": 2}
    i = np.concatenate([p.i for p in pairs]).astype(np.int64) if pairs else np.zeros(0, np.int64)
    j = np.concatenate([p.j for p in pairs]).astype(np.int64) if pairs else np.zeros(0, np.int64)
    k = np.concatenate([np.full(len(p), kinds[p.kind], np.int64) for p in pairs]) if pairs else np.zeros(0, np.int64)
    # the work is on the rows with an edge only, numbered in their order: each round costs the edges left, not the
    # dataset's size (a long chain takes many rounds)
    touched = np.unique(np.concatenate([i, j]))
    compact = _assign(len(touched), np.searchsorted(touched, i), np.searchsorted(touched, j), k,
                      facts.subset(touched),
                      None if check is None else (lambda a, b: check(touched[a], touched[b])))
    out = Groups(*(np.full(n, -1, np.int64) for _ in range(4)))
    out.group[touched] = compact.group
    out.rep[touched] = np.where(compact.rep >= 0, touched[np.maximum(compact.rep, 0)], -1)
    out.kind[touched] = compact.kind
    out.stage[touched] = compact.stage
    return out


def _assign(n: int, i: np.ndarray, j: np.ndarray, k: np.ndarray, facts: RowFacts,
            check: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> Groups:
    """:func:`assign_groups` on ``n`` rows that all have an edge (``i``, ``j`` their positions, ``k`` the kinds)."""
    exact_label = connected_components(n, i[k == 0], j[k == 0])  # rows with one sha256
    code = np.minimum(i, j) * n + np.maximum(i, j)
    order = np.lexsort((k, code))
    first = np.r_[True, code[order][1:] != code[order][:-1]][: len(code)]
    edge_code, edge_kind = code[order][first], k[order][first]  # the strongest kind of each edge

    def direct(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The strongest kind of edge between ``a`` and ``b`` (3: none)."""
        c = np.minimum(a, b) * n + np.maximum(a, b)
        at = np.minimum(np.searchsorted(edge_code, c), len(edge_code) - 1)
        return np.where(edge_code[at] == c, edge_kind[at], 3)

    group = np.full(n, -1, np.int64)
    rep = np.full(n, -1, np.int64)
    kind = np.full(n, -1, np.int64)
    stage = np.full(n, -1, np.int64)
    while len(i):
        label = connected_components(n, i, j)
        rows = np.unique(np.concatenate([i, j]))
        kept, ruled_out = rank_groups(label, rows, facts)
        members = rows[kept[rows] != rows]
        p = kept[members]
        kk = np.where(exact_label[members] == exact_label[p], 0, direct(p, members))
        open_ = np.flatnonzero(kk > 1)
        if check is not None and len(open_):
            found = check(p[open_], members[open_])
            kk[open_] = np.minimum(kk[open_], np.where(found >= 0, found, 3))
        ok = kk < 3
        rep[members[ok]] = p[ok]
        kind[members[ok]] = kk[ok]
        stage[members[ok]] = ruled_out[members[ok]]
        reps = np.unique(p[ok])  # each has a direct edge to a member of its component, so a member passes
        rep[reps] = reps
        kind[reps] = 3
        np.minimum.at(kind, p[ok], kk[ok])
        failed = np.zeros(n, bool)
        failed[members[~ok]] = True
        again = failed[i] & failed[j]
        i, j = i[again], j[again]
    grouped = np.flatnonzero(rep >= 0)
    if len(grouped):  # group numbers follow the first row of each group
        first_row = np.full(n, n, np.int64)
        np.minimum.at(first_row, rep[grouped], grouped)
        reps = np.unique(rep[grouped])
        gid = np.full(n, -1, np.int64)
        gid[reps[np.argsort(first_row[reps], kind="stable")]] = np.arange(len(reps))
        group[grouped] = gid[rep[grouped]]
    return Groups(group, rep, kind, stage)


def _direct_check(files: list[Path], errors: list, touched: np.ndarray, cfg: CurateConfig):
    """The pairs' near and semantic checks for two rows among ``touched`` (the rows with an edge), as
    :func:`assign_groups` runs them between a member and its group's kept row; reads the signatures and embeddings of
    those rows only. None when there is nothing to check."""
    if not touched.any() or (cfg.near is None and cfg.semantic is None):
        return None
    n = len(errors)
    near = semantic = None
    if cfg.near is not None:
        valid, _, thumbs, keypoints, counts = _signatures(files, errors, touched)
        pos = np.full(n, -1, np.int64)
        pos[valid] = np.arange(len(valid))
        near = (pos, thumbs, keypoints, counts)
    if cfg.semantic is not None:
        valid, emb = _embeddings(_read(files, ["embedding"]).column("embedding"), touched)
        pos = np.full(n, -1, np.int64)
        pos[valid] = np.arange(len(valid))
        unit = emb.astype(np.float32)
        unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        semantic = (pos, unit)

    def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.full(len(a), -1, np.int64)
        if near is not None:
            pos, thumbs, keypoints, counts = near
            at = np.flatnonzero((pos[a] >= 0) & (pos[b] >= 0))
            d = near_distance(thumbs, pos[a[at]], pos[b[at]], cfg.near, keypoints, counts)
            out[at[d <= cfg.near.thumb_threshold]] = 1
        if semantic is not None:
            pos, unit = semantic
            at = np.flatnonzero((out < 0) & (pos[a] >= 0) & (pos[b] >= 0))
            cosine = np.einsum("ij,ij->i", unit[pos[a[at]]], unit[pos[b[at]]])
            out[at[cosine >= cfg.semantic.threshold]] = 2
        return out

    return check


def _signatures(files: list[Path], errors: list, wanted: np.ndarray | None = None, batch: int = 65536):
    """The near-duplicate signature arrays of rows without a decode error (and among ``wanted``, when given):
    ``(rows, phash (m, 16), thumb (m, 768), keypoints (m, K, 18) or None, counts or None)``; rows with a missing or
    malformed signature are left out."""
    sig = _read(files, ["signature"]).column("signature")
    kept, ph, th, kp, cnt = [], [], [], [], []
    has_keypoints = False
    for s in range(0, len(sig), batch):
        part = sig.slice(s, batch)
        at = np.arange(s, s + len(part))
        if wanted is not None:
            part = part.filter(pa.array(wanted[at]))
            at = at[wanted[at]]
        phash = pc.struct_field(part, "phash").to_pylist()
        thumb = pc.struct_field(part, "thumb").to_pylist()
        ok = [k for k in range(len(phash)) if errors[at[k]] is None and isinstance(phash[k], str)
              and len(phash[k]) == 32 and isinstance(thumb[k], str) and len(thumb[k]) == 2 * THUMB_BYTES]
        kept.append(at[np.asarray(ok, np.int64)])
        ph.append(decode_hex([phash[k] for k in ok], 16)[1])
        th.append(decode_hex([thumb[k] for k in ok], THUMB_BYTES)[1])
        points = pc.struct_field(part, "keypoints").to_pylist()
        has_keypoints = has_keypoints or any(points[k] is not None for k in ok)
        a, c = decode_keypoints([points[k] for k in ok])
        kp.append(a)
        cnt.append(c)
    if not kept:
        return np.zeros(0, np.int64), np.zeros((0, 16), np.uint8), np.zeros((0, THUMB_BYTES), np.uint8), None, None
    rows = np.concatenate(kept)
    if not has_keypoints:  # signatures without local features (OpenCV was not installed when annotating)
        return rows, np.concatenate(ph), np.concatenate(th), None, None
    return rows, np.concatenate(ph), np.concatenate(th), np.concatenate(kp), np.concatenate(cnt)


def _facts(files: list[Path], table: pa.Table, passes: np.ndarray) -> RowFacts:
    """What the representative rule reads, from the base columns and the signature's encoding fields."""
    def num(col) -> np.ndarray:
        return col.to_numpy(zero_copy_only=False).astype(np.float64)

    sig = _read(files, ["signature"]).column("signature") if "signature" in pq.read_schema(files[0]).names else None
    enc = {}
    if sig is not None and pa.types.is_struct(sig.type) and sig.type.get_field_index("lossless") >= 0:
        enc = {"content_width": num(pc.struct_field(sig, "content_width").cast(pa.float64())),
               "content_height": num(pc.struct_field(sig, "content_height").cast(pa.float64())),
               "format": pc.struct_field(sig, "format").to_pylist(),
               "lossless": num(pc.struct_field(sig, "lossless").cast(pa.float64())),
               "jpeg_quality": num(pc.struct_field(sig, "jpeg_quality").cast(pa.float64())),
               "bits_per_pixel": num(pc.struct_field(sig, "bits_per_pixel").cast(pa.float64()))}
    nflags = np.nan_to_num(num(pc.list_value_length(table.column("flags"))), nan=0.0)
    return RowFacts(passes=passes, width=np.nan_to_num(num(table.column("width"))),
                    height=np.nan_to_num(num(table.column("height"))),
                    sharpness=np.nan_to_num(num(pc.struct_field(table.column("quality"), "sharpness")), nan=-1.0),
                    nflags=nflags, **enc)


# ------------------------------------------------------------------------------------------ main
def curate(
    dataset: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: str | os.PathLike | None = None,
    *,
    split: str = "train",
    revision: str | None = None,
    max_shard_rows: int = 100_000,
    batch_rows: int = 65_536,
) -> CurateResult:
    """Curate ``dataset`` into ``output_dir`` (see the module docstring). Raises :class:`UserError` for a bad
    input or config, before any work."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    files = annotated_files(str(dataset), split, revision)
    if output_dir.resolve() in {f.resolve().parent.parent for f in files}:
        raise UserError("--output_dir must differ from the annotated dataset's folder")
    if any((output_dir / "data").glob("*.parquet")) and not (output_dir / "curation.json").is_file():
        # writing replaces data/*.parquet: only an earlier curated output may be overwritten
        raise UserError(f"{output_dir} holds Parquet shards (data/*.parquet) and is not an earlier curated output; "
                        "curating would replace them: give a new or empty --output_dir")
    features = Features.from_arrow_schema(pq.read_schema(files[0]))
    for col in ("id", "sha256", "error", "width", "height", "quality", "flags"):
        if col not in features:
            raise UserError(f"{dataset}: column {col!r} missing; is this an annotated dataset (recipes/annotate.py)?")
    clash = sorted(c for c in NEW_COLUMNS if c in features)
    if clash:
        raise UserError(f"{dataset}: already has column(s) {clash}; curate the annotated dataset, not a curated one")
    attributes = attributes_of(features)
    has_embedding = "embedding" in features
    cfg: CurateConfig = load_config(config, attributes, has_embedding, columns=list(features))
    for step, why in cfg.skipped:
        logger.warning("curation step %s skipped: %s", step, why)
    if cfg.near is not None and isinstance(features.get("signature"), dict) and \
            features["signature"].get("thumb") != Value("string"):
        raise UserError(f"{dataset}: its 'signature' column was written by an older version of charattr-hf; annotate "
                        "again with this version for near duplicates, or set dedup.near: false in the config")

    # -- filters --------------------------------------------------------------------------------
    base_cols = ["id", "sha256", "error", "width", "height", "quality", "flags"]
    filter_cols = sorted({c for f in cfg.filters for c in f.columns()} - set(base_cols))
    table = _read(files, base_cols + filter_cols)
    n = table.num_rows
    reasons: list[list[str]] = [[] for _ in range(n)]
    removed_by: dict[str, int] = {}
    errors = table.column("error").to_pylist()
    removed_by["error"] = 0
    for r, e in enumerate(errors):
        if e is not None:
            reasons[r].append(f"error: {e}")
            removed_by["error"] += 1
    for f in cfg.filters:
        out = f.apply(table)
        count = 0
        for r, reason in enumerate(out):
            if reason is not None and errors[r] is None:
                reasons[r].append(reason)
                count += 1
        removed_by[f.name] = count
    timings["filters"] = time.perf_counter() - t0
    ids = table.column("id").to_pylist()
    passes = np.array([not r for r in reasons])
    facts = _facts(files, table, passes)
    sha = table.column("sha256").to_pylist()
    del table

    # -- duplicates -----------------------------------------------------------------------------
    pairs: list[Pairs] = []
    if cfg.exact:
        pairs.append(exact_pairs(sha))
        timings["exact"] = pairs[-1].seconds
    if cfg.near is not None:
        valid, ph_arr, th_arr, kp_arr, counts = _signatures(files, errors)
        pairs.append(near_pairs(ph_arr, th_arr, valid, cfg.near, kp_arr, counts))
        del ph_arr, th_arr, kp_arr, counts
        timings["near"] = pairs[-1].seconds
    if cfg.semantic is not None:
        valid, emb = _embeddings(_read(files, ["embedding"]).column("embedding"))
        pairs.append(semantic_pairs(emb, valid, cfg.semantic))
        del emb
        timings["semantic"] = pairs[-1].seconds
    t1 = time.perf_counter()
    touched = np.zeros(n, bool)
    for p in pairs:
        touched[p.i] = touched[p.j] = True
    group, rep, kind, stage = assign_groups(n, pairs, facts, _direct_check(files, errors, touched, cfg))
    kind_names = ("exact_duplicate", "near_duplicate", "semantic_duplicate")
    dup_rows = np.flatnonzero((rep >= 0) & (rep != np.arange(n)))
    for k in range(3):
        removed_by[kind_names[k]] = 0
    for r in dup_rows:
        name = kind_names[kind[r]]
        reasons[r].append(f"{name}: of {ids[rep[r]]} (kept: {why_kept(facts, int(rep[r]), int(r), int(stage[r]))})")
        removed_by[name] += 1
    timings["grouping"] = time.perf_counter() - t1

    # -- output ---------------------------------------------------------------------------------
    t2 = time.perf_counter()
    dup_group = pa.array(np.where(group >= 0, group, 0), pa.int64(), mask=group < 0)
    duplicate_of = pa.array([ids[rep[r]] if rep[r] >= 0 and rep[r] != r else None for r in range(n)], pa.string())
    reasons_arr = pa.array(reasons, pa.list_(pa.string()))
    keep = np.array([not r for r in reasons], bool)
    out_features = Features({**features, **NEW_COLUMNS})
    written = _write_splits(files, output_dir, out_features, keep, dup_group, duplicate_of, reasons_arr,
                            max_shard_rows, batch_rows)
    timings["write"] = time.perf_counter() - t2

    result = CurateResult(output_dir, n, int(keep.sum()), int(n - keep.sum()), removed_by,
                          groups=int(group.max() + 1) if n and group.max() >= 0 else 0, seconds=timings, files=written,
                          skipped=list(cfg.skipped))
    write_curation_card(output_dir, str(dataset), cfg, result, pairs, out_features, group=group, rep=rep, ids=ids,
                        files=files)
    timings["total"] = time.perf_counter() - t0
    return result


def _without_error_images(tbl: pa.Table) -> pa.Table:
    """Rows with a decode ``error`` keep no image (their ``sha256`` and ``error`` say what it was): an output
    annotated by an older version may hold bytes that did not decode, and one such cell stops every reader that
    decodes the split (``load_dataset`` iterating it, the review app)."""
    if "image" not in tbl.column_names or not tbl.num_rows:
        return tbl
    bad = pc.is_valid(tbl.column("error"))
    if not pc.any(bad).as_py():
        return tbl
    i = tbl.schema.get_field_index("image")
    image = tbl.column(i)
    return tbl.set_column(i, tbl.schema.field(i), pc.if_else(bad, pa.nulls(len(tbl), image.type), image))


def _write_splits(files, output_dir: Path, features: Features, keep: np.ndarray, dup_group, duplicate_of,
                  reasons, max_shard_rows: int, batch_rows: int) -> dict[str, list[Path]]:
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.md").unlink(missing_ok=True)  # an interrupted run leaves no card
    schema = features.arrow_schema
    counts = {"train": int(keep.sum()), "quarantine": int((~keep).sum())}
    names = {}
    for split, count in counts.items():
        shards = max(1, math.ceil(count / max_shard_rows))
        names[split] = [data_dir / f"{split}-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]
    for old in data_dir.glob("*.parquet"):
        old.unlink()
    tmp = {s: [p.with_name(f".{p.name}.tmp") for p in ps] for s, ps in names.items()}
    state = {s: {"shard": 0, "rows": 0, "writer": None} for s in names}

    def write(split: str, tbl: pa.Table) -> None:
        st = state[split]
        while tbl.num_rows:
            if st["writer"] is None:
                st["writer"] = pq.ParquetWriter(tmp[split][st["shard"]], schema)
            room = max_shard_rows - st["rows"]
            part, tbl = tbl.slice(0, room), tbl.slice(room)
            st["writer"].write_table(part)
            st["rows"] += part.num_rows
            if st["rows"] >= max_shard_rows:
                st["writer"].close()
                st["writer"], st["rows"] = None, 0
                st["shard"] += 1

    offset = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=batch_rows):
            m = batch.num_rows
            sl = slice(offset, offset + m)
            tbl = pa.Table.from_batches([batch])
            tbl = tbl.append_column("dup_group", dup_group[sl]).append_column("duplicate_of", duplicate_of[sl])
            tbl = tbl.append_column("reasons", reasons[sl])
            tbl = _without_error_images(tbl.cast(schema))
            mask = keep[sl]
            if mask.any():
                write("train", tbl.filter(pa.array(mask)))
            if not mask.all():
                write("quarantine", tbl.filter(pa.array(~mask)))
            offset += m
    for split, st in state.items():
        if st["writer"] is not None:
            st["writer"].close()
        for path in tmp[split]:
            if not path.exists():  # an empty split still gets a typed file, without row groups: datasets reads
                pq.ParquetWriter(path, schema).close()  # the other split of such a folder (one empty group breaks both)
        for t, final in zip(tmp[split], names[split]):
            os.replace(t, final)
    return names
