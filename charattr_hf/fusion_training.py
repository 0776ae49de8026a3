"""Training the learned fusion policy: from labels (supervised) or from reviewer feedback (contextual bandit).

Contents
--------
- **Data**: :func:`build_features` turns an annotated dataset (``probs_<source>`` + context columns, and a
  ``truth`` struct or a labels dataset joined by ``id`` via :func:`join_labels`) into :class:`FusionData`.
  :func:`build_config` makes a :class:`~charattr_hf.models.fusion.CharattrFusionConfig` for a schema, with the
  flag vocabulary and embedding size read from the data.
- **Supervised**: :func:`train_supervised` (cross-entropy / BCE, early stopping on a validation split,
  temperature fitted on it afterwards, deterministic with a seed).
- **Feedback**: the log format (:data:`FEEDBACK_FEATURES`, one row per reviewer event), a simulator
  (:func:`simulate_feedback`) and :func:`train_from_feedback`. Training continues from whatever model it is
  given, so ``CharattrFusionModel.from_pretrained(saved)`` + new feedback = a better policy ("gets smarter
  over time"); each round is recorded in ``config.training_info``.
- **Evaluation**: :func:`compare_methods` (sources alone, the fixed fusion rules, learned policies; accuracy
  and ECE through the offline ``evaluate`` modules of :mod:`charattr_hf.metrics`), shared by the training
  recipe and ``benchmarks/fusion.py``.
- **Test bed**: :func:`simulate_annotated`, an annotated dataset with ground truth where each source's
  reliability depends on the kind of image (see :data:`DEFAULT_PROFILES`).

Learning from feedback: the estimator, and why
----------------------------------------------
A feedback event says: for image ``x`` and attribute ``a`` the reviewer was shown label ``k`` (chosen by the
logging policy with probability ``propensity``) and accepted it (``reward`` 1) or rejected it (0). Under the
policy's model ``p(y | x)``, the probability of an accept is ``q = p_k`` (the label's probability for a
single-label attribute, its presence probability for a multi-label one); with reviewer noise ``eta``,
``q = eta + (1 - 2 eta) p_k``. The default objective (``objective="likelihood"``) maximises the log-likelihood
of the observed rewards, ``r log q + (1 - r) log(1 - q)``: an accept reveals the label, a reject rules one out.

- It is *proper*: weighted by ``1 / propensity`` (``weighting="ips"``), its expectation over the logging
  policy's choices equals the sum over all labels of the one-vs-rest binary log-loss of ``p``, a strictly
  proper scoring rule, minimised only by the true probabilities. So the policy stays calibrated, which a
  policy-gradient objective on the reward (it pushes towards deterministic choices) does not give.
- The weights are clipped at ``1 / propensity_floor`` (variance control; default floor 0.2, so weights <= 5)
  and normalised to mean 1 (the self-normalised form; since they do not depend on the model here, this only
  fixes the loss scale).
- Because the shown label depends on ``x`` only, the likelihood is also consistent without weights
  (``weighting="none"``) when the model can represent ``p(y | x)``; the weights make the objective match the
  full-information one when it cannot. On the simulated test bed (3000 images, epsilon 0.1) both reach about
  90 % of the supervised policy's gain over mean fusion (a floor of 0.05, weights up to 20, did slightly
  worse: more variance), so the clipped weights cost nothing where the model is right and protect where it
  is not.

``objective="snips"`` is the alternative: self-normalised inverse propensity scoring of the expected reward
of the policy's own label distribution (a policy gradient with the SNIPS value as baseline). It optimises the
top choice only, pushes probabilities towards 0/1 and learns nothing from a reject beyond "less of this";
on the test bed it reached about half the likelihood objective's gain with ECE > 0.1. It is kept for
comparison. Multi-label events always use the likelihood (a shown label's presence is a plain binary
observation).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import datasets
import numpy as np
import torch
from datasets import Dataset, Features, List, Value

from .inputs import is_saved_dataset
from .metrics import CalibrationError, LabelAccuracy
from .metrics import _core as metric_core
from .models.fusion import CharattrFusionConfig, CharattrFusionModel, encode_columns
from .schema import QUALITY_FEATURES, QUALITY_FIELDS, SOURCES, Schema, load_schema, probs_column
from .stages.fusion import SimpleFusion

logger = logging.getLogger(__name__)

__all__ = [
    "FusionData",
    "FusionTrainingConfig",
    "TrainResult",
    "FEEDBACK_FEATURES",
    "SourceProfile",
    "DEFAULT_PROFILES",
    "SIM_STYLES",
    "build_config",
    "build_features",
    "build_model",
    "join_labels",
    "split_by_id",
    "train_supervised",
    "train_from_feedback",
    "simulate_feedback",
    "simulate_annotated",
    "validate_feedback",
    "predict",
    "compare_methods",
    "method_probs",
    "load_table",
]

#: Columns of a feedback log, one row per reviewer event. ``action`` is the label index shown (for a
#: multi-label attribute: the label whose presence was shown); ``propensity`` the probability the logging
#: policy had of showing it; ``reward`` 1 for accept, 0 for reject (values in between: partial credit).
FEEDBACK_FEATURES = Features(
    {
        "id": Value("string"),
        "attribute": Value("string"),
        "action": Value("int32"),
        "propensity": Value("float32"),
        "reward": Value("float32"),
        "policy_version": Value("string"),
        "timestamp": Value("timestamp[us, tz=UTC]"),
    }
)
_FEEDBACK_REQUIRED = ("id", "attribute", "action", "propensity", "reward")


# ================================================================================================ data
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


def load_table(path_or_id: str, split: str = "train", **kwargs: Any) -> Dataset:
    """A dataset from a ``save_to_disk`` folder, Parquet file(s) or folder, or a Hub id (with ``split``)."""
    path = Path(path_or_id)
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train", **kwargs)
    if path.is_dir() and not (path / "README.md").exists() and list(path.rglob("*.parquet")):
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        return datasets.load_dataset("parquet", data_files=files, split="train", **kwargs)
    return datasets.load_dataset(str(path_or_id), split=split, **kwargs)


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
        sources = [s for s in SOURCES if probs_column(s) in names] or list(SOURCES)
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


# ================================================================================================ training
@dataclass
class FusionTrainingConfig:
    """How to train a fusion policy (supervised or from feedback)."""

    max_epochs: int = field(
        default=200, metadata={"help": "Upper bound on epochs (early stopping usually ends sooner)."}
    )
    batch_size: int = field(default=256, metadata={"help": "Labelled rows per step (supervised training)."})
    feedback_batch_size: int = field(default=1024, metadata={"help": "Feedback events per step (feedback training)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    patience: int = field(default=15, metadata={"help": "Stop after this many epochs without validation improvement."})
    min_delta: float = field(default=1e-4, metadata={"help": "Smallest validation loss decrease that counts."})
    validation_fraction: float = field(
        default=0.15, metadata={"help": "Share of images held out (by id) for early stopping and temperature."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, shuffling, dropout and splits."})
    calibrate: bool = field(
        default=True, metadata={"help": "Fit the per-attribute temperature on the validation split."}
    )
    objective: str = field(
        default="likelihood",
        metadata={"help": "Feedback objective: 'likelihood' (proper, calibrated) or 'snips' (top-choice reward)."},
    )
    weighting: str = field(
        default="ips", metadata={"help": "Feedback event weights: 'ips' (1/propensity, clipped, normalised) or 'none'."}
    )
    propensity_floor: float = field(
        default=0.2, metadata={"help": "Propensities below this are clipped (importance weights <= 1/floor)."}
    )
    reviewer_noise: float = field(
        default=0.0, metadata={"help": "Assumed probability that a reviewer's accept/reject is wrong."}
    )

    def check(self) -> None:
        if self.objective not in ("likelihood", "snips"):
            raise ValueError(f"objective must be 'likelihood' or 'snips', got {self.objective!r}")
        if self.weighting not in ("ips", "none"):
            raise ValueError(f"weighting must be 'ips' or 'none', got {self.weighting!r}")
        if not 0.0 <= self.reviewer_noise < 0.5:
            raise ValueError("reviewer_noise must be in [0, 0.5)")
        if not 0.0 < self.propensity_floor <= 1.0:
            raise ValueError("propensity_floor must be in (0, 1]")


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    calibrated_val_loss: float | None = None
    temperature: list[float] | None = None


def fit_context_stats(model: CharattrFusionModel, data: FusionData) -> None:
    """Store mean/std of ``asinh(quality)`` over the rows with known quality (the model's input scaling)."""
    q, m = data.inputs["quality"], data.inputs["quality_mask"]
    if m.sum() < 2:
        return
    values = np.arcsinh(q[m].astype(np.float64))
    model.set_context_normalization(values.mean(0), values.std(0) + 1e-3)


def _trainable(model: CharattrFusionModel) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if n != "log_temperature"]


#: Validation losses are computed in chunks of this many rows/events (bounded memory).
_EVAL_CHUNK = 8192
#: Temperature scaling uses at most this many validation rows/events (its gradient graph is kept in memory).
_CALIBRATION_MAX = 20000


def _chunked_mean(terms: Callable, model: torch.nn.Module, n: int, device: torch.device) -> float:
    """Mean of a loss over ``n`` items from per-chunk ``(sum, count)`` pairs."""
    total, count = 0.0, 0.0
    for start in range(0, n, _EVAL_CHUNK):
        s, c = terms(model, torch.arange(start, min(start + _EVAL_CHUNK, n), device=device))
        total += float(s)
        count += float(c)
    return total / count if count else math.inf


def _ratio(terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    s, c = terms
    return s / c.clamp_min(1)


def _calibration_subset(n: int, seed: int, device: torch.device) -> torch.Tensor:
    if n <= _CALIBRATION_MAX:
        return torch.arange(n, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:_CALIBRATION_MAX].sort().values.to(device)


def _fit(
    model: CharattrFusionModel,
    n_items: int,
    batch_loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    val_loss: Callable[[torch.nn.Module], float] | None,
    args: FusionTrainingConfig,
    accelerator: Any = None,
    log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Shared loop: AdamW over shuffled item indices, early stopping on ``val_loss``, best weights restored.

    With an ``accelerate.Accelerator``, the model, optimiser and index loader are prepared by it (the loader is
    sharded across processes); every process computes the same validation loss on the full validation set,
    so all take the same early-stopping decisions."""
    torch.manual_seed(args.seed)
    model.log_temperature.requires_grad_(False)
    optimizer = torch.optim.AdamW(_trainable(model), lr=args.learning_rate, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(n_items)), batch_size=args.batch_size, shuffle=True,
        generator=generator,
    )
    wrapped = model
    if accelerator is not None:
        wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    bare = accelerator.unwrap_model(wrapped) if accelerator is not None else model
    best = (math.inf, 0, copy.deepcopy(bare.state_dict()))
    history: list[dict] = []
    stale = 0
    epoch = 0
    for epoch in range(1, args.max_epochs + 1):
        wrapped.train()
        total, steps = 0.0, 0
        for (index,) in loader:
            loss = batch_loss(wrapped, index)
            optimizer.zero_grad(set_to_none=True)
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        record = {"epoch": epoch, "train_loss": total / max(steps, 1)}
        if val_loss is not None:
            bare.eval()
            with torch.no_grad():
                record["val_loss"] = val_loss(bare)
            current = record["val_loss"]
        else:
            current = record["train_loss"]
        history.append(record)
        if log is not None:
            log(record)
        if current < best[0] - args.min_delta:
            best = (current, epoch, copy.deepcopy(bare.state_dict()))
            stale = 0
        else:
            stale += 1
            if stale >= args.patience:
                break
    bare.load_state_dict(best[2])
    bare.eval()
    model.log_temperature.requires_grad_(True)
    return TrainResult(best_epoch=best[1], best_val_loss=float(best[0]), epochs_run=epoch, history=history)


def _calibrate(model: CharattrFusionModel, val_loss: Callable[[torch.nn.Module], torch.Tensor]) -> float | None:
    """Temperature scaling: fit ``log_temperature`` alone on the validation loss (L-BFGS); kept only if it
    lowers that loss."""
    model.eval()
    with torch.no_grad():
        before = float(val_loss(model))
    saved = model.log_temperature.detach().clone()
    params = [p for p in model.parameters() if p is not model.log_temperature]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        optimizer = torch.optim.LBFGS([model.log_temperature], lr=0.5, max_iter=50, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = val_loss(model)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            model.log_temperature.clamp_(-3.0, 3.0)
            after = float(val_loss(model))
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    if not math.isfinite(after) or after > before:
        with torch.no_grad():
            model.log_temperature.copy_(saved)
        return before
    return after


def _record_round(model: CharattrFusionModel, info: dict, policy_version: str | None) -> None:
    cfg = model.config
    rounds = list(cfg.training_info or [])
    version = policy_version or f"v{len(rounds) + 1}"
    rounds.append({**info, "policy_version": version})
    cfg.training_info = rounds
    cfg.policy_version = version
    cfg.eval_results = []  # measured on the previous weights: no longer this policy's numbers


def train_supervised(
    model: CharattrFusionModel,
    train: FusionData,
    val: FusionData | None = None,
    args: FusionTrainingConfig | None = None,
    accelerator: Any = None,
    log: Callable[[dict], None] | None = None,
    data_name: str | None = None,
    command: str | None = None,
    policy_version: str | None = None,
) -> TrainResult:
    """Train ``model`` in place on labelled rows (``train.labels``); validation rows come from ``val`` or are
    split off ``train`` by id. A model that was trained before keeps its context scaling (continued
    training); a fresh one gets it from ``train``."""
    args = args or FusionTrainingConfig()
    args.check()
    if train.labels is None:
        raise ValueError("supervised training needs labels: a 'truth' column or a labels dataset (join_labels)")
    if val is None:
        tr, va = split_by_id(train.ids, args.validation_fraction, args.seed, salt="validation")
        train, val = train.subset(tr), (train.subset(va) if len(va) else None)
    if val is None or len(val) == 0:
        logger.warning("no validation rows: training runs all %d epochs, without early stopping or calibration",
                       args.max_epochs)
    keep = np.flatnonzero((train.labels >= 0).any(axis=(1, 2)))
    if len(keep) == 0:
        raise ValueError("no training row has a known label")
    train = train.subset(keep)
    if not model.config.training_info:
        fit_context_stats(model, train)
    device = model.label_bias.device
    x = train.tensors(device)
    y = torch.from_numpy(train.labels).to(device)

    def batch_loss(m, index):
        index = index.to(device)
        return m(**{k: v[index] for k, v in x.items()}, labels=y[index]).loss

    val_fn = calib_fn = None
    if val is not None and val.labels is not None and len(val):
        vx, vy = val.tensors(device), torch.from_numpy(val.labels).to(device)

        def val_terms(m, index):
            out = m(**{k: v[index] for k, v in vx.items()}, labels=vy[index])
            count = ((vy[index] >= 0).any(-1) & out.available).sum()
            return out.loss * count, count

        val_fn = lambda m: _chunked_mean(val_terms, m, len(val), device)  # noqa: E731
        calib_index = _calibration_subset(len(val), args.seed, device)
        calib_fn = lambda m: _ratio(val_terms(m, calib_index))  # noqa: E731
    result = _fit(model, len(train), batch_loss, val_fn, args, accelerator, log)
    if args.calibrate and calib_fn is not None:
        result.calibrated_val_loss = _calibrate(model, calib_fn)
    result.temperature = model.log_temperature.detach().exp().tolist()
    _record_round(
        model,
        {"kind": "supervised", "images": len(train), "events": None, "data": data_name or "", "seed": args.seed,
         "command": command, "epochs": result.epochs_run},
        policy_version,
    )
    return result


# ================================================================================================ feedback
def validate_feedback(events: Dataset, config: CharattrFusionConfig) -> None:
    """Raise a clear error if a feedback log does not follow :data:`FEEDBACK_FEATURES`."""
    missing = [c for c in _FEEDBACK_REQUIRED if c not in events.column_names]
    if missing:
        raise ValueError(f"feedback log lacks columns {missing}; required: {list(_FEEDBACK_REQUIRED)}")
    table = events.select_columns(["attribute", "action", "propensity", "reward"]).with_format("numpy")[:]
    prop, reward = np.asarray(table["propensity"], float), np.asarray(table["reward"], float)
    if len(prop) and (not np.all(np.isfinite(prop)) or prop.min() <= 0 or prop.max() > 1):
        raise ValueError("feedback propensities must be in (0, 1]")
    if len(reward) and (not np.all(np.isfinite(reward)) or reward.min() < 0 or reward.max() > 1):
        raise ValueError("feedback rewards must be in [0, 1] (1 accept, 0 reject)")
    sizes = {a["name"]: len(a["labels"]) for a in config.attributes}
    for attr, action in zip(table["attribute"], table["action"]):
        if attr in sizes and not 0 <= int(action) < sizes[attr]:
            raise ValueError(
                f"feedback action {int(action)} out of range for attribute {attr!r} ({sizes[attr]} labels)"
            )


def _event_arrays(events: Dataset, data: FusionData, config: CharattrFusionConfig) -> dict[str, np.ndarray]:
    validate_feedback(events, config)
    row_of = {i: r for r, i in enumerate(data.ids)}
    attr_of = {a: i for i, a in enumerate(config.attribute_names)}
    cols = events.select_columns(list(_FEEDBACK_REQUIRED)).to_dict()
    rows, attrs, keep = [], [], []
    unknown_ids = unknown_attrs = 0
    for k, (i, a) in enumerate(zip(cols["id"], cols["attribute"])):
        r, j = row_of.get(str(i)), attr_of.get(a)
        if r is None:
            unknown_ids += 1
        elif j is None:
            unknown_attrs += 1
        else:
            rows.append(r)
            attrs.append(j)
            keep.append(k)
    if unknown_ids or unknown_attrs:
        logger.warning(
            "feedback: skipped %d events for images not in the dataset and %d for attributes the policy does "
            "not fuse", unknown_ids, unknown_attrs,
        )
    keep_a = np.asarray(keep, dtype=np.int64)
    action = np.asarray(cols["action"], dtype=np.int64)
    propensity = np.asarray(cols["propensity"], dtype=np.float32)
    reward = np.asarray(cols["reward"], dtype=np.float32)
    multi = np.array([bool(a["multi_label"]) for a in config.attributes], dtype=bool)
    attrs_a = np.asarray(attrs, dtype=np.int64)
    return {
        "row": np.asarray(rows, dtype=np.int64),
        "attr": attrs_a,
        "action": action[keep_a],
        "propensity": propensity[keep_a],
        "reward": reward[keep_a],
        "multi": multi[attrs_a] if len(attrs_a) else np.zeros(0, bool),
    }


def _feedback_loss(
    model: torch.nn.Module,
    x: Mapping[str, torch.Tensor],
    ev: Mapping[str, torch.Tensor],
    index: torch.Tensor,
    args: FusionTrainingConfig,
    objective: str,
    weighted: bool,
) -> torch.Tensor:
    """Loss of a batch of events (see the module docstring)."""
    rows = ev["row"][index]
    uniq, inverse = torch.unique(rows, return_inverse=True)
    out = model(**{k: v[uniq] for k, v in x.items()})
    attr, action = ev["attr"][index], ev["action"][index]
    p = out.probs[inverse, attr, action]
    available = out.available[inverse, attr]
    reward, prop, multi = ev["reward"][index], ev["propensity"][index], ev["multi"][index]
    eta = args.reviewer_noise
    q = (eta + (1.0 - 2.0 * eta) * p).clamp(1e-6, 1.0 - 1e-6)
    loglik = reward * torch.log(q) + (1.0 - reward) * torch.log1p(-q)
    w = ev["weight"][index] if weighted else torch.ones_like(reward)
    use = available.to(w.dtype)
    if objective == "snips":
        single = use * (~multi).to(w.dtype)
        ratio = single * p / prop.clamp_min(args.propensity_floor)
        snips = (ratio * reward).sum() / ratio.sum().clamp_min(1e-6)
        multi_use = use * multi.to(w.dtype)
        nll_multi = -(multi_use * w * loglik).sum() / (multi_use * w).sum().clamp_min(1e-6)
        frac = single.sum() / use.sum().clamp_min(1.0)
        return -frac * snips + (1.0 - frac) * nll_multi
    return -(use * w * loglik).sum() / (use * w).sum().clamp_min(1e-6)


def train_from_feedback(
    model: CharattrFusionModel,
    data: FusionData,
    feedback: Dataset,
    args: FusionTrainingConfig | None = None,
    accelerator: Any = None,
    log: Callable[[dict], None] | None = None,
    data_name: str | None = None,
    command: str | None = None,
    policy_version: str | None = None,
) -> TrainResult:
    """Train ``model`` in place from reviewer events (reward only, no labels needed).

    ``data`` holds the inputs of the images the events refer to (matched on ``id``). Validation events (for
    early stopping and the temperature) are those of a held-out share of the images. Works the same on a fresh
    model and on one loaded with ``from_pretrained`` (continued training: context scaling is kept)."""
    args = args or FusionTrainingConfig()
    args.check()
    ev_np = _event_arrays(feedback, data, model.config)
    if len(ev_np["row"]) == 0:
        raise ValueError("no usable feedback event (check that the ids match the annotated dataset)")
    weight = 1.0 / np.maximum(ev_np["propensity"], args.propensity_floor)
    ev_np["weight"] = (weight / weight.mean()).astype(np.float32)
    if not model.config.training_info:
        fit_context_stats(model, data.subset(np.unique(ev_np["row"])))
    _, held_rows = split_by_id(data.ids, args.validation_fraction, args.seed, salt="validation")
    is_val = np.isin(ev_np["row"], held_rows)
    device = model.label_bias.device
    x = data.tensors(device)
    ev = {k: torch.from_numpy(v).to(device) for k, v in ev_np.items()}
    train_idx = torch.from_numpy(np.flatnonzero(~is_val)).to(device)
    val_idx = torch.from_numpy(np.flatnonzero(is_val)).to(device)
    if len(train_idx) == 0:
        raise ValueError("all feedback events fell in the validation split; log more images")
    weighted = args.weighting == "ips"

    def batch_loss(m, index):
        return _feedback_loss(m, x, ev, train_idx[index.to(device)], args, args.objective, weighted)

    def val_terms(m, index, objective):
        events = val_idx[index]
        return _feedback_loss(m, x, ev, events, args, objective, False) * len(events), torch.tensor(len(events))

    def val_objective(m) -> float:
        return _chunked_mean(lambda mm, i: val_terms(mm, i, args.objective), m, len(val_idx), device)

    has_val = len(val_idx) > 0
    if not has_val:
        logger.warning("no validation events: training runs all %d epochs, without early stopping or calibration",
                       args.max_epochs)
    fit_args = dataclasses.replace(args, batch_size=args.feedback_batch_size)
    result = _fit(model, len(train_idx), batch_loss, val_objective if has_val else None, fit_args, accelerator, log)
    if args.calibrate and has_val:
        calib_index = _calibration_subset(len(val_idx), args.seed, device)
        result.calibrated_val_loss = _calibrate(model, lambda m: _ratio(val_terms(m, calib_index, "likelihood")))
    result.temperature = model.log_temperature.detach().exp().tolist()
    versions: list[str] = []
    if "policy_version" in feedback.column_names:
        versions = sorted({str(v) for v in feedback["policy_version"] if v is not None})
    _record_round(
        model,
        {"kind": "feedback", "images": int(len(np.unique(ev_np["row"]))), "events": int(len(ev_np["row"])),
         "data": data_name or "", "seed": args.seed, "command": command, "epochs": result.epochs_run,
         "objective": args.objective, "logged_by": versions},
        policy_version,
    )
    return result


def _policy_vectors(policy: Any, columns: Mapping[str, Sequence], config: CharattrFusionConfig) -> dict[str, list]:
    if isinstance(policy, str):
        policy = SimpleFusion(config.to_schema(), sources=config.sources, method=policy)
    if isinstance(policy, CharattrFusionModel):
        return policy.fuse_columns(columns)
    if hasattr(policy, "fuse"):
        return policy.fuse(columns)
    if callable(policy):
        return policy(columns)
    raise TypeError(f"cannot use {type(policy).__name__} as a logging policy")


def simulate_feedback(
    data: "Dataset | Mapping[str, Sequence]",
    config: CharattrFusionConfig,
    logging_policy: Any = "confidence",
    epsilon: float = 0.1,
    noise_rate: float = 0.0,
    attributes: Sequence[str] | None = None,
    seed: int = 0,
    policy_version: str | None = None,
    truth_column: str = "truth",
    start_time: _dt.datetime | None = None,
) -> Dataset:
    """Reviewer events simulated from ground truth, in the :data:`FEEDBACK_FEATURES` format.

    For each row and attribute the logging policy has an answer for, one label is shown, drawn from
    ``(1 - epsilon) * policy + epsilon * uniform`` (for a multi-label attribute: from the presence
    probabilities normalised to sum 1, mixed the same way); the propensity is that draw's probability. The
    simulated reviewer accepts iff the shown label is (one of) the true label(s), and flips that answer with
    probability ``noise_rate``. ``logging_policy``: a fixed rule name (``"confidence"``, ``"mean"``,
    ``"vote"``), a fusion stage, or a :class:`CharattrFusionModel` (the current policy)."""
    if not 0.0 < epsilon <= 1.0:
        raise ValueError("epsilon must be in (0, 1]: without exploration, propensities of unseen labels are 0")
    columns = data.to_dict() if isinstance(data, Dataset) else data
    if truth_column not in columns:
        raise ValueError(f"simulating feedback needs the ground truth column {truth_column!r}")
    fused = _policy_vectors(logging_policy, columns, config)
    if policy_version is None:
        if isinstance(logging_policy, CharattrFusionModel):
            policy_version = logging_policy.config.policy_version or "untrained"
        elif isinstance(logging_policy, str):
            policy_version = f"simple-{logging_policy}"
        else:
            policy_version = type(logging_policy).__name__
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])  # separate stream: the same events with or without noise
    start = start_time or _dt.datetime(2025, 1, 1, tzinfo=_dt.timezone.utc)
    names = list(attributes or config.attribute_names)
    out: dict[str, list] = {k: [] for k in FEEDBACK_FEATURES}
    ids = [str(i) for i in columns["id"]]
    for r, truth in enumerate(columns[truth_column]):
        if not truth:
            continue
        for name in names:
            attr = config.attributes[config.attribute_index(name)]
            vec, value = fused[name][r], truth.get(name)
            if vec is None or value is None:
                continue
            k = len(attr["labels"])
            p = np.clip(np.asarray(vec, dtype=np.float64), 0.0, None)
            if attr["multi_label"]:
                p = p / p.sum() if p.sum() > 0 else np.full(k, 1.0 / k)
                true = set(int(v) for v in value)
            else:
                p = p / p.sum()
                true = {int(value)}
            mix = (1.0 - epsilon) * p + epsilon / k
            action = int(rng.choice(k, p=mix / mix.sum()))
            reward = float(action in true)
            if noise_rate and noise_rng.random() < noise_rate:
                reward = 1.0 - reward
            out["id"].append(ids[r])
            out["attribute"].append(name)
            out["action"].append(action)
            out["propensity"].append(float(mix[action] / mix.sum()))
            out["reward"].append(reward)
            out["policy_version"].append(policy_version)
            out["timestamp"].append(start + _dt.timedelta(seconds=len(out["id"])))
    return Dataset.from_dict(out, features=FEEDBACK_FEATURES)


# ================================================================================================ evaluation
@torch.no_grad()
def predict(model: CharattrFusionModel, data: FusionData, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities ``(N, A, L)`` and availability ``(N, A)`` for every row of ``data``."""
    model.eval()
    device = model.label_bias.device
    probs, avail = [], []
    for start in range(0, len(data), batch_size):
        chunk = {k: torch.from_numpy(v[start : start + batch_size]).to(device) for k, v in data.inputs.items()}
        out = model(**chunk)
        probs.append(out.probs.float().cpu().numpy())
        avail.append(out.available.cpu().numpy())
    A, L = model.config.num_attributes, model.config.max_labels
    if not probs:
        return np.zeros((0, A, L), np.float32), np.zeros((0, A), bool)
    return np.concatenate(probs), np.concatenate(avail)


def method_probs(
    method: str, columns: Mapping[str, Sequence], config: CharattrFusionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Padded probabilities of a fixed method: ``"source:<name>"`` (one source alone) or a
    :class:`~charattr_hf.stages.fusion.SimpleFusion` rule (``"mean"``, ``"confidence"``, ``"vote"``)."""
    n = len(columns["id"]) if "id" in columns else len(next(iter(columns.values())))
    A, L = config.num_attributes, config.max_labels
    probs = np.zeros((n, A, L), dtype=np.float32)
    avail = np.zeros((n, A), dtype=bool)
    if method.startswith("source:"):
        col = columns.get(probs_column(method.split(":", 1)[1])) or [None] * n
        vectors = {a: [(cell or {}).get(a) for cell in col] for a in config.attribute_names}
    else:
        vectors = _policy_vectors(method, columns, config)
    for i, attr in enumerate(config.attributes):
        k = len(attr["labels"])
        for r, vec in enumerate(vectors[attr["name"]]):
            if vec is not None:
                probs[r, i, :k] = vec
                avail[r, i] = True
    return probs, avail


def score(
    probs: np.ndarray,
    available: np.ndarray,
    labels: np.ndarray,
    config: CharattrFusionConfig,
    method: str,
    groups: Sequence[Any] | None = None,
    num_bins: int = 15,
) -> list[dict]:
    """Accuracy and ECE per attribute (overall, and per group when ``groups`` is given) of one method.

    Counted as :mod:`charattr_hf.evaluation` counts (the shared :mod:`charattr_hf.metrics` modules): rows
    without ground truth are skipped; a row where the method has no answer is a wrong answer for accuracy
    (``missing``) and is left out of ECE. Accuracy is exact match for multi-label attributes; ECE is top-label
    for single-label attributes and over per-label presence probabilities for multi-label ones. Overall
    numbers go through the ``evaluate`` modules; per-group numbers use the same arithmetic
    (``charattr_hf.metrics._core``) directly, to avoid one ``evaluate`` call per group."""
    accuracy = {m: LabelAccuracy(m, keep_in_memory=True) for m in ("multiclass", "multilabel")}
    calibration = {m: CalibrationError(m, keep_in_memory=True) for m in ("multiclass", "multilabel")}
    records: list[dict] = []
    group_keys = None if groups is None else np.asarray([str(g) for g in groups])
    for i, attr in enumerate(config.attributes):
        k = len(attr["labels"])
        y = labels[:, i, :k]
        rows = np.flatnonzero((y >= 0).all(-1))
        if len(rows) == 0:
            continue
        p, y, ok = probs[rows, i, :k].astype(np.float64), y[rows], available[rows, i]
        if attr["multi_label"]:
            kind = "multilabel"
            pred = np.where(ok[:, None], (p >= attr["threshold"]).astype(np.int64), -1)
            ref = (y > 0.5).astype(np.int64)
            conf = np.where(ok[:, None], p, np.nan)
            acc = accuracy[kind].compute(predictions=pred.tolist(), references=ref.tolist())
            ece = calibration[kind].compute(probabilities=conf.tolist(), references=ref.tolist(), num_bins=num_bins)

            def by_rows(sel, pred=pred, ref=ref, conf=conf):
                return (metric_core.multilabel_accuracy(pred[sel], ref[sel])["subset_accuracy"],
                        metric_core.multilabel_calibration(conf[sel], ref[sel], num_bins)["ece"])

            acc_value = acc["subset_accuracy"]
        else:
            kind = "multiclass"
            pred = np.where(ok, p.argmax(-1), -1).astype(np.int64)
            ref = y.argmax(-1).astype(np.int64)
            conf = np.where(ok, p.max(-1) / np.clip(p.sum(-1), 1e-12, None), np.nan)
            acc = accuracy[kind].compute(predictions=pred, references=ref)
            ece = calibration[kind].compute(predictions=pred, references=ref, confidences=conf, num_bins=num_bins)

            def by_rows(sel, pred=pred, ref=ref, conf=conf):
                return (metric_core.multiclass_accuracy(pred[sel], ref[sel])["accuracy"],
                        metric_core.multiclass_calibration(pred[sel], ref[sel], conf[sel], num_bins)["ece"])

            acc_value = acc["accuracy"]
        records.append({"attribute": attr["name"], "method": method, "style": None, "accuracy": acc_value,
                        "ece": ece["ece"], "n": int(len(rows)), "missing": int(acc["missing"])})
        if group_keys is not None:
            keys = group_keys[rows]
            for key in sorted(set(keys.tolist())):
                sel = np.flatnonzero(keys == key)
                a, e = by_rows(sel)
                records.append({"attribute": attr["name"], "method": method, "style": key, "accuracy": a,
                                "ece": e, "n": int(len(sel)), "missing": int((~ok[sel]).sum())})
    return records


def compare_methods(
    columns: Mapping[str, Sequence],
    data: FusionData,
    config: CharattrFusionConfig,
    policies: Mapping[str, CharattrFusionModel] | None = None,
    baselines: Iterable[str] = ("mean", "confidence", "vote"),
    include_sources: bool = True,
) -> list[dict]:
    """Records ``{"attribute", "method", "style", "accuracy", "ece", "n", "missing"}`` for every source alone,
    every fixed rule and every given policy, on the labelled rows of ``data`` (built from the same
    ``columns``); per group too when ``data.groups`` is set (``style`` None = all rows). See :func:`score`."""
    if data.labels is None:
        raise ValueError("comparing methods needs labels")
    methods = ([f"source:{s}" for s in config.sources] if include_sources else []) + list(baselines)
    records: list[dict] = []
    for method in methods:
        probs, avail = method_probs(method, columns, config)
        records += score(probs, avail, data.labels, config, method.replace("source:", ""), data.groups)
    for name, policy in (policies or {}).items():
        probs, avail = predict(policy, data)
        records += score(probs, avail, data.labels, config, name, data.groups)
    return records


# ================================================================================================ test bed
SIM_STYLES = ("anime", "realistic", "sketch", "pixel_art")


@dataclass(frozen=True)
class SourceProfile:
    """How one simulated source behaves on one kind of image.

    ``accuracy``: probability that its evidence points at the truth (per label for multi-label attributes);
    None = pure noise (a random label). ``confidence``: logit margin of that evidence. ``wrong_confidence``:
    factor on the margin when it is wrong (1 = as sure when wrong as when right; < 1 = its confidence is
    informative). ``missing``: probability of no evidence for an attribute. ``blind_to``: substrings of
    attribute names it cannot see here (pure noise for those)."""

    accuracy: float | None = 0.8
    confidence: float = 3.0
    wrong_confidence: float = 1.0
    missing: float = 0.0
    blind_to: tuple[str, ...] = ()


#: Default reliability: CLIP reads photos and anime well, cannot see colours in sketches and is shaky on
#: pixel art; tags are excellent where present, absent on photos and wrong on pixel art; blip2 is pure noise.
DEFAULT_PROFILES: dict[str, dict[str, SourceProfile]] = {
    "clip": {
        "anime": SourceProfile(0.72, 2.5, wrong_confidence=0.7),
        "realistic": SourceProfile(0.82, 2.5, wrong_confidence=0.7),
        "sketch": SourceProfile(0.65, 2.5, wrong_confidence=0.7, blind_to=("color",)),
        "pixel_art": SourceProfile(0.6, 2.0, wrong_confidence=0.8),
    },
    "tags": {
        "anime": SourceProfile(0.92, 4.0, missing=0.35),
        "realistic": SourceProfile(0.9, 4.0, missing=0.9),
        "sketch": SourceProfile(0.9, 4.0, missing=0.4),
        "pixel_art": SourceProfile(0.3, 4.0, missing=0.3),
    },
    "blip2": {style: SourceProfile(None, 3.0, missing=0.05) for style in SIM_STYLES},
}

# quality (brightness, contrast, saturation, colorfulness, sharpness) and flag rates per style
_STYLE_QUALITY = {
    "anime": (0.65, 0.50, 0.55, 0.50, 200.0),
    "realistic": (0.50, 0.45, 0.35, 0.30, 120.0),
    "sketch": (0.85, 0.30, 0.03, 0.02, 300.0),
    "pixel_art": (0.55, 0.70, 0.70, 0.65, 900.0),
}
_STYLE_FLAGS = {
    "anime": {"small": 0.05},
    "realistic": {"jpeg_artifacts": 0.3, "small": 0.05},
    "sketch": {"grayscale": 0.85, "small": 0.05},
    "pixel_art": {"low_resolution": 0.6, "small": 0.05},
}


def simulate_annotated(
    schema: "Schema | str | None" = None,
    num_rows: int = 2000,
    seed: int = 0,
    sources: Sequence[str] = SOURCES,
    profiles: Mapping[str, Mapping[str, SourceProfile]] | None = None,
    styles: Sequence[str] = SIM_STYLES,
    embedding_dim: int = 0,
    id_prefix: str | None = None,
) -> Dataset:
    """An annotated dataset with ground truth whose sources' reliability depends on the kind of image.

    Columns: ``id``, ``index``, ``style`` (the hidden kind of image, for evaluation only), ``truth``,
    ``probs_<source>``, ``quality`` and ``flags`` (which reveal the style, noisily), and ``embedding`` when
    ``embedding_dim`` > 0. The ``art_style`` attribute, when the schema has it, follows the style, so the
    sources' art-style vectors are a hint too. Row ``i`` depends only on ``(seed, i)``: the first rows of a
    bigger simulation are the same rows."""
    schema = load_schema(schema)
    profiles = profiles or DEFAULT_PROFILES
    for s in sources:
        if s not in profiles:
            raise ValueError(f"no simulation profile for source {s!r}; profiles: {sorted(profiles)}")
    n = int(num_rows)
    priors = {a.name: _world_rng("prior", a.name).dirichlet(np.full(a.num_labels, 2.0)) for a in schema}
    centroids = _world_rng("embedding", *styles).normal(size=(len(styles), embedding_dim)) if embedding_dim else None
    row_styles, truth, quality, flags, embeddings = [], [], [], [], []
    probs: dict[str, list[dict]] = {s: [] for s in sources}
    for r in range(n):
        rng = np.random.default_rng([seed, r])  # one generator per row: simulate(10) == simulate(100)[:10]
        style_i = int(rng.integers(len(styles)))
        style = styles[style_i]
        row_truth: dict[str, Any] = {}
        for attr in schema:
            if attr.multi_label:
                row_truth[attr.name] = [int(i) for i in np.flatnonzero(rng.random(attr.num_labels) < 0.2)]
            else:
                value = int(rng.choice(attr.num_labels, p=priors[attr.name]))
                if attr.name == "art_style" and style in attr.label_names and rng.random() < 0.9:
                    value = attr.index(style)
                row_truth[attr.name] = value
        for source in sources:
            prof = profiles[source][style]
            cell: dict[str, Any] = {}
            for attr in schema:
                if rng.random() < prof.missing:
                    cell[attr.name] = None
                    continue
                blind = prof.accuracy is None or any(b in attr.name for b in prof.blind_to)
                cell[attr.name] = _emit(rng, attr.multi_label, attr.num_labels, row_truth[attr.name], prof, blind)
            probs[source].append(cell)
        base = _STYLE_QUALITY.get(style, (0.5, 0.5, 0.5, 0.5, 200.0))
        values = [float(np.clip(b + rng.normal(0, 0.08), 0, 1)) for b in base[:4]]
        values.append(float(base[4] * rng.lognormal(0.0, 0.35)))
        quality.append(dict(zip(QUALITY_FIELDS, values)))
        flags.append([f for f, rate in _STYLE_FLAGS.get(style, {}).items() if rng.random() < rate])
        if centroids is not None:
            e = centroids[style_i] + rng.normal(scale=1.5, size=embedding_dim)
            embeddings.append((e / np.linalg.norm(e)).astype(np.float16).tolist())
        row_styles.append(style)
        truth.append(row_truth)
    prefix = id_prefix if id_prefix is not None else f"sim{seed}"
    data: dict[str, list] = {
        "id": [f"{prefix}-{r:06d}" for r in range(n)],
        "index": list(range(n)),
        "style": row_styles,
        "truth": truth,
        **{probs_column(s): probs[s] for s in sources},
        "quality": quality,
        "flags": flags,
    }
    feats: dict[str, Any] = {
        "id": Value("string"),
        "index": Value("int64"),
        "style": Value("string"),
        "truth": schema.truth_feature(),
        **{probs_column(s): schema.probs_feature() for s in sources},
        "quality": QUALITY_FEATURES,
        "flags": List(Value("string")),
    }
    if embedding_dim:
        data["embedding"] = embeddings
        feats["embedding"] = List(Value("float16"), length=embedding_dim)
    return Dataset.from_dict(data, features=Features(feats))


def _world_rng(*key: str) -> np.random.Generator:
    """Randomness that belongs to the simulated world, not to one sample of it (label frequencies, style
    centroids): the same for every seed, so train and test sets drawn with different seeds match."""
    digest = hashlib.sha256("/".join(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _emit(rng: np.random.Generator, multi: bool, k: int, truth: Any, prof: SourceProfile, blind: bool) -> list[float]:
    """One simulated probability vector."""
    margin = prof.confidence * rng.uniform(0.5, 1.5)
    if multi:
        y = np.zeros(k)
        y[list(truth)] = 1.0
        sign = 2.0 * y - 1.0
        if blind:
            right = rng.random(k) < 0.5
        else:
            right = rng.random(k) < prof.accuracy
        scale = np.where(right, 1.0, prof.wrong_confidence)
        logits = np.where(right, sign, -sign) * margin * scale + rng.normal(0, 1.0, k)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).tolist()
    if blind:
        peak, right = int(rng.integers(k)), True
    elif rng.random() < prof.accuracy:
        peak, right = int(truth), True
    else:
        peak = int(rng.choice([i for i in range(k) if i != truth]))
        right = False
    logits = rng.normal(0, 1.0, k)
    logits[peak] += margin * (1.0 if right else prof.wrong_confidence)
    p = np.exp(logits - logits.max())
    return (p / p.sum()).astype(np.float32).tolist()


def summarize(records: Sequence[Mapping[str, Any]], method: str, style: str | None = None) -> float:
    """Mean accuracy over attributes of one method (on one style, or all rows)."""
    accs = [r["accuracy"] for r in records
            if r["method"] == method and r.get("style") == style and r["accuracy"] is not None]
    return float(np.mean(accs)) if accs else float("nan")

