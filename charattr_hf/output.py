"""The output folder of a run: held by one launch at a time, assembled in the layout ``push_to_hub`` uses, and
marked complete.

- :func:`hold_output`: an exclusive lock (``<output_dir>/.charattr/lock``, ``flock``: released by the kernel even
  after ``kill -9``), taken once per launch by whoever drives the run (``api.annotate_to_disk``, or the recipe for
  the run and its later steps); a second launch writing into the folder stops before it reads its input.
- :func:`finalize`: the chunk files, in order, become ``data/<split>-XXXXX-of-YYYYY.parquet``; ``load_dataset``
  reads them with the card (README.md) the caller writes.
- :func:`complete_run`: once the card is written, the run's work folder (``.charattr/<run>/``: chunks, shard and
  rank records) is removed and ``.charattr/complete.json`` records what was made, so that the same command run
  again has nothing to do (:func:`completed_run`); the lock file goes when the launch releases the folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from .chunks import chunk_path, read_json, write_json_atomic
from .distributed import broadcast, get_state
from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["WORK_DIR", "OutputHold", "hold_output", "finalize", "write_parquet_atomic", "completed_run",
           "complete_run"]

WORK_DIR = ".charattr"
_COMPLETE = "complete.json"


@dataclass(frozen=True)
class OutputHold:
    """Proof that this launch holds an output folder (see :func:`hold_output`)."""

    path: str  # the folder's real path

    def covers(self, output_dir: "str | os.PathLike") -> bool:
        return os.path.realpath(output_dir) == self.path


@contextmanager
def hold_output(output_dir: "str | os.PathLike") -> Iterator[OutputHold]:
    """Hold ``output_dir`` for one launch: a second launch writing into it would assemble shards and a card from
    chunks the first is still writing, or replace files the first is uploading. Every process of the launch calls
    it (the main process takes the lock, the others learn the outcome); a launch that finds it held, this one
    included, raises :class:`UserError`. On release the lock file is removed (and ``.charattr`` when nothing else
    is left in it)."""
    state = get_state()
    lock = Path(output_dir) / WORK_DIR / "lock"
    created = not Path(output_dir).exists()  # a folder this hold makes, and removes again if nothing was written
    fd: "int | bool | None" = None
    outcome = "held"
    if state.is_main_process:
        try:
            fd = _lock(lock)
        except OSError as exc:
            outcome = f"cannot create {lock}: {exc.strerror or exc}"
        else:
            outcome = "busy" if fd is False else "held"
    outcome = broadcast(outcome)
    if outcome == "busy":
        raise UserError(f"another run is writing into {output_dir} (its lock {lock} is held): wait for it to "
                        "finish, or choose another --output_dir")
    if outcome != "held":
        raise UserError(f"--output_dir {output_dir}: {outcome}; choose a folder you can write in")
    try:
        yield OutputHold(os.path.realpath(output_dir))
    finally:
        if isinstance(fd, int) and not isinstance(fd, bool):
            lock.unlink(missing_ok=True)  # before the release: a launch that opened it meanwhile sees it is gone
            os.close(fd)
            try:
                lock.parent.rmdir()
                if created:
                    Path(output_dir).rmdir()  # a mistake found after the hold leaves no empty folder behind
            except OSError:  # a run's work folder or completion record (or the output) is still there
                pass


def _lock(path: Path) -> "int | bool | None":
    """An exclusive lock on ``path`` (the open file; closing it releases the lock), False when another process
    holds it, None where the platform or the file system has no ``flock``."""
    try:
        import fcntl
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                return False
            # a file system without locks (ENOLCK on some network mounts): run unguarded rather than not at all
            logger.warning("cannot lock %s (%s): nothing stops a second run from writing into the same folder", path,
                           exc)
            return None
        # the holder before us removes the file as it releases it: hold the lock of the file that is there now
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- assembling
def write_parquet_atomic(ds: Dataset, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    ds.to_parquet(str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


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
        write_parquet_atomic(Dataset.from_dict({c: [] for c in empty_features}, features=empty_features), files[0][0])
    total = sum(pq.ParquetFile(f).metadata.num_rows for f, _ in files)
    shards = max(1, -(-total // max_shard_rows))  # rows are cut across chunks: no shard over max_shard_rows
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.md").unlink(missing_ok=True)
    (output_dir / WORK_DIR / _COMPLETE).unlink(missing_ok=True)
    for old in data_dir.glob(f"{split}-*.parquet"):
        old.unlink()
    names = [data_dir / f"{split}-{j:05d}-of-{shards:05d}.parquet" for j in range(shards)]
    schema = pq.read_schema(files[0][0])
    tmps = [name.with_name(f".{name.name}.{os.getpid()}.tmp") for name in names]
    shard, in_shard, writer = 0, 0, None

    def close() -> None:
        writer.close()
        os.replace(tmps[shard], names[shard])

    for f, shift in files:
        table = _reindexed(pq.read_table(f, schema=schema), shift)
        offset = 0
        while offset < table.num_rows:
            if writer is None:
                writer = pq.ParquetWriter(tmps[shard], schema)
            take = min(max_shard_rows - in_shard, table.num_rows - offset)
            writer.write_table(table.slice(offset, take))
            offset, in_shard = offset + take, in_shard + take
            if in_shard == max_shard_rows and shard < shards - 1:
                close()
                shard, in_shard, writer = shard + 1, 0, None
    if writer is None:  # no row at all: one typed, empty shard
        writer = pq.ParquetWriter(tmps[shard], schema)
    close()
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


# ---------------------------------------------------------------------------------------------------- completion
def _run_key(run_fp: str, split: str, max_shard_rows: int) -> dict:
    return {"run": run_fp, "split": split, "max_shard_rows": max_shard_rows}


def completed_run(output_dir: Path, run_fp: str, split: str, max_shard_rows: int) -> dict | None:
    """The completion record of this run (:func:`complete_run`), when the folder still holds what it lists: its data
    files, of the sizes they had, and the card; else None."""
    record = read_json(Path(output_dir) / WORK_DIR / _COMPLETE)
    if record is None or record.get("key") != _run_key(run_fp, split, max_shard_rows):
        return None
    if not (Path(output_dir) / "README.md").is_file():
        return None
    for name, size in record.get("data_files", {}).items():
        path = Path(output_dir) / "data" / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return record


def complete_run(output_dir: Path, run_dir: Path, run_fp: str, split: str, max_shard_rows: int, data_files: list[Path],
                 rows: int, chunks: int) -> None:
    """The run is complete and its card written: record it and remove its work folder (main process)."""
    write_json_atomic(Path(output_dir) / WORK_DIR / _COMPLETE, {
        "key": _run_key(run_fp, split, max_shard_rows), "rows": rows, "chunks": chunks,
        "data_files": {f.name: f.stat().st_size for f in data_files},
    })
    shutil.rmtree(run_dir, ignore_errors=True)
