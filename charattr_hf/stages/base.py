"""What every stage shares: one calling convention for batched ``datasets.map``, a stable fingerprint,
lazy per-process set-up, and row-level fault isolation.

A stage is a top-level, picklable callable: ``stage(batch) -> dict of new columns``. The runner calls
``dataset.map(stage, batched=True, new_fingerprint=...)``; ``num_proc`` is used for stages that declare
``cpu_bound = True`` (they must not touch torch, so that forked workers are safe).

Fault isolation: if ``process`` raises on a batch, the batch is retried row by row; rows that still
fail get a message in the ``error`` column and null outputs. A bad row never stops a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

#: Columns whose name starts with this prefix are working columns, dropped before writing.
TEMP_PREFIX = "_"
ERROR = "error"


def stable_hash(*parts: Any) -> str:
    """Hash of JSON-able parts, stable across processes and Python versions."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Stage:
    """Base class of pipeline stages. Subclasses set ``name`` and implement ``process``."""

    name: ClassVar[str] = "stage"
    #: CPU-bound stages run with ``num_proc`` and must not use torch.
    cpu_bound: ClassVar[bool] = False

    # -- description ------------------------------------------------------------------------
    def params(self) -> dict:
        """Everything that changes this stage's output (used for the fingerprint)."""
        return {}

    def fingerprint(self) -> str:
        return stable_hash(self.name, type(self).__qualname__, self.params())

    def features(self) -> dict:
        """The columns this stage adds, as ``datasets`` feature types."""
        raise NotImplementedError

    def input_columns(self) -> list[str]:
        """Columns the stage reads (the runner passes only these, plus ``error``)."""
        return []

    # -- execution --------------------------------------------------------------------------
    def setup(self) -> None:
        """Load heavy things (models) lazily, once per process. Must be idempotent."""

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        raise NotImplementedError

    def null_row(self) -> dict[str, Any]:
        """Output for one row the stage could not handle."""
        return {col: None for col in self.features()}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values()))) if batch else 0
        errors = list(batch.get(ERROR) or [None] * n)
        try:
            self.setup()
            out = self.process(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to the rows that cause it
            if n <= 1:
                raise
            logger.warning("%s failed on a batch of %d rows (%s); retrying row by row", self.name, n, exc)
            out = self._row_by_row(batch, n, errors)
        if ERROR not in out:
            out[ERROR] = errors
        return out

    def _row_by_row(self, batch: dict[str, list], n: int, errors: list) -> dict[str, list]:
        cols = list(self.features())
        out: dict[str, list] = {c: [] for c in cols}
        out[ERROR] = []
        for i in range(n):
            row = {k: v[i : i + 1] for k, v in batch.items()}
            try:
                res = self.process(row)
                for c in cols:
                    out[c].append(res[c][0])
                out[ERROR].append(res.get(ERROR, [errors[i]])[0])
            except Exception as exc:  # noqa: BLE001
                logger.warning("%s failed on row %d: %s", self.name, i, exc)
                logger.debug("%s", traceback.format_exc())
                null = self.null_row()
                for c in cols:
                    out[c].append(null[c])
                out[ERROR].append(errors[i] or f"{self.name}: {type(exc).__name__}: {exc}")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


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
