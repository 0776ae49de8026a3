"""Running a pipeline over a whole dataset, across Accelerate processes, resumably.

The input is cut into fixed chunks of ``chunk_size`` rows (chunk ``k`` = rows ``[k*C, (k+1)*C)``), whatever the
number of processes. The main process lists the chunks not yet finished and each process takes a contiguous
share of that list, runs the stages over each chunk and writes it as one Parquet file, atomically (temporary
file, then rename). A chunk file that exists and holds the rows it should is finished: a rerun after a crash,
even ``kill -9``, skips it, and since chunk contents do not depend on the number of processes, a rerun may
use a different number.

Streaming input has no length to share out. When the stream is made of independent shards (Parquet files, for
instance) at least as many as the processes, the shards are split between the processes the way
``datasets.distributed.split_dataset_by_node(strategy="shards")`` splits them (shard ``s`` to process
``s % world``), so each process reads only its share; a shard is cut into chunks of its own
(``chunk-s<shard>-<k>``), so chunk contents still do not depend on the number of processes, and a shard whose
chunks are all finished is skipped on a rerun without being read. Rows are numbered within their shard while the
run goes on, and the final ``index`` (and an ``id`` taken from it) is the position in the whole stream, fixed when
the output is assembled. Otherwise (one shard, fewer shards than processes, or a stream cut with ``take``/``skip``
whose shards are not independent) every process reads the whole stream and takes every ``world``-th chunk,
decoding only its own rows (and a rerun with another process count reuses the chunks only within one of the two
ways). The stream must give the same rows in the same order every time (no unseeded shuffle), and ``input_id``
must name its content: a shard whose chunks are all finished is not read again.

When every chunk is written, the main process assembles the final dataset in the layout ``push_to_hub`` uses
(``data/<split>-XXXXX-of-YYYYY.parquet`` and a README.md whose YAML header declares the files and features),
so ``load_dataset(output_dir)`` and ``load_dataset("parquet", data_files=...)`` both read it.

Work files live in ``<output_dir>/.charattr/<run fingerprint>/``; the fingerprint covers the input, the
pipeline (models, schema, parameters) and the chunk size, so changing any of them never reuses stale chunks.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, IterableDataset, Value

from .distributed import broadcast, get_state
from .errors import ModelLoadError, UserError
from .pipeline import Pipeline
from .stages.base import stable_hash

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "run", "hold_output", "chunk_path", "finalize"]

WORK_DIR = ".charattr"


@dataclass
class RunResult:
    output_dir: Path
    rows: int
    rows_processed: int
    chunks: int
    chunks_skipped: int
    seconds: float
    data_files: list[Path] = field(default_factory=list)
    failed_chunks: list[int] = field(default_factory=list)
    missing_chunks: list[int] = field(default_factory=list)
    # the whole launch, on the main process: each rank's record (rank-N.json) and the run folder
    ranks: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def total_rows_processed(self) -> int:
        """Rows annotated by every process of this launch (this process's own share without rank records)."""
        return sum(r["rows_processed"] for r in self.ranks) if self.ranks else self.rows_processed

    @property
    def total_images_per_second(self) -> float:
        """The whole launch's throughput: all ranks' rows over the slowest rank's time."""
        seconds = max((r["seconds"] for r in self.ranks), default=self.seconds)
        return self.total_rows_processed / seconds if seconds > 0 else float("nan")

    @property
    def complete(self) -> bool:
        return not self.failed_chunks and not self.missing_chunks

    @property
    def images_per_second(self) -> float:
        return self.rows_processed / self.seconds if self.seconds > 0 else float("nan")


def chunk_path(run_dir: Path, k: int) -> Path:
    return run_dir / "chunks" / f"chunk-{k:06d}.parquet"


def shard_chunk_path(run_dir: Path, shard: int, k: int) -> Path:
    return run_dir / "chunks" / f"chunk-s{shard:05d}-{k:06d}.parquet"


def _shard_record_path(run_dir: Path, shard: int) -> Path:
    return run_dir / "shards" / f"shard-{shard:05d}.json"


#: While a streamed run goes on, row ``i`` of shard ``s`` carries the index ``s * SHARD_STRIDE + i`` (its place in the
#: stream is not known before the shards in front of it are read); the output gets the place in the whole stream.
SHARD_STRIDE = 1 << 40
#: Shards of a stream are grouped (contiguous, in order) into at most this many units of work.
MAX_STREAM_UNITS = 1024


@dataclass
class _Work:
    """One chunk: its key (in logs and rank records), its file, the index of its first row, its rows."""

    key: "int | str"
    path: Path
    start: int
    make: "Callable[[], Dataset] | None"
    rows: int | None
    done: bool = False


class _Deferred:
    """A future that runs its function when asked for the result (the no-prefetch path)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


def _expected_rows(k: int, chunk_size: int, total_rows: int | None) -> int | None:
    if total_rows is None:
        return None
    return max(0, min(chunk_size, total_rows - k * chunk_size))


def chunk_is_valid(path: Path, start: int, expected_rows: int | None) -> bool:
    """A chunk file is finished work only if it holds the rows it should: its count, and its first index."""
    try:
        meta = pq.ParquetFile(path).metadata
        if expected_rows is not None and meta.num_rows != expected_rows:
            return False
        if meta.num_rows:
            first = pq.read_table(path, columns=["index"]).column("index")[0].as_py()
            return first == start
        return True
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException):
        return False


def _map_style_chunks(ds: Dataset, run_dir: Path, chunk_size: int, mine: list[int]) -> Iterator[_Work]:
    for k in mine:
        start = k * chunk_size
        yield _Work(k, chunk_path(run_dir, k), start, lambda s=start: ds.select(range(s, min(s + chunk_size, len(ds)))),
                    _expected_rows(k, chunk_size, len(ds)))


# the steps of a stream that act on each row alone: a shard of such a stream is a stream of its own rows
_ROW_WISE = {"ArrowExamplesIterable", "ExamplesIterable", "RebatchedArrowExamplesIterable", "MappedExamplesIterable",
             "FilteredExamplesIterable", "FormattedExamplesIterable", "SelectColumnsIterable"}


def stream_units(ds: IterableDataset, world: int) -> int:
    """How many units of shards ``ds`` is read as (0: one stream, read by every process).

    Shards split between processes only when each shard is a stream of its own rows (no ``take``, ``skip``,
    shuffle or interleave whose meaning spans shards; datasets has no public test, so the steps are read and
    anything unknown counts as spanning), and when there are at least as many units as processes. The unit
    count depends on the input alone, never on ``world``, so a rerun with another process count reuses the chunks
    (while there are still at least as many units as processes: otherwise the stream is read whole, in chunks of
    the whole stream, and they are redone).
    """
    try:
        if ds.num_shards < 2 or getattr(ds, "_shuffling", None) is not None or getattr(ds, "_distributed", None):
            return 0
        ex = ds._ex_iterable
        while ex is not None:
            if type(ex).__name__ not in _ROW_WISE or getattr(ex, "drop_last_batch", False):
                return 0  # (a batched map that drops a short last batch would drop one per shard)
            ex = getattr(ex, "ex_iterable", None)
    except AttributeError:
        return 0
    units = min(ds.num_shards, MAX_STREAM_UNITS)
    return units if units >= world else 0


def _stream_chunks(ds: IterableDataset, run_dir: Path, chunk_size: int, rank: int, world: int,
                   record: dict) -> Iterator[_Work]:
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
            yield _Work(k, path, k * chunk_size, lambda r=rows: Dataset.from_list(r, features=features), len(rows),
                        done=chunk_is_valid(path, k * chunk_size, len(rows)))
        k += 1


def _shard_chunks(ds: IterableDataset, units: int, run_dir: Path, chunk_size: int, rank: int, world: int,
                  record: dict) -> Iterator[_Work]:
    """This rank's shards of a sharded stream (see the module docstring), each cut into chunks of its own.

    Unit ``s`` goes to rank ``s % world``, as ``split_dataset_by_node(strategy="shards")`` assigns shards; a unit
    whose chunks are all finished (its record says how many) is skipped without reading it."""
    features = ds.features
    for s in range(rank, units, world):
        base = s * SHARD_STRIDE
        known = _shard_record(run_dir, s, units, ds.num_shards)
        if known is not None:
            works = _recorded_chunks(run_dir, s, known, chunk_size)
            if all(chunk_is_valid(w.path, w.start, w.rows) for w in works):
                for w in works:
                    w.done = True
                    yield w
                continue
        it = iter(ds.shard(num_shards=units, index=s, contiguous=True))
        k = rows_in_shard = 0
        while True:
            rows = list(islice(it, chunk_size))
            if not rows:
                break
            record["rows_read"] += len(rows)
            path, start = shard_chunk_path(run_dir, s, k), base + k * chunk_size
            yield _Work(f"{s}/{k}", path, start, lambda r=rows: Dataset.from_list(r, features=features), len(rows),
                        done=chunk_is_valid(path, start, len(rows)))
            rows_in_shard += len(rows)
            k += 1
        record["shards_read"].append(s)
        _write_json_atomic(_shard_record_path(run_dir, s),
                           {"rows": rows_in_shard, "chunks": k, "units": units, "num_shards": ds.num_shards})


def _shard_record(run_dir: Path, s: int, units: int, num_shards: int) -> dict | None:
    """What an earlier read of unit ``s`` found (its rows and chunks), if it read the stream cut the same way."""
    known = _read_json(_shard_record_path(run_dir, s))
    if known is None or known.get("units") != units or known.get("num_shards") != num_shards:
        return None
    return known


def _recorded_chunks(run_dir: Path, s: int, known: dict, chunk_size: int) -> list[_Work]:
    """The chunks unit ``s`` was cut into when it was read (``known``: its record)."""
    return [_Work(f"{s}/{k}", shard_chunk_path(run_dir, s, k), s * SHARD_STRIDE + k * chunk_size, None,
                  min(chunk_size, known["rows"] - k * chunk_size)) for k in range(known["chunks"])]


def _shard_outcome(run_dir: Path, units: int, num_shards: int, chunk_size: int
                   ) -> tuple[list[tuple[Path, int]], list[str], int]:
    """Every unit's chunks in stream order with the shift from provisional to final index, the missing chunks, and
    the rows of the whole stream (of the units read so far)."""
    files: list[tuple[Path, int]] = []
    missing: list[str] = []
    offset = 0
    for s in range(units):
        known = _shard_record(run_dir, s, units, num_shards)
        if known is None:
            missing.append(f"{s}/*")  # never read to its end
            continue
        for work in _recorded_chunks(run_dir, s, known, chunk_size):
            if chunk_is_valid(work.path, work.start, work.rows):
                files.append((work.path, offset - s * SHARD_STRIDE))
            else:
                missing.append(work.key)
        offset += known["rows"]
    return files, missing, offset


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run(
    ds: Dataset | IterableDataset,
    pipeline: Pipeline,
    output_dir: str | os.PathLike,
    *,
    input_id: str,
    chunk_size: int = 1024,
    num_proc: int | None = None,
    split: str = "train",
    max_shard_rows: int = 100_000,
    progress: bool = True,
    card_extra: dict | None = None,
    prefetch: bool | None = None,
) -> RunResult:
    """Annotate ``ds`` into ``output_dir``; every process of the Accelerate launch calls this.

    ``prefetch`` overlaps the CPU stages of the next chunk with the model stages of the current one; the
    default (None) turns it on when a GPU does the model work (on CPU the two would compete for the same cores).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    pipeline.output_features(ds.features)  # a column clash is a clear error now, not a failure per chunk
    state = get_state()
    output_dir = Path(output_dir)
    with hold_output(output_dir):
        return _run(ds, pipeline, output_dir, state, input_id=input_id, chunk_size=chunk_size, num_proc=num_proc,
                    split=split, max_shard_rows=max_shard_rows, progress=progress, card_extra=card_extra,
                    prefetch=prefetch)


_HELD: dict[str, list] = {}  # output folders this process holds: realpath -> [fd, depth]


@contextmanager
def hold_output(output_dir: "str | os.PathLike"):
    """Hold ``output_dir`` for one launch: a second launch writing into it would assemble shards and a card from
    chunks the first is still writing, or replace files the first is uploading. Every process of the launch calls
    it (the main process takes the lock, the others learn the outcome); a launch that finds it held raises
    :class:`UserError`. Re-entrant within a process: the recipe holds the folder for the run and its later steps
    (captions, publishing), and :func:`run` inside it holds it again."""
    state = get_state()
    key = os.path.realpath(output_dir)
    outcome = "held"
    if state.is_main_process:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            try:
                fd = _lock_output(Path(output_dir))
            except OSError as exc:
                outcome = f"cannot create {Path(output_dir) / WORK_DIR / 'lock'}: {exc.strerror or exc}"
            else:
                if fd is False:
                    outcome = "busy"
                else:
                    _HELD[key] = [fd, 1]
    outcome = broadcast(outcome)
    if outcome == "busy":
        raise UserError(f"another run is writing into {output_dir} (its lock {Path(output_dir) / WORK_DIR / 'lock'} "
                        "is held): wait for it to finish, or choose another --output_dir")
    if outcome != "held":
        raise UserError(f"--output_dir {output_dir}: {outcome}; choose a folder you can write in")
    try:
        yield
    finally:
        held = _HELD.get(key) if state.is_main_process else None
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                if held[0] is not None:
                    os.close(held[0])  # releases the lock


def _lock_output(output_dir: Path) -> "int | bool | None":
    """An exclusive lock on ``output_dir`` (the open file; closing it releases the lock), False when another
    process holds it, None where the platform has no ``flock``."""
    try:
        import fcntl
    except ImportError:
        return None
    path = output_dir / WORK_DIR / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        # a file system without locks (ENOLCK on some network mounts): run unguarded rather than not at all
        logger.warning("cannot lock %s (%s): nothing stops a second run from writing into the same folder", path, exc)
        return None
    return fd


def _run(ds, pipeline: Pipeline, output_dir: Path, state, *, input_id: str, chunk_size: int, num_proc, split: str,
         max_shard_rows: int, progress: bool, card_extra, prefetch) -> RunResult:
    rank, world = state.process_index, state.num_processes
    # the main process's identity of the run wins: a rank whose input fingerprint differs (an unhashable
    # transform upstream gives random fingerprints) must still write into the same run folder
    run_fp = broadcast(stable_hash(input_id, pipeline.fingerprint(), chunk_size, split))
    run_dir = output_dir / WORK_DIR / run_fp
    scratch = run_dir / "tmp" / f"rank-{rank}"
    (run_dir / "chunks").mkdir(parents=True, exist_ok=True)
    (run_dir / "shards").mkdir(exist_ok=True)
    if state.is_main_process:
        manifest = {"input": input_id, "pipeline": pipeline.description, "chunk_size": chunk_size, "split": split}
        _write_json_atomic(run_dir / "run.json", manifest)

    streaming = isinstance(ds, IterableDataset)
    record: dict = {"rows_read": 0, "shards_read": []}
    units = 0
    if streaming:
        n_chunks, total_rows, skipped = None, None, 0
        units = stream_units(ds, world)
        if units:
            chunks: Iterator[_Work] = _shard_chunks(ds, units, run_dir, chunk_size, rank, world, record)
            if state.is_main_process:
                logger.info("the stream has %d shard(s), read as %d unit(s): each of the %d process(es) reads only "
                            "its own", ds.num_shards, units, world)
        else:
            chunks = _stream_chunks(ds, run_dir, chunk_size, rank, world, record)
            if state.is_main_process and world > 1:
                logger.warning(
                    "the stream has %d shard(s) for %d processes (or is cut with take/skip): every process reads all "
                    "of it, decoding only its own chunks; an input of more files (shards) than processes lets each "
                    "read only its share", ds.num_shards, world,
                )
        my_rows, mine = None, None
    else:
        total_rows = len(ds)
        n_chunks = math.ceil(total_rows / chunk_size)
        pending = None
        if state.is_main_process:  # finished chunks are kept; the pending ones are shared out evenly
            pending = []
            for k in range(n_chunks):
                path = chunk_path(run_dir, k)
                if not chunk_is_valid(path, k * chunk_size, _expected_rows(k, chunk_size, total_rows)):
                    path.unlink(missing_ok=True)
                    pending.append(k)
        pending = broadcast(pending)
        skipped = n_chunks - len(pending)
        if state.is_main_process and 0 < len(pending) < world:
            logger.warning(
                "%d chunk(s) to do for %d processes: %d process(es) have nothing to do (lower --chunk_size to "
                "share the work out)", len(pending), world, world - len(pending),
            )
        mine = pending[rank * len(pending) // world : (rank + 1) * len(pending) // world]
        chunks = _map_style_chunks(ds, run_dir, chunk_size, mine)
        my_rows = sum(_expected_rows(k, chunk_size, total_rows) for k in mine)

    if streaming or mine:
        # every model is loaded in this process before its first chunk: one that cannot be loaded raises
        # ModelLoadError once, here, instead of failing (and re-downloading for) every chunk; a process with
        # nothing to do (a rerun of a finished run) loads nothing
        pipeline.load()

    from tqdm.auto import tqdm

    bar = tqdm(
        total=my_rows,
        unit="img",
        desc=f"annotate [rank {rank}]" if world > 1 else "annotate",
        disable=not progress,
        position=rank,
        dynamic_ncols=True,
    )
    processed = 0
    failed: list[int] = []
    done_here: list[int] = []
    if prefetch is None:
        import torch

        prefetch = torch.cuda.is_available()
    input_features = ds.features
    output_features = pipeline.output_features(input_features)

    def todo():
        nonlocal skipped
        for work in chunks:
            if work.done:
                skipped += 1
                bar.update(work.rows)
                continue
            yield work

    def prepare(work: _Work) -> Dataset:
        chunk = work.make()
        chunk = chunk.add_column("index", list(range(work.start, work.start + len(chunk))), feature=Value("int64"))
        return pipeline.cpu_part(chunk, scratch / work.path.stem, num_proc=num_proc, workers=workers)

    # With prefetch, the CPU stages of the next chunk run in a background thread while this thread drives the
    # accelerator on the current one. The decode workers are not forked from this process (whose other thread
    # may be inside torch, holding locks a forked child would wait on forever) but from a forkserver started
    # fresh: safe by construction. One pool serves every chunk of the run.
    from .workers import CpuWorkers

    workers = CpuWorkers(num_proc) if num_proc and num_proc > 1 else None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charattr-prefetch") if prefetch else None
    submit = (lambda w: pool.submit(prepare, w)) if pool else (lambda w: _Deferred(prepare, w))
    start_time = time.perf_counter()
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        queue = todo()
        work = next(queue, None)
        pending = submit(work) if work else None
        while work is not None:
            following = next(queue, None)
            upcoming = submit(following) if following is not None and pool else None
            try:
                out = pipeline.device_part(pending.result(), scratch / work.path.stem, output_features)
                _write_parquet_atomic(out, work.path)
            except ModelLoadError:
                raise  # not this chunk's fault: every other chunk would fail the same way
            except Exception:  # noqa: BLE001 - one broken chunk must not stop the others
                logger.exception("chunk %s (%d rows) failed; rerun to retry it", work.key, work.rows)
                failed.append(work.key)
            else:
                processed += work.rows
                done_here.append(work.key)
            finally:
                shutil.rmtree(scratch / work.path.stem, ignore_errors=True)
            bar.update(work.rows)
            work = following
            pending = upcoming if upcoming is not None else (submit(work) if work is not None else None)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if workers is not None:
            workers.close()
        if was_enabled:
            datasets.enable_progress_bars()
        bar.close()
    seconds = time.perf_counter() - start_time

    if streaming and not units:
        n_chunks, total_rows = record.get("chunks", 0), record.get("rows", 0)
    rank_record = {"rank": rank, "world": world, "chunks_processed": done_here, "chunks_skipped": skipped,
                   "chunks_failed": failed, "rows_processed": processed, "seconds": seconds}
    if streaming:
        rank_record.update(rows_read=record["rows_read"], shards_read=record["shards_read"])
    _write_json_atomic(run_dir / f"rank-{rank}.json", rank_record)
    state.wait_for_everyone()
    result = RunResult(output_dir, total_rows, processed, n_chunks, skipped, seconds, failed_chunks=failed,
                       run_dir=run_dir)
    if state.is_main_process:
        result.ranks = [rec for r in range(world) if (rec := _read_json(run_dir / f"rank-{r}.json")) is not None]
        if units:
            files, result.missing_chunks, result.rows = _shard_outcome(run_dir, units, ds.num_shards, chunk_size)
            result.chunks = len(files) + len(result.missing_chunks)
        else:
            files = [(chunk_path(run_dir, k), 0) for k in range(n_chunks)]
            result.missing_chunks = [
                k for k, (path, _) in enumerate(files)
                if not chunk_is_valid(path, k * chunk_size, _expected_rows(k, chunk_size, total_rows))
            ]
        if not result.missing_chunks:
            empty = pipeline.output_features(ds.features) if not files else None
            result.data_files = finalize(run_dir, output_dir, files, split, max_shard_rows, empty_features=empty)
            from .hub import write_dataset_card

            write_dataset_card(output_dir, split, pipeline, extra=card_extra)
    state.wait_for_everyone()
    return result


def _write_parquet_atomic(ds: Dataset, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    ds.to_parquet(str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def finalize(
    run_dir: Path, output_dir: Path, files: "list[tuple[Path, int]]", split: str, max_shard_rows: int,
    empty_features=None,
) -> list[Path]:
    """Merge chunk files, in order, into ``data/<split>-XXXXX-of-YYYYY.parquet`` shards.

    ``files``: each chunk file with the shift that turns its provisional ``index`` into the row's place in the
    input (0 but for streamed shards); an ``id`` that was the provisional index (no id column, no path) follows.
    The card (README.md) is removed first and written last by the caller, so an interrupted finalize leaves
    an output that is visibly unfinished (no card) rather than one that mixes old and new shards.
    """
    if not files:  # an empty input still gives a typed, empty Parquet file
        files = [(chunk_path(run_dir, 0), 0)]
        _write_parquet_atomic(Dataset.from_dict({c: [] for c in empty_features}, features=empty_features), files[0][0])
    counts = [pq.ParquetFile(f).metadata.num_rows for f, _ in files]
    groups: list[list[tuple[Path, int]]] = []
    rows_in_group = 0
    for f, n in zip(files, counts):
        if not groups or rows_in_group + n > max_shard_rows:
            groups.append([])
            rows_in_group = 0
        groups[-1].append(f)
        rows_in_group += n
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.md").unlink(missing_ok=True)
    for old in data_dir.glob(f"{split}-*.parquet"):
        old.unlink()
    names = [data_dir / f"{split}-{j:05d}-of-{len(groups):05d}.parquet" for j in range(len(groups))]
    schema = pq.read_schema(files[0][0])
    for name, group in zip(names, groups):
        tmp = name.with_name(f".{name.name}.{os.getpid()}.tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for f, shift in group:
                writer.write_table(_reindexed(pq.read_table(f, schema=schema), shift))
        os.replace(tmp, name)
    for leftover in (run_dir / "chunks").glob(".*.tmp"):  # from processes killed mid-write
        leftover.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tmp", ignore_errors=True)
    return names


def _reindexed(table: pa.Table, shift: int) -> pa.Table:
    if not shift or not table.num_rows:
        return table
    import pyarrow.compute as pc

    old = table.column("index")
    new = pc.add(old, pa.scalar(shift, pa.int64()))
    table = table.set_column(table.schema.get_field_index("index"), table.schema.field("index"), new)
    if "id" in table.column_names:  # ids that came from the index (Identify's last resort) follow it
        from_index = pc.equal(table.column("id"), pc.cast(old, pa.string()))
        if "path" in table.column_names:
            from_index = pc.and_(from_index, pc.is_null(table.column("path")))
        ids = pc.if_else(pc.fill_null(from_index, False), pc.cast(new, pa.string()), table.column("id"))
        table = table.set_column(table.schema.get_field_index("id"), table.schema.field("id"), ids)
    return table
