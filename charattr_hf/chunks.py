"""How an input is cut into chunks, the unit of work and of resume, and how a stream is split between processes.

A ``Dataset`` is cut into fixed chunks of ``chunk_size`` rows (chunk ``k`` = rows ``[k*C, (k+1)*C)``), whatever the
number of processes. A chunk file (``chunks/chunk-<k>.parquet`` in the run folder) that holds the rows it should is
finished work (:func:`chunk_is_valid`).

Streaming input has no length to share out. :func:`plan_stream` decides from what the input is whether its shards
can be split between the processes: a stream the library opened from the files the user named, read as they are
(``--streaming`` over several Parquet/JSON/CSV/image files, no ``--limit``), is a stream of independent shards (its
files); a ``datasets`` object handed to the library is read as one stream, since what was done to it (``take``,
``skip``, a shuffle, an interleave) is not known. Independent shards, at least as many as the processes, are split
the way ``datasets.distributed.split_dataset_by_node(strategy="shards")`` splits them (unit ``s`` to process
``s % world``), so each process reads only its share; a unit is cut into chunks of its own
(``chunk-s<unit>-<k>``), so chunk contents do not depend on the number of processes, and a unit whose chunks are all
finished is skipped on a rerun without being read (its record, ``shards/shard-<unit>.json``, says how many rows and
chunks it had). Rows are numbered within their unit while the run goes on; the final ``index`` (and an ``id``
taken from it) is the position in the whole stream, fixed when the output is assembled. Otherwise every process
reads the whole stream and takes every ``world``-th chunk, decoding only its own rows (and a rerun with another
process count reuses the chunks only within one of the two ways). The stream must give the same rows in the same
order every time (no unseeded shuffle), and the input's identity must name its content: a unit whose chunks are
all finished is not read again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, IterableDataset

__all__ = ["Work", "StreamPlan", "plan_stream", "chunk_path", "shard_chunk_path", "chunk_is_valid", "expected_rows",
           "map_style_chunks", "stream_chunks", "shard_chunks", "shard_outcome", "SHARD_STRIDE",
           "MAX_STREAM_UNITS", "write_json_atomic", "read_json"]

#: While a streamed run goes on, row ``i`` of unit ``s`` carries the index ``s * SHARD_STRIDE + i`` (its place in the
#: stream is not known before the units in front of it are read); the output gets the place in the whole stream.
SHARD_STRIDE = 1 << 40
#: Shards of a stream are grouped (contiguous, in order) into at most this many units of work.
MAX_STREAM_UNITS = 1024


@dataclass
class Work:
    """One chunk: its key (in logs and rank records), its file, the index of its first row, its rows."""

    key: "int | str"
    path: Path
    start: int
    make: "Callable[[], Dataset] | None"
    rows: int | None
    done: bool = False


@dataclass(frozen=True)
class StreamPlan:
    """How a stream is read: ``units`` groups of its ``num_shards`` shards, each read by one process; 0 units: one
    stream, read whole by every process."""

    units: int
    num_shards: int


def plan_stream(ds: IterableDataset, *, independent_shards: bool, world: int) -> StreamPlan:
    """The plan for ``ds`` (see the module docstring). ``independent_shards``: whether each of its shards is a
    stream of its own rows (files the user named, read as they are). The unit count depends on the input alone,
    never on ``world``, so a rerun with another process count reuses the chunks (while there are still at least as
    many units as processes: otherwise the stream is read whole, in chunks of the whole stream, and they are
    redone)."""
    num_shards = ds.num_shards
    units = min(num_shards, MAX_STREAM_UNITS) if independent_shards and num_shards >= 2 else 0
    return StreamPlan(units if units >= world else 0, num_shards)


def chunk_path(run_dir: Path, k: int) -> Path:
    return run_dir / "chunks" / f"chunk-{k:06d}.parquet"


def shard_chunk_path(run_dir: Path, shard: int, k: int) -> Path:
    return run_dir / "chunks" / f"chunk-s{shard:05d}-{k:06d}.parquet"


def _shard_record_path(run_dir: Path, shard: int) -> Path:
    return run_dir / "shards" / f"shard-{shard:05d}.json"


def expected_rows(k: int, chunk_size: int, total_rows: int | None) -> int | None:
    if total_rows is None:
        return None
    return max(0, min(chunk_size, total_rows - k * chunk_size))


def chunk_is_valid(path: Path, start: int, rows: int | None) -> bool:
    """A chunk file is finished work only if it holds the rows it should: its count, and its first index."""
    try:
        meta = pq.ParquetFile(path).metadata
        if rows is not None and meta.num_rows != rows:
            return False
        if meta.num_rows:
            first = pq.read_table(path, columns=["index"]).column("index")[0].as_py()
            return first == start
        return True
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException):
        return False


def map_style_chunks(ds: Dataset, run_dir: Path, chunk_size: int, mine: list[int]) -> Iterator[Work]:
    """Chunks ``mine`` of a ``Dataset``."""
    for k in mine:
        start = k * chunk_size
        yield Work(k, chunk_path(run_dir, k), start, lambda s=start: ds.select(range(s, min(s + chunk_size, len(ds)))),
                   expected_rows(k, chunk_size, len(ds)))


def stream_chunks(ds: IterableDataset, run_dir: Path, chunk_size: int, rank: int, world: int,
                  record: dict) -> Iterator[Work]:
    """One stream, read whole by every rank, which takes every ``world``-th chunk (see the module docstring)."""
    features = ds.features
    it = iter(ds)
    k = 0
    while True:
        rows = list(islice(it, chunk_size))
        if not rows:
            break
        record["rows_read"] += len(rows)
        record["chunks"], record["rows"] = k + 1, k * chunk_size + len(rows)
        if k % world == rank:
            path = chunk_path(run_dir, k)
            yield Work(k, path, k * chunk_size, lambda r=rows: Dataset.from_list(r, features=features), len(rows),
                       done=chunk_is_valid(path, k * chunk_size, len(rows)))
        k += 1


def shard_chunks(ds: IterableDataset, plan: StreamPlan, run_dir: Path, chunk_size: int, rank: int, world: int,
                 record: dict) -> Iterator[Work]:
    """This rank's units of a sharded stream (see the module docstring), each cut into chunks of its own.

    Unit ``s`` goes to rank ``s % world``, as ``split_dataset_by_node(strategy="shards")`` assigns shards; a unit
    whose chunks are all finished (its record says how many) is skipped without reading it."""
    features = ds.features
    for s in range(rank, plan.units, world):
        known = _shard_record(run_dir, s, plan)
        if known is not None:
            works = _recorded_chunks(run_dir, s, known, chunk_size)
            if all(chunk_is_valid(w.path, w.start, w.rows) for w in works):
                for w in works:
                    w.done = True
                    yield w
                continue
        it = iter(ds.shard(num_shards=plan.units, index=s, contiguous=True))
        k = rows_in_shard = 0
        while True:
            rows = list(islice(it, chunk_size))
            if not rows:
                break
            record["rows_read"] += len(rows)
            path, start = shard_chunk_path(run_dir, s, k), s * SHARD_STRIDE + k * chunk_size
            yield Work(f"{s}/{k}", path, start, lambda r=rows: Dataset.from_list(r, features=features), len(rows),
                       done=chunk_is_valid(path, start, len(rows)))
            rows_in_shard += len(rows)
            k += 1
        record["shards_read"].append(s)
        write_json_atomic(_shard_record_path(run_dir, s),
                          {"rows": rows_in_shard, "chunks": k, "units": plan.units, "num_shards": plan.num_shards})


def _shard_record(run_dir: Path, s: int, plan: StreamPlan) -> dict | None:
    """What an earlier read of unit ``s`` found (its rows and chunks), if it read the stream cut the same way."""
    known = read_json(_shard_record_path(run_dir, s))
    if known is None or known.get("units") != plan.units or known.get("num_shards") != plan.num_shards:
        return None
    return known


def _recorded_chunks(run_dir: Path, s: int, known: dict, chunk_size: int) -> list[Work]:
    """The chunks unit ``s`` was cut into when it was read (``known``: its record)."""
    return [Work(f"{s}/{k}", shard_chunk_path(run_dir, s, k), s * SHARD_STRIDE + k * chunk_size, None,
                 min(chunk_size, known["rows"] - k * chunk_size)) for k in range(known["chunks"])]


def shard_outcome(run_dir: Path, plan: StreamPlan, chunk_size: int) -> tuple[list[tuple[Path, int]], list[str], int]:
    """Every unit's chunks in stream order with the shift from provisional to final index, the missing chunks, and
    the rows of the whole stream (of the units read so far)."""
    files: list[tuple[Path, int]] = []
    missing: list[str] = []
    offset = 0
    for s in range(plan.units):
        known = _shard_record(run_dir, s, plan)
        if known is None:
            missing.append(f"{s}/*")  # never read to its end
            continue
        for work in _recorded_chunks(run_dir, s, known, chunk_size):
            if chunk_is_valid(work.path, work.start, work.rows):
                files.append((work.path, offset - s * SHARD_STRIDE))
            else:
                missing.append(str(work.key))
        offset += known["rows"]
    return files, missing, offset


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
