"""Fusion training data: annotated rows as model inputs, labels, deterministic splits.

:func:`build_features` turns an annotated dataset (``probs_<source>`` + context columns, and a ``truth`` struct
or a labels dataset joined by ``id`` via :func:`join_labels`) into :class:`FusionData`. :func:`build_config`
makes a :class:`~charattr_hf.models.fusion.CharattrFusionConfig` for a schema, with the flag vocabulary and
embedding size read from the data. :func:`split_by_id` splits by a hash of each id.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from datasets import Dataset

from ..models.fusion import CharattrFusionConfig, CharattrFusionModel, encode_columns
from ..reader import read_dataset
from ..schema import Schema, load_schema, probs_sources
from ..sources import builtin_sources, order_sources

logger = logging.getLogger(__name__)

__all__ = [
    "FusionData",
    "load_table",
    "open_annotated",
    "build_config",
    "build_model",
    "encode_labels",
    "build_features",
    "join_labels",
    "split_by_id",
]


@dataclass
class FusionData:
    """Model inputs for a set of rows (numpy), their ids, optional labels ``(N, A, L)`` (``-1`` = unknown)
    and optional groups (e.g. the ``style`` column, for per-group evaluation)."""

    inputs: dict[str, np.ndarray]
    ids: list[str]
    labels: np.ndarray | None = None
    groups: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> "FusionData":
        idx = np.asarray(index, dtype=np.int64)
        return FusionData(
            inputs={k: v[idx] for k, v in self.inputs.items()},
            ids=[self.ids[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
        )

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(device) for k, v in self.inputs.items()}


def load_table(path_or_id: str, split: str = "train") -> Dataset:
    """An annotated dataset, labels or a feedback log, from wherever it lives (a ``save_to_disk`` folder,
    Parquet file(s) or folder, an annotation output folder, a Hub id with ``split``): the same loader as the
    evaluation and the annotation input, :func:`charattr_hf.reader.read_dataset`."""
    return read_dataset(path_or_id, split)


def open_annotated(
    dataset: "str | Dataset | None",
    split: str = "train",
    *,
    labels: "str | Dataset | None" = None,
    schema: "Schema | str | None" = None,
    simulate_rows: int = 0,
    seed: int = 0,
) -> tuple[Dataset, str]:
    """The annotated rows to train or compare policies on, and a name for them (recorded on the model card).

    ``dataset`` (anything :func:`load_table` opens) with ``labels`` joined by ``id`` when given; or, when
    ``dataset`` is None, the simulated test bed (:func:`~charattr_hf.fusion_training.simulate_annotated` with
    ``simulate_rows`` rows of ``schema``, seeded by ``seed``)."""
    if dataset is None:
        from .testbed import simulate_annotated

        rows = simulate_annotated(schema, simulate_rows, seed=seed)
        return rows, f"simulated test bed ({simulate_rows} rows, seed {seed})"
    rows = load_table(dataset, split)
    if labels is not None:
        rows = join_labels(rows, load_table(labels, split))
    return rows, dataset if isinstance(dataset, str) else "the given dataset"


def build_config(
    schema: "Schema | str | None",
    data: "Dataset | Mapping[str, Sequence] | None" = None,
    sources: Sequence[str] | None = None,
    max_flags: int = 32,
    min_flag_count: int = 5,
    use_embedding: bool = True,
    **kwargs: Any,
) -> CharattrFusionConfig:
    """A fusion config for ``schema``: sources default to the ``probs_*`` columns present in ``data``; the flag
    vocabulary is the ``max_flags`` most frequent flags seen at least ``min_flag_count`` times; the embedding
    size is read from the ``embedding`` column when present (``use_embedding``)."""
    schema = load_schema(schema)
    names = list(data.column_names if isinstance(data, Dataset) else (data or {}).keys())
    if sources is None:
        # every probs_<source> column present: the registered sources in their order, then any other (a user's
        # own precomputed one) by name
        sources = order_sources(probs_sources(names)) or builtin_sources()
    flag_vocab: list[str] = []
    if data is not None and "flags" in names:
        counts: dict[str, int] = {}
        for row_flags in data["flags"]:
            for flag in row_flags or ():
                counts[flag] = counts.get(flag, 0) + 1
        ranked = sorted((c, f) for f, c in counts.items() if c >= min_flag_count)
        ranked.sort(key=lambda cf: (-cf[0], cf[1]))
        flag_vocab = [f for _, f in ranked[:max_flags]]
    embedding_dim = 0
    if use_embedding and data is not None and "embedding" in names:
        length = getattr(data.features["embedding"], "length", -1) if isinstance(data, Dataset) else -1
        if length and length > 0:
            embedding_dim = int(length)
        else:  # untyped length: the first non-null value (without loading the whole column)
            if isinstance(data, Dataset):
                rows = data.select_columns(["embedding"])
            else:
                rows = [{"embedding": v} for v in data["embedding"]]
            first = next((r["embedding"] for r in rows if r["embedding"] is not None), None)
            embedding_dim = len(first) if first is not None else 0
    kwargs.setdefault("embedding_dim", embedding_dim)
    return CharattrFusionConfig.from_schema(schema, sources=sources, flag_vocab=flag_vocab, **kwargs)


def build_model(config: CharattrFusionConfig, seed: int = 0) -> CharattrFusionModel:
    """A freshly initialised policy, deterministic for a given seed. The model gets its own copy of the config
    (training records its rounds there), so one config can seed several models."""
    torch.manual_seed(seed)
    return CharattrFusionModel(copy.deepcopy(config))


def encode_labels(truth: Sequence[Mapping[str, Any] | None], config: CharattrFusionConfig) -> np.ndarray:
    """``truth`` cells (struct of label index, name, or list of them) -> ``(N, A, L)`` targets, -1 unknown."""
    n, A, L = len(truth), config.num_attributes, config.max_labels
    labels = np.full((n, A, L), -1.0, dtype=np.float32)
    lookups = [{name: i for i, name in enumerate(a["labels"])} for a in config.attributes]
    for r, cell in enumerate(truth):
        if not cell:
            continue
        for a, attr in enumerate(config.attributes):
            value = cell.get(attr["name"])
            if value is None:
                continue
            k = len(attr["labels"])
            values = value if isinstance(value, (list, tuple)) else [value]
            if not attr["multi_label"] and len(values) != 1:
                raise ValueError(f"truth.{attr['name']} in row {r}: expected one label, got {value!r}")
            index = []
            for v in values:
                i = lookups[a][v] if isinstance(v, str) else int(v)
                if not 0 <= i < k:
                    raise ValueError(f"truth.{attr['name']} in row {r}: label {v!r} out of range (0..{k - 1})")
                index.append(i)
            labels[r, a, :k] = 0.0
            labels[r, a, index] = 1.0
    return labels


def build_features(
    data: "Dataset | Mapping[str, Sequence]",
    config: CharattrFusionConfig,
    label_column: str | None = "truth",
    group_column: str | None = None,
    batch_size: int = 4096,
) -> FusionData:
    """Model inputs (and labels, groups) for every row of an annotated dataset or a dict of columns."""
    if isinstance(data, Dataset):
        names = data.column_names
        if "id" not in names:
            raise ValueError("the annotated dataset needs an 'id' column (to join labels and feedback)")
        candidates = [f"probs_{s}" for s in config.sources] + ["quality", "flags", "embedding", "id"]
        wanted = [c for c in candidates if c in names]
        extra = [c for c in (label_column, group_column) if c and c in names]
        parts: list[FusionData] = []
        for batch in data.select_columns(wanted + extra).iter(batch_size=batch_size):
            parts.append(_features_from_columns(batch, config, label_column, group_column))
        if not parts:
            return _features_from_columns({"id": []}, config, None, None)
        return _concat(parts)
    return _features_from_columns(data, config, label_column, group_column)


def _features_from_columns(columns, config, label_column, group_column) -> FusionData:
    inputs = encode_columns(columns, config)
    n = inputs["source_probs"].shape[0]
    ids = [str(i) for i in columns["id"]] if "id" in columns else [str(i) for i in range(n)]
    labels = None
    if label_column and label_column in columns:
        labels = encode_labels(columns[label_column], config)
    groups = list(columns[group_column]) if group_column and group_column in columns else None
    return FusionData(inputs, ids, labels, groups)


def _concat(parts: list[FusionData]) -> FusionData:
    inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in parts[0].inputs}
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    groups = None if parts[0].groups is None else [g for p in parts for g in p.groups]
    return FusionData(inputs, [i for p in parts for i in p.ids], labels, groups)


def join_labels(annotated: Dataset, labels: Dataset, column: str = "truth", on: str = "id") -> Dataset:
    """Add a ``truth`` struct column to ``annotated`` from a separate labels dataset, matched on ``id``.

    ``labels`` either has a ``truth`` struct column or one column per attribute. Rows without a label get
    null (they are simply not used for supervised training)."""
    if on not in labels.column_names or on not in annotated.column_names:
        raise ValueError(f"both datasets need an {on!r} column to join on")
    if column in labels.column_names:
        by_id = dict(zip(labels[on], labels[column]))
        feature = labels.features[column]
    else:
        attrs = [c for c in labels.column_names if c != on]
        if not attrs:
            raise ValueError("the labels dataset has no label columns besides the id")
        rows = labels.select_columns([on] + attrs).to_dict()
        by_id = {rows[on][i]: {a: rows[a][i] for a in attrs} for i in range(len(labels))}
        feature = {a: labels.features[a] for a in attrs}
    missing = sum(1 for i in annotated[on] if i not in by_id)
    if missing:
        logger.warning("%d of %d annotated rows have no label", missing, len(annotated))
    values = [by_id.get(i) for i in annotated[on]]
    if column in annotated.column_names:
        annotated = annotated.remove_columns(column)
    return annotated.add_column(column, values, feature=feature)


def split_by_id(
    ids: Sequence[str], fraction: float, seed: int = 0, salt: str = "holdout"
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (kept, held-out) index split by a hash of each id: an image always lands on the same side
    for a given seed and salt, however the data is ordered or sharded. Use a different ``salt`` for nested
    splits (a test split, then a validation split inside the rest): with the same salt the inner split would
    select nothing, since every kept id hashes above the outer fraction."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    keys = np.array(
        [int.from_bytes(hashlib.sha256(f"{salt}:{seed}:{i}".encode()).digest()[:8], "big") / 2**64 for i in ids]
    )
    held = keys < fraction
    return np.flatnonzero(~held), np.flatnonzero(held)
