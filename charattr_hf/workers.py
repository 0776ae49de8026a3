"""Worker processes for the CPU stages (decode, tags), safe by construction next to a running model.

``datasets.map(num_proc=N)`` forks its workers from the calling process. With prefetch, that call runs in a
background thread while the main thread is inside torch: a fork then copies whatever locks the other threads
hold (torch's, OpenMP's, any library's), and a child that needs one of them waits forever. Here the workers
are started by a *forkserver*: a small process launched fresh (not forked from this one), with only the CPU
stages' modules imported, from which each worker is forked. A worker so never inherits this process's threads,
locks or torch state, whichever thread asks for it and whatever runs meanwhile.

:class:`CpuWorkers` is a pool of such processes, created once per run and reused for every chunk; each worker
maps its contiguous shard of the chunk with ``datasets.map`` into an Arrow file of the chunk's scratch folder,
and the parent concatenates the shards in order, as ``datasets.map(num_proc=N)`` does. The workers end with the
run; the forkserver itself (one small idle process) stays until the process that started it exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

__all__ = ["CpuWorkers", "BrokenProcessPool"]

logger = logging.getLogger(__name__)

#: imported once by the forkserver, so that forked workers start without importing them again
PRELOAD = ["datasets", "charattr_hf.stages.decode", "charattr_hf.stages.identity", "charattr_hf.sources.tags.stage"]


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # in case a stage ever imports a threaded library
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _map_shard(shard, stage, features, batch_size: int, remove: list[str], cache_file: str, fingerprint: str) -> str:
    """Top-level (picklable): ``stage`` over ``shard`` into ``cache_file``; returns the file's path."""
    shard.map(
        stage,
        batched=True,
        batch_size=batch_size,
        features=features,
        remove_columns=[c for c in remove if c in shard.column_names] or None,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file,
        load_from_cache_file=False,
    )
    return cache_file


class CpuWorkers:
    """``n`` CPU worker processes forked from a forkserver (see the module docstring)."""

    def __init__(self, n: int):
        if n < 2:
            raise ValueError("CpuWorkers needs at least 2 processes (1 runs in the calling process)")
        self.n = int(n)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            self._pool = ProcessPoolExecutor(max_workers=self.n, mp_context=ctx, initializer=_init_worker)
        return self._pool

    def map(self, ds, stage, *, features, batch_size: int, remove: list[str], scratch: Path, fingerprint: str):
        """``ds.map(stage, batched=True, ...)`` with the rows split over the workers; rows keep their order."""
        from datasets import Dataset, concatenate_datasets

        n = min(self.n, len(ds))
        shards = [ds.shard(n, i, contiguous=True) for i in range(n)]
        files = [str(scratch / f"{stage.name}-{fingerprint}-{i:05d}-of-{n:05d}.arrow") for i in range(n)]
        try:
            futures = [
                self._executor().submit(_map_shard, shard, stage, features, batch_size, list(remove), path,
                                        f"{fingerprint}-{i}")
                for i, (shard, path) in enumerate(zip(shards, files))
            ]
            done = [f.result() for f in futures]
        except BrokenProcessPool:
            self.close()  # a worker died (killed, out of memory): the next chunk gets a fresh pool
            raise
        return concatenate_datasets([Dataset.from_file(path) for path in done])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "CpuWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
