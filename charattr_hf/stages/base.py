"""What every stage shares: one calling convention for batched ``datasets.map``, a stable fingerprint,
lazy per-process set-up, and row-level fault isolation.

A stage is a top-level, picklable callable: ``stage(batch) -> dict of new columns``. The runner calls
``dataset.map(stage, batched=True, new_fingerprint=...)``; stages that declare ``cpu_bound = True`` run with
``num_proc`` in worker processes started by a forkserver (:mod:`charattr_hf.workers`), and must not touch torch
(the workers stay light and start fast).

Failures are sorted by whose fault they are:

- ``load()`` (``setup()`` once per process, before the first chunk) failing is the user's to fix: model stages
  raise :class:`~charattr_hf.errors.ModelLoadError` there, which stops the run at once. ``setup()`` failing
  later (a device that is gone) is systemic: it propagates and fails the chunk, which a rerun retries. So does
  any failure of a stage with ``isolate_rows = False`` (model
  stages: their inputs are uniform tensors, a failure there is never one image's fault), a batch whose first
  rows, retried one by one, all fail with the same exception and message (``SYSTEMIC_PROBE_ROWS``), and a
  batch in which every row fails with the same exception type.
- Otherwise the batch is retried row by row. A row that still fails gets null outputs for this stage and
  keeps everything else: ``flags`` gains ``"<stage>_failed"``; for stages with ``quarantine = True``
  (decoding: the image itself is bad) the row gets a message in ``error`` and later stages leave it alone.
A bad row never stops a run, and a broken set-up never silently turns into millions of error rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

#: Columns whose name starts with this prefix are working columns, dropped before writing.
TEMP_PREFIX = "_"
ERROR = "error"
FLAGS = "flags"


#: When a batch fails and its first this-many rows, retried one by one, all fail with the same exception type and
#: message, the failure is systemic (the stage, not the rows): it fails the chunk at once.
SYSTEMIC_PROBE_ROWS = 8


def _same_failure(failures: list[Exception]) -> bool:
    return len({(type(e), str(e)) for e in failures}) == 1


def code_version() -> str:
    """The package version, part of every stage fingerprint and feature-cache namespace: a rerun after an upgrade
    never reuses chunks or cached model outputs of the older code. (Read at call time: one place to bump.)"""
    import charattr_hf

    return charattr_hf.__version__


def stable_hash(*parts: Any) -> str:
    """Hash of JSON-able parts, stable across processes and Python versions."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Stage:
    """Base class of pipeline stages. Subclasses set ``name`` and implement ``process``."""

    name: ClassVar[str] = "stage"
    #: CPU-bound stages run with ``num_proc`` and must not use torch.
    cpu_bound: ClassVar[bool] = False
    #: whether one row can make the stage fail (parsing, decoding); False for model stages
    isolate_rows: ClassVar[bool] = True
    #: whether a row this stage cannot handle is quarantined (``error`` set) rather than flagged
    quarantine: ClassVar[bool] = False

    # -- description ------------------------------------------------------------------------
    def params(self) -> dict:
        """Everything that changes this stage's output (used for the fingerprint)."""
        return {}

    def fingerprint(self) -> str:
        return stable_hash(self.name, type(self).__qualname__, code_version(), self.params())

    def features(self) -> dict:
        """The columns this stage adds, as ``datasets`` feature types."""
        raise NotImplementedError

    def input_columns(self) -> list[str]:
        """Columns the stage reads; the runner drops working columns after their last reader."""
        return []

    # -- execution --------------------------------------------------------------------------
    def setup(self) -> None:
        """Load heavy things (models) lazily, once per process. Must be idempotent."""

    def load(self) -> None:
        """:meth:`setup`, called once per process before the first chunk. Model stages raise
        :class:`~charattr_hf.errors.ModelLoadError` here (one line: what failed and what to do), so that a model
        that cannot be loaded stops the run at once instead of failing every chunk."""
        self.setup()

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        raise NotImplementedError

    def null_row(self) -> dict[str, Any]:
        """Output for one row the stage could not handle."""
        return {col: None for col in self.features()}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values()))) if batch else 0
        errors = list(batch.get(ERROR) or [None] * n)
        self.setup()  # outside the isolation: a set-up failure is systemic
        if not self.isolate_rows:
            out = self.process(batch)
        else:
            try:
                out = self.process(batch)
            except Exception as exc:  # noqa: BLE001 - isolate the failure to the rows that cause it
                logger.warning("%s failed on a batch of %d rows (%s); retrying row by row", self.name, n, exc)
                out = self._row_by_row(batch, n, errors)
        if ERROR not in out:
            out[ERROR] = errors
        return out

    def _row_by_row(self, batch: dict[str, list], n: int, errors: list) -> dict[str, list]:
        cols = list(self.features())
        out: dict[str, list] = {c: [] for c in cols}
        out[ERROR] = []
        flags = [list(f or []) for f in batch[FLAGS]] if FLAGS in batch and FLAGS not in cols else None
        failures: list[Exception] = []
        probe = min(n, SYSTEMIC_PROBE_ROWS)
        for i in range(n):
            row = {k: v[i : i + 1] for k, v in batch.items()}
            try:
                res = self.process(row)
                for c in cols:
                    out[c].append(res[c][0])
                out[ERROR].append(res.get(ERROR, [errors[i]])[0])
            except Exception as exc:  # noqa: BLE001
                failures.append(exc)
                if n >= 2 and len(failures) == probe == i + 1 and _same_failure(failures):
                    # the first rows all fail the same way: the stage is broken, not the rows; fail the chunk now
                    # rather than once per row
                    raise exc
                if len(failures) <= 3:
                    logger.warning("%s failed on row %d: %s: %s", self.name, i, type(exc).__name__, exc)
                null = self.null_row()
                for c in cols:
                    out[c].append(null[c])
                message = f"{self.name}: {type(exc).__name__}: {exc}"
                if self.quarantine or flags is None:
                    out[ERROR].append(errors[i] or message)
                else:
                    out[ERROR].append(errors[i])
                    flags[i].append(f"{self.name}_failed")
        if n >= 2 and len(failures) == n and len({type(e) for e in failures}) == 1:
            raise failures[0]  # every row, the same way: not the rows' fault
        if len(failures) > 3:
            logger.warning("%s failed on %d of %d rows of this batch (the first 3 are shown above)", self.name,
                           len(failures), n)
        if flags is not None:
            out[FLAGS] = flags
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


class WithoutColumns:
    """``stage`` minus some of its output columns: working columns that it both writes and reads (a CPU source's
    pixels, written by decode and read by the source in the same :class:`Compose`) and no later stage needs."""

    def __init__(self, stage: Stage, columns):
        self.stage, self.columns, self.name = stage, frozenset(columns), stage.name

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {k: v for k, v in self.stage(batch).items() if k not in self.columns}


class Compose(Stage):
    """Several stages applied in order within one ``map`` call (one pass over the data, one Arrow write)."""

    name = "compose"

    def __init__(self, stages: list[Stage]):
        self.stages = list(stages)
        self.cpu_bound = all(s.cpu_bound for s in self.stages)  # type: ignore[misc]

    def params(self) -> dict:
        return {"stages": [s.fingerprint() for s in self.stages]}

    def features(self) -> dict:
        feats: dict = {}
        for s in self.stages:
            feats.update(s.features())
        return feats

    def input_columns(self) -> list[str]:
        produced: set[str] = set()
        needed: list[str] = []
        for s in self.stages:
            needed += [c for c in s.input_columns() if c not in produced and c not in needed]
            produced |= set(s.features())
        return needed

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        batch = dict(batch)
        added: dict[str, list] = {}
        for s in self.stages:
            out = s(batch)
            batch.update(out)
            added.update(out)
        return added
