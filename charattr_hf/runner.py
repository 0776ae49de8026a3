"""Running a pipeline over a whole dataset, across Accelerate processes, resumably: scheduling only.

The input is cut into chunks (:mod:`charattr_hf.chunks`: fixed chunks of a ``Dataset``, one stream, or a stream's
shards). The main process lists the chunks not yet finished and each process takes a contiguous share of that list
(a stream: its chunks as the plan gives them), runs the stages over each chunk and writes it as one Parquet file,
atomically (temporary file, then rename). A chunk file that exists and holds the rows it should is finished: a
rerun after a crash, even ``kill -9``, skips it, and since chunk contents do not depend on the number of
processes, a rerun may use a different number. When every chunk is written, the main process assembles the output
(:func:`charattr_hf.output.finalize`); the caller writes the card from the :class:`RunResult` and marks the run
complete (:func:`charattr_hf.output.complete_run`), after which the same run has nothing to do.

Work files live in ``<output_dir>/.charattr/<run fingerprint>/``; the fingerprint covers the input, the
pipeline (models, schema, parameters) and the chunk size, so changing any of them never reuses stale chunks. The
caller holds the output folder (:func:`charattr_hf.output.hold_output`) for the run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import datasets
from datasets import Dataset, Features, IterableDataset, Value

from .chunks import (StreamPlan, Work, chunk_is_valid, chunk_path, expected_rows, map_style_chunks, plan_stream,
                     read_json, shard_chunks, shard_outcome, stream_chunks, write_json_atomic)
from .distributed import broadcast, get_state
from .errors import ModelLoadError
from .output import WORK_DIR, completed_run, finalize, write_parquet_atomic
from .pipeline import Pipeline
from .stages.base import stable_hash

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "run"]


@dataclass
class RunResult:
    output_dir: Path
    rows: int
    rows_processed: int
    chunks: int
    chunks_skipped: int
    seconds: float
    data_files: list[Path] = field(default_factory=list)
    failed_chunks: list = field(default_factory=list)
    missing_chunks: list = field(default_factory=list)
    # the whole launch, on the main process: each rank's record (rank-N.json) and the run folder
    ranks: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    #: the run's identity in the output folder (what its work folder is named after)
    fingerprint: str = ""
    #: True when an earlier launch completed this run: nothing was done, the output is as it left it
    already_complete: bool = False
    #: the output's summary (``charattr_hf.summary.summarize``), filled in by the caller that writes the card
    summary: dict | None = None

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


@dataclass
class _Schedule:
    """This rank's chunks and what is known of the whole input before it is read."""

    chunks: Iterator[Work]
    my_rows: int | None  # for the progress bar; None for a stream
    skipped: int  # chunks known to be finished before any is read
    total_rows: int | None = None  # a Dataset's; a stream's is known once read
    n_chunks: int | None = None
    has_work: bool = True  # whether this rank may have a chunk to do (it then loads the models)
    plan: StreamPlan | None = None
    record: dict = field(default_factory=lambda: {"rows_read": 0, "shards_read": []})


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
    prefetch: bool | None = None,
    independent_shards: bool = False,
) -> RunResult:
    """Annotate ``ds`` into ``output_dir``; every process of the Accelerate launch calls this, holding the folder.

    ``prefetch`` overlaps the CPU stages of the next chunk with the model stages of the current one; the
    default (None) turns it on when a GPU does the model work (on CPU the two would compete for the same cores).
    ``independent_shards``: a stream's shards are streams of their own rows (see :func:`charattr_hf.chunks.
    plan_stream`).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    output_features = pipeline.output_features(ds.features)  # once per run; a column clash is a clear error now
    state = get_state()
    output_dir = Path(output_dir)
    # the main process's identity of the run wins: a rank whose input fingerprint differs (an unhashable
    # transform upstream gives random fingerprints) must still write into the same run folder
    run_fp = broadcast(stable_hash(input_id, pipeline.fingerprint(), chunk_size, split))
    done = broadcast(completed_run(output_dir, run_fp, split, max_shard_rows) if state.is_main_process else None)
    if done is not None:
        return _already_complete(output_dir, run_fp, done)
    run_dir = output_dir / WORK_DIR / run_fp
    (run_dir / "chunks").mkdir(parents=True, exist_ok=True)
    (run_dir / "shards").mkdir(exist_ok=True)
    if state.is_main_process:
        manifest = {"input": input_id, "pipeline": pipeline.description, "chunk_size": chunk_size, "split": split}
        write_json_atomic(run_dir / "run.json", manifest)
    if isinstance(ds, IterableDataset):
        plan = plan_stream(ds, independent_shards=independent_shards, world=state.num_processes)
        schedule = _schedule_stream(ds, plan, run_dir, chunk_size, state)
    else:
        schedule = _schedule_dataset(ds, run_dir, chunk_size, state)
    if schedule.has_work:
        # every model is loaded in this process before its first chunk: one that cannot be loaded raises
        # ModelLoadError once, here, instead of failing (and re-downloading for) every chunk; a process with
        # nothing to do (a rerun of a finished run) loads nothing
        pipeline.load()
    scratch = run_dir / "tmp" / f"rank-{state.process_index}"
    if prefetch is None:
        import torch

        prefetch = torch.cuda.is_available()
    rank_record = _process(schedule, pipeline, output_features, scratch, num_proc=num_proc, prefetch=prefetch,
                           progress=progress, state=state)
    write_json_atomic(run_dir / f"rank-{state.process_index}.json", rank_record)
    state.wait_for_everyone()
    result = RunResult(output_dir, schedule.total_rows or 0, rank_record["rows_processed"], schedule.n_chunks or 0,
                       rank_record["chunks_skipped"], rank_record["seconds"],
                       failed_chunks=rank_record["chunks_failed"], run_dir=run_dir, fingerprint=run_fp)
    if state.is_main_process:
        _assemble(result, schedule, output_features, chunk_size, split, max_shard_rows)
    state.wait_for_everyone()
    return result


def _already_complete(output_dir: Path, run_fp: str, record: dict) -> RunResult:
    logger.info("%s already holds this run's output (%d rows): nothing to do", output_dir, record["rows"])
    files = [output_dir / "data" / name for name in record["data_files"]]
    return RunResult(output_dir, record["rows"], 0, record["chunks"], record["chunks"], 0.0, data_files=files,
                     fingerprint=run_fp, already_complete=True)


def _schedule_dataset(ds: Dataset, run_dir: Path, chunk_size: int, state) -> _Schedule:
    """Finished chunks are kept; the pending ones are shared out evenly, in contiguous runs."""
    total_rows = len(ds)
    n_chunks = math.ceil(total_rows / chunk_size)
    pending = None
    if state.is_main_process:
        pending = []
        for k in range(n_chunks):
            path = chunk_path(run_dir, k)
            if not chunk_is_valid(path, k * chunk_size, expected_rows(k, chunk_size, total_rows)):
                path.unlink(missing_ok=True)
                pending.append(k)
    pending = broadcast(pending)
    world, rank = state.num_processes, state.process_index
    if state.is_main_process and 0 < len(pending) < world:
        logger.warning("%d chunk(s) to do for %d processes: %d process(es) have nothing to do (lower --chunk_size to "
                       "share the work out)", len(pending), world, world - len(pending))
    mine = pending[rank * len(pending) // world: (rank + 1) * len(pending) // world]
    return _Schedule(map_style_chunks(ds, run_dir, chunk_size, mine),
                     my_rows=sum(expected_rows(k, chunk_size, total_rows) for k in mine),
                     skipped=n_chunks - len(pending), total_rows=total_rows, n_chunks=n_chunks, has_work=bool(mine))


def _schedule_stream(ds: IterableDataset, plan: StreamPlan, run_dir: Path, chunk_size: int, state) -> _Schedule:
    schedule = _Schedule(iter(()), my_rows=None, skipped=0, plan=plan)
    rank, world = state.process_index, state.num_processes
    if plan.units:
        schedule.chunks = shard_chunks(ds, plan, run_dir, chunk_size, rank, world, schedule.record)
        if state.is_main_process:
            logger.info("the stream has %d shard(s), read as %d unit(s): each of the %d process(es) reads only its "
                        "own", plan.num_shards, plan.units, world)
    else:
        schedule.chunks = stream_chunks(ds, run_dir, chunk_size, rank, world, schedule.record)
        if state.is_main_process and world > 1:
            logger.warning("the stream is read as one (%d shard(s) for %d processes, cut with --limit, or a datasets "
                           "object whose shards may depend on each other): every process reads all of it, decoding "
                           "only its own chunks; an input of more files than processes lets each read only its share",
                           plan.num_shards, world)
    return schedule


def _process(schedule: _Schedule, pipeline: Pipeline, output_features: Features, scratch: Path, *,
             num_proc: int | None, prefetch: bool, progress: bool, state) -> dict:
    """Run this rank's chunks; its record (rank-N.json).

    With ``prefetch``, the CPU stages of the next chunk run in a background thread while this thread drives the
    accelerator on the current one. The decode workers are not forked from this process (whose other thread may be
    inside torch, holding locks a forked child would wait on forever) but from a forkserver started fresh: safe by
    construction. One pool serves every chunk of the run."""
    from tqdm.auto import tqdm

    from .workers import CpuWorkers

    rank, world = state.process_index, state.num_processes
    bar = tqdm(total=schedule.my_rows, unit="img", desc=f"annotate [rank {rank}]" if world > 1 else "annotate",
               disable=not progress, position=rank, dynamic_ncols=True)
    record = {"rank": rank, "world": world, "chunks_processed": [], "chunks_skipped": schedule.skipped,
              "chunks_failed": [], "rows_processed": 0}
    workers = CpuWorkers(num_proc) if num_proc and num_proc > 1 else None

    def todo() -> Iterator[Work]:
        for work in schedule.chunks:
            if work.done:
                record["chunks_skipped"] += 1
                bar.update(work.rows)
                continue
            yield work

    def prepare(work: Work) -> Dataset:
        chunk = work.make()
        chunk = chunk.add_column("index", list(range(work.start, work.start + len(chunk))), feature=Value("int64"))
        return pipeline.cpu_part(chunk, scratch / work.path.stem, num_proc=num_proc, workers=workers,
                                 output_features=output_features)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charattr-prefetch") if prefetch else None
    start_time = time.perf_counter()
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for work, prepared in _prefetched(todo(), prepare, pool):
            try:
                write_parquet_atomic(pipeline.device_part(prepared(), scratch / work.path.stem, output_features),
                                     work.path)
            except ModelLoadError:
                raise  # not this chunk's fault: every other chunk would fail the same way
            except Exception:  # noqa: BLE001 - one broken chunk must not stop the others
                logger.exception("chunk %s (%d rows) failed; rerun to retry it", work.key, work.rows)
                record["chunks_failed"].append(work.key)
            else:
                record["rows_processed"] += work.rows
                record["chunks_processed"].append(work.key)
            finally:
                shutil.rmtree(scratch / work.path.stem, ignore_errors=True)
            bar.update(work.rows)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if workers is not None:
            workers.close()
        if was_enabled:
            datasets.enable_progress_bars()
        bar.close()
    record["seconds"] = time.perf_counter() - start_time
    if schedule.plan is not None:
        record.update(rows_read=schedule.record["rows_read"], shards_read=schedule.record["shards_read"])
        if not schedule.plan.units:  # one stream: its length is known now that it has been read
            schedule.n_chunks, schedule.total_rows = schedule.record.get("chunks", 0), schedule.record.get("rows", 0)
    return record


def _prefetched(works: Iterator[Work], prepare, pool: ThreadPoolExecutor | None):
    """``(work, get_prepared)`` for each work; with a pool, the next work is prepared while the caller uses this
    one's."""
    if pool is None:
        for work in works:
            yield work, (lambda w=work: prepare(w))
        return
    work = next(works, None)
    pending = pool.submit(prepare, work) if work is not None else None
    while work is not None:
        following = next(works, None)
        upcoming = pool.submit(prepare, following) if following is not None else None
        yield work, pending.result
        work, pending = following, upcoming


def _assemble(result: RunResult, schedule: _Schedule, output_features: Features, chunk_size: int, split: str,
              max_shard_rows: int) -> None:
    """Main process, every rank done: the ranks' records, what is missing, and the data files when nothing is."""
    run_dir = result.run_dir
    result.ranks = [rec for r in range(get_state().num_processes)
                    if (rec := read_json(run_dir / f"rank-{r}.json")) is not None]
    plan = schedule.plan
    if plan is not None and plan.units:
        files, result.missing_chunks, result.rows = shard_outcome(run_dir, plan, chunk_size)
        result.chunks = len(files) + len(result.missing_chunks)
    else:
        result.rows, result.chunks = schedule.total_rows or 0, schedule.n_chunks or 0
        files = [(chunk_path(run_dir, k), 0) for k in range(result.chunks)]
        result.missing_chunks = [
            k for k, (path, _) in enumerate(files)
            if not chunk_is_valid(path, k * chunk_size, expected_rows(k, chunk_size, result.rows))
        ]
    if not result.missing_chunks:
        result.data_files = finalize(run_dir, result.output_dir, files, split, max_shard_rows,
                                     empty_features=output_features if not files else None)
