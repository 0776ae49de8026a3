"""The review queue: which (image, attribute) a reviewer should look at next, and what to show them.

Priority of an item, in [0, 1], the mean of three parts:

- *low confidence*: ``1 - certainty`` of the current policy's fused vector (certainty: 0 for a uniform vector,
  1 for a one-hot one; for a multi-label attribute, of its least certain label);
- *disagreement*: the sources with evidence pick different top labels (1) or not (0); multi-label: the share
  of labels whose presence they disagree on;
- *policy uncertainty*: the normalised entropy of the fused vector (multi-label: mean binary entropy).

The queue takes the attributes in turn (:func:`interleave_attributes`): each attribute's most urgent item, then
each one's second, and so on. Items already in the feedback log are skipped. The label shown is drawn from the current policy with
epsilon-exploration, ``(1 - epsilon) * policy + epsilon * uniform`` (multi-label: from the presence
probabilities normalised to sum 1), by a generator seeded with the item and the policy version, so the
propensity logged is the true probability of what was shown, and the same item shows the same label until the
policy changes. After the policy is retrained, :meth:`ReviewQueue.rescore` recomputes every priority with it.

The pool is the first ``pool_size`` rows of the annotated dataset (read row group by row group): a queue over
millions of rows would be re-scored in seconds only with a bounded pool.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from ..schema import Schema, probs_column
from ..stages.fusion import certainty
from .data import AnnotatedStore

logger = logging.getLogger(__name__)

__all__ = ["ReviewItem", "ReviewQueue", "item_priority", "interleave_attributes", "show_label"]


@dataclass
class ReviewItem:
    token: str
    id: str
    attribute: str
    shown: int
    shown_label: str
    propensity: float
    policy_version: str
    priority: float
    reasons: dict[str, float]
    probabilities: dict[str, float] | None
    sources: dict[str, dict[str, float] | None] = field(default_factory=dict)
    row: int | None = None

    def public(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def item_priority(attr, fused: np.ndarray | None, source_vecs: Sequence[np.ndarray | None]) -> tuple[float, dict]:
    """Priority of one (row, attribute) and its parts (see the module docstring)."""
    present = [v for v in source_vecs if v is not None]
    if fused is None:
        return 0.0, {"low_confidence": 0.0, "disagreement": 0.0, "uncertainty": 0.0}
    p = np.clip(np.asarray(fused, dtype=np.float64), 1e-9, 1.0)
    if attr.multi_label:
        low = float(1.0 - certainty(attr, p).min())
        ent = float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(np.clip(1 - p, 1e-9, 1.0)))))
        if len(present) >= 2:
            votes = np.stack([np.asarray(v) >= attr.threshold for v in present])
            dis = float(np.mean(votes.any(0) & ~votes.all(0)))
        else:
            dis = 0.0
    else:
        q = p / p.sum()
        low = float(1.0 - certainty(attr, q))
        ent = float(-(q * np.log(q)).sum() / np.log(len(q)))
        tops = {int(np.argmax(v)) for v in present}
        dis = float(len(tops) > 1)
    parts = {"low_confidence": round(low, 4), "disagreement": round(dis, 4), "uncertainty": round(ent, 4)}
    return float((low + dis + ent) / 3.0), parts


def interleave_attributes(items: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """``(-priority, row, attribute)`` items in review order: each attribute's k-th most urgent item comes before
    any attribute's (k+1)-th, and within such a round the more urgent first. Ranked by priority alone, the
    attribute whose vectors are least certain by nature (many labels, a multi-label one) fills the queue and a
    reviewer's decisions teach the policy little about the others."""
    items = sorted(items)
    seen: dict[int, int] = {}
    keyed = []
    for item in items:
        j = item[2]
        keyed.append((seen.get(j, 0), item))
        seen[j] = seen.get(j, 0) + 1
    keyed.sort()
    return [item for _, item in keyed]


def show_label(attr, fused: np.ndarray, epsilon: float, key: str) -> tuple[int, float]:
    """The label to show for an item and its propensity (epsilon-exploration, seeded by ``key``)."""
    k = attr.num_labels
    p = np.clip(np.asarray(fused, dtype=np.float64), 0.0, None)
    p = p / p.sum() if p.sum() > 0 else np.full(k, 1.0 / k)
    mix = (1.0 - epsilon) * p + epsilon / k
    mix = mix / mix.sum()
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    action = int(np.random.default_rng(seed).choice(k, p=mix))
    return action, float(mix[action])


class ReviewQueue:
    """Items of a pool of annotated rows, ordered by priority under the current fusion."""

    def __init__(self, store: AnnotatedStore, schema: Schema, sources: Sequence[str], epsilon: float = 0.1,
                 pool_size: int = 20000):
        if not 0.0 < epsilon <= 1.0:
            raise ValueError("epsilon must be in (0, 1]: without exploration, propensities of unseen labels are 0")
        self.store, self.schema, self.epsilon = store, schema, float(epsilon)
        self.sources = [s for s in sources if s in store.sources]
        self.attributes = [a for a in schema if a.name in {i.name for i in store.attributes}]
        self._lock = threading.Lock()
        self.columns, self.rows = self._load_pool(pool_size)
        self.ids: list[str] = [str(i) for i in self.columns["id"]]
        self.fused: dict[str, list] = {}
        self.order: list[tuple[float, int, int]] = []  # (-priority, row position, attribute position)
        self.parts: dict[tuple[int, int], dict] = {}
        self.policy_version = ""
        self.issued: dict[str, ReviewItem] = {}

    def _load_pool(self, pool_size: int) -> tuple[dict[str, list], list[int]]:
        wanted = [c for c in ("id", "quality", "flags", "embedding") if c in self.store.schema.names]
        wanted += [probs_column(s) for s in self.sources]
        tables, rows = [], []
        for rg, n, start in self.store.groups:
            if len(rows) >= pool_size:
                break
            take = min(n, pool_size - len(rows))
            tables.append(rg.to_table(columns=wanted).slice(0, take))
            rows.extend(range(start, start + take))
        table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in wanted})
        return table.to_pydict(), rows

    def __len__(self) -> int:
        return len(self.ids)

    def rescore(self, fuse: Callable[[dict[str, list]], dict[str, list]], policy_version: str) -> None:
        """Recompute every item's fused vector and priority with ``fuse`` (columns -> vectors per attribute)."""
        fused = fuse(self.columns) if self.ids else {a.name: [] for a in self.attributes}
        order, parts = [], {}
        for j, attr in enumerate(self.attributes):
            vectors = fused.get(attr.name) or [None] * len(self.ids)
            source_cells = [self.columns.get(probs_column(s)) or [None] * len(self.ids) for s in self.sources]
            for r, vec in enumerate(vectors):
                if vec is None:
                    continue
                svecs = [(cells[r] or {}).get(attr.name) for cells in source_cells]
                prio, why = item_priority(attr, vec, svecs)
                order.append((-prio, r, j))
                parts[(r, j)] = why
        order = interleave_attributes(order)
        with self._lock:
            self.fused, self.order, self.parts = fused, order, parts
            self.policy_version = policy_version
            self.issued.clear()

    def item(self, r: int, j: int) -> ReviewItem:
        attr = self.attributes[j]
        vec = np.asarray(self.fused[attr.name][r], dtype=np.float64)
        key = f"{self.ids[r]}|{attr.name}|{self.policy_version}"
        shown, prop = show_label(attr, vec, self.epsilon, key)
        token = f"{self.ids[r]}\t{attr.name}"
        sources = {}
        for s in self.sources:
            cell = (self.columns.get(probs_column(s)) or [None] * len(self.ids))[r] or {}
            v = cell.get(attr.name)
            sources[s] = None if v is None else {n: round(float(x), 4) for n, x in zip(attr.label_names, v)}
        why = self.parts.get((r, j), {})
        return ReviewItem(
            token=token, id=self.ids[r], attribute=attr.name, shown=shown, shown_label=attr.labels[shown].name,
            propensity=prop, policy_version=self.policy_version,
            priority=round(float(np.mean(list(why.values()))) if why else 0.0, 4), reasons=why,
            probabilities={n: round(float(x), 4) for n, x in zip(attr.label_names, vec)}, sources=sources,
            row=self.rows[r],
        )

    def next(self, n: int = 1, decided: set[tuple[str, str]] | None = None, skip: set[str] | None = None
             ) -> list[ReviewItem]:
        """The ``n`` highest-priority items without a decision (and not in ``skip``, tokens)."""
        decided = decided or set()
        skip = skip or set()
        out = []
        with self._lock:
            for _, r, j in self.order:
                name = self.attributes[j].name
                if (self.ids[r], name) in decided or f"{self.ids[r]}\t{name}" in skip:
                    continue
                it = self.item(r, j)
                self.issued[it.token] = it
                out.append(it)
                if len(out) >= n:
                    break
        return out

    def lookup(self, token: str) -> ReviewItem | None:
        with self._lock:
            return self.issued.get(token)

    def take(self, token: str) -> ReviewItem | None:
        """The item handed out as ``token``, no longer handed out: of two decisions on it (a double key press, a
        retried API call), only the first gets it."""
        with self._lock:
            return self.issued.pop(token, None)

    def remaining(self, decided: set[tuple[str, str]]) -> int:
        return sum(1 for _, r, j in self.order if (self.ids[r], self.attributes[j].name) not in decided)

    def stats(self) -> dict[str, Any]:
        return {"pool_rows": len(self.ids), "items": len(self.order), "policy_version": self.policy_version,
                "epsilon": self.epsilon}
