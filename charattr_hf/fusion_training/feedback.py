"""Learning the fusion policy from reviewer feedback: the log format, a simulator, and the training objective.

The feedback log
----------------
One row per reviewer event, typed by :data:`FEEDBACK_FEATURES` (Parquet, a ``save_to_disk`` folder or a Hub
dataset; a review app writes rows in this format, :func:`validate_feedback` checks them):

==================  =============================  ==========================================================
column              type                           meaning
==================  =============================  ==========================================================
``id``              string (required)              the annotated row's ``id`` (the image the reviewer saw)
``attribute``       string (required)              the attribute reviewed, a name of the policy's schema
``action``          int32 (required)               the label index shown (for a multi-label attribute: the
                                                   label whose presence was shown), 0 <= action < labels
``propensity``      float32 (required)             the probability the logging policy had of showing that
                                                   label, in (0, 1]; 1 when it always shows its top label
``reward``          float32 (required)             the verdict: 1 accept, 0 reject (values in between:
                                                   partial credit)
``policy_version``  string (optional)              the version of the policy that chose what to show
                                                   (``config.policy_version``), recorded in training rounds
``timestamp``       timestamp[us, UTC] (optional)  when the reviewer answered
==================  =============================  ==========================================================

Events for ids not in the annotated dataset, or for attributes the policy does not fuse, are skipped with a
warning. :func:`simulate_feedback` writes this format from ground truth (an epsilon-greedy logging policy and
an optionally noisy reviewer), for the test bed and for benchmarks.

Training continues from whatever model it is given, so ``CharattrFusionModel.from_pretrained(saved)`` + new
feedback = a better policy; each round is recorded in ``config.training_info``.

Continued training without forgetting
-------------------------------------
Reviewers look at what is wrong, so feedback comes from a narrow slice of the data (a new style, a hard
case), and a policy fitted to those events alone drifts everywhere else: on the adaptation benchmark
(``benchmarks/adaptation.py``: demo CLIP, demo tagger and tags; ``benchmarks/adaptation_variants.py`` for the
variants below, three training seeds, fresh images of another seed and size mix), 1000 events on ``lit`` images
cost 15.9 points on watercolor (mean over seeds; 27.0 in the worst) without the term below. When the model was
trained before, each step therefore also pulls its answers on the *anchor* rows, by default the rows of ``data``
that have no event (weighted, see below), towards the answers it gave before this round (the KL divergence from
the earlier fused distribution, per attribute; "learning without forgetting", Li and Hoiem 2016), weighted by
``anchor_weight``. No labels are needed: the earlier policy is its own teacher, and what the reviewers said still
wins where they said it.

Which rows the anchor holds matters as much as how hard. The images without events include the rest of the
slice the reviewers worked on (the other ``lit`` images), and anchoring the earlier answers there holds exactly
what the feedback corrects. With ``anchor_rows="unlike_feedback"`` (the default) each anchor row is weighted by
how unlike the images with events it looks (:func:`unlike_feedback_weights`: a class-balanced logistic
regression on the rows' context, cross-fitted, no labels), so the anchor keeps the other styles and lets go of
the reviewed one; ``"all"`` weighs every row alike (in the variants run, lit 80.0 instead of 85.1 % on the
fresh images, the other settings as the default's).

How a continued round steps matters as much again. A round of reviews is small (1000 events, of which ~850 train):
at ``feedback_batch_size`` (1024 events per step) an epoch is one step, the patience of 15 epochs is 15 steps,
and early stopping (on the events of ~20 held-out images plus the anchor) can stop while the change still spreads
over every style: the anchor pulls the other styles back only later in the round. On the fresh images that cost
watercolor 1.1 points on average and 3.1 in the worst seed. Continued rounds therefore take
``continued_batch_size`` (128) events per step at ``continued_learning_rate`` (1e-2) with ``anchor_weight`` 1.5:
lit +24.5 points (57.5 -> 81.9 %) and at most 0.4 points lost on another style on average, 0.5 in the worst seed.
These three were chosen among the variants on a labelled development split of the benchmark's train images, by a
rule fixed before they ran (``benchmarks/adaptation_variants.py``), never on the fresh images;
``benchmarks/README.md`` lists every variant's results. Rounds of 100-300 events still forget more (up to 4.4
points in one seed of three): early stopping has the events of a few held-out images to go on.

Each round records what it changed (:func:`round_report`, ``before_after`` in ``config.training_info``, rendered
on the model card): per group of the images given (``data.groups``, e.g. the style; otherwise images with and
without events) the events, the share of answers that changed, the accuracy estimated from held-out events, and
the label accuracy when the data carries labels (never used for training).

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

import dataclasses
import datetime as _dt
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Value

from ..errors import UserError
from ..models.fusion import CharattrFusionConfig, CharattrFusionModel
from .data import FusionData, split_by_id
from .loop import (
    FusionTrainingConfig,
    TrainResult,
    _calibrate,
    _calibration_subset,
    _chunked_mean,
    _fit,
    _ratio,
    _record_round,
    fit_context_stats,
)
from .scoring import _policy_vectors, predict, score, summarize

logger = logging.getLogger(__name__)

__all__ = [
    "FEEDBACK_FEATURES", "validate_feedback", "simulate_feedback", "train_from_feedback", "unlike_feedback_weights",
    "round_report", "FeedbackError",
]

#: Columns of a feedback log (see the module docstring).
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


class FeedbackError(UserError, ValueError):
    """A feedback log that does not fit the policy or the data (missing columns, out-of-range values, no event
    naming the data's images)."""


def validate_feedback(events: Dataset, config: CharattrFusionConfig) -> None:
    """Raise a clear error if a feedback log does not follow :data:`FEEDBACK_FEATURES`."""
    missing = [c for c in _FEEDBACK_REQUIRED if c not in events.column_names]
    if missing:
        raise FeedbackError(f"feedback log lacks columns {missing}; required: {list(_FEEDBACK_REQUIRED)}")
    table = events.select_columns(["attribute", "action", "propensity", "reward"]).with_format("numpy")[:]
    prop, reward = np.asarray(table["propensity"], float), np.asarray(table["reward"], float)
    if len(prop) and (not np.all(np.isfinite(prop)) or prop.min() <= 0 or prop.max() > 1):
        raise FeedbackError("feedback propensities must be in (0, 1]")
    if len(reward) and (not np.all(np.isfinite(reward)) or reward.min() < 0 or reward.max() > 1):
        raise FeedbackError("feedback rewards must be in [0, 1] (1 accept, 0 reject)")
    sizes = {a["name"]: len(a["labels"]) for a in config.attributes}
    for attr, action in zip(table["attribute"], table["action"]):
        if attr in sizes and not 0 <= int(action) < sizes[attr]:
            raise FeedbackError(
                f"feedback action {int(action)} out of range for attribute {str(attr)!r} ({sizes[attr]} labels)"
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


class _Anchor:
    """The earlier policy's fused distributions on rows without feedback, and the KL term that keeps them."""

    def __init__(self, x_train, t_train, x_val, t_val, avail_train, avail_val, multi, label_mask, seed: int,
                 w_train=None, w_val=None):
        self.x_train, self.t_train, self.a_train = x_train, t_train, avail_train
        self.x_val, self.t_val, self.a_val = x_val, t_val, avail_val
        self.w_train, self.w_val = w_train, w_val  # per-row weights (None: all rows alike)
        self.multi, self.label_mask = multi, label_mask
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.num_rows = int(t_train.shape[0] + t_val.shape[0])

    @classmethod
    def build(cls, model, data: FusionData, event_rows: np.ndarray, anchor: FusionData | None,
              args: FusionTrainingConfig) -> "_Anchor | None":
        if args.anchor_weight <= 0:
            return None
        if anchor is None:
            rows = np.setdiff1d(np.arange(len(data)), np.unique(event_rows))
            anchor = data.subset(rows) if len(rows) else None
        if anchor is None or len(anchor) == 0:
            return None
        weights = None
        if args.anchor_rows == "unlike_feedback":
            weights = unlike_feedback_weights(data.subset(np.unique(event_rows)), anchor, seed=args.seed)
            logger.info("anchor: %.0f of %d images' weight kept (images like those with feedback are let go)",
                        float(weights.sum()), len(weights))
        teacher, avail = predict(model, anchor)  # the earlier policy, before any step of this round
        model.train()
        tr, va = split_by_id(anchor.ids, args.validation_fraction, args.seed, salt="anchor")
        if len(tr) == 0 or (weights is not None and weights[tr].sum() < 1.0):
            return None
        device = model.label_bias.device
        sizes = [len(a["labels"]) for a in model.config.attributes]
        label_mask = torch.zeros(len(sizes), model.config.max_labels, dtype=torch.bool, device=device)
        for a, k in enumerate(sizes):
            label_mask[a, :k] = True
        multi = torch.tensor([bool(a["multi_label"]) for a in model.config.attributes], device=device)

        def part(idx):
            sub = anchor.subset(idx)
            w = None if weights is None else torch.from_numpy(weights[idx].astype(np.float32)).to(device)
            return (sub.tensors(device), torch.from_numpy(teacher[idx]).to(device),
                    torch.from_numpy(avail[idx]).to(device), w)

        (x_tr, t_tr, a_tr, w_tr), (x_va, t_va, a_va, w_va) = part(tr), part(va)
        return cls(x_tr, t_tr, x_va, t_va, a_tr, a_va, multi, label_mask, args.seed, w_tr, w_va)

    def _kl(self, m, x, t, avail, w=None) -> torch.Tensor:
        out = m(**x)
        p = out.probs.float().clamp(1e-6, 1 - 1e-6)
        t = t.float().clamp(1e-6, 1 - 1e-6)
        single = (t * (t.log() - p.log()))
        binary = single + (1 - t) * ((1 - t).log() - (1 - p).log())
        per_label = torch.where(self.multi[None, :, None], binary, single)
        per_pair = torch.where(self.label_mask[None], per_label, torch.zeros_like(per_label)).sum(-1)
        use = avail & out.available
        if not bool(use.any()):
            return out.probs.sum() * 0.0
        if w is None:
            return per_pair[use].mean()
        pair_w = w[:, None].expand_as(per_pair)[use]
        return (per_pair[use] * pair_w).sum() / pair_w.sum().clamp_min(1e-6)

    def batch(self, m, size: int) -> torch.Tensor:
        n = self.t_train.shape[0]
        k = min(max(size, 256), n)
        if self.w_train is None:
            idx = torch.randint(n, (k,), generator=self.generator).to(self.t_train.device)
        elif n <= 1 << 24:  # rows drawn in proportion to their weight: the same expected loss, no wasted rows
            idx = torch.multinomial(self.w_train.cpu(), k, replacement=True, generator=self.generator)
            idx = idx.to(self.t_train.device)
        else:  # torch.multinomial takes at most 2**24 categories
            w = self.w_train.double().cpu().numpy()
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
            idx = torch.from_numpy(np.random.default_rng(seed).choice(n, size=k, p=w / w.sum()))
            idx = idx.to(self.t_train.device)
        return self._kl(m, {k_: v[idx] for k_, v in self.x_train.items()}, self.t_train[idx], self.a_train[idx])

    @torch.no_grad()
    def validation(self, m) -> float:
        if self.t_val.shape[0] == 0:
            return 0.0
        return float(self._kl(m, self.x_val, self.t_val, self.a_val, self.w_val))


def _context_features(data: FusionData) -> np.ndarray:
    """A plain numeric description of each row's context (what the policy sees besides the labels shown):
    the sources' vectors and availability, ``asinh(quality)``, flags and the image embedding when present."""
    x = data.inputs
    mask = x["source_mask"]
    parts = [(x["source_probs"] * mask[..., None]).reshape(len(data), -1), mask.reshape(len(data), -1)]
    q = np.arcsinh(np.nan_to_num(x["quality"].astype(np.float64))) * x["quality_mask"][:, None]
    parts += [q, x["quality_mask"][:, None], x["flags"]]
    if "embedding" in x:
        parts += [x["embedding"] * x["embedding_mask"][:, None], x["embedding_mask"][:, None]]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)


def unlike_feedback_weights(feedback_rows: FusionData, anchor: FusionData, seed: int = 0, l2: float = 1e-2,
                            folds: int = 2) -> np.ndarray:
    """How much the anchor should hold each of its rows: ``1 - P(row looks like the images with feedback)``.

    Reviewers give feedback on a slice of the data (a new style); the other images of that slice have no
    events, and anchoring the earlier policy's answers there would hold exactly what the feedback corrects.
    An L2-regularised logistic regression on the rows' context (:func:`_context_features`, standardised)
    tells the images with feedback (positives, class-balanced) from the anchor rows; each anchor row is scored
    by a model that did not see it (``folds``-fold cross-fitting) and weighted by the balanced probability
    that it is *not* like the feedback images. No labels are used. Returns ``(len(anchor),)`` in [0, 1]."""
    pos, neg = _context_features(feedback_rows), _context_features(anchor)
    if len(pos) == 0 or len(neg) == 0:
        return np.ones(len(neg))
    both = np.concatenate([pos, neg])
    mean, std = both.mean(0), both.std(0)
    keep = std > 1e-6
    pos = torch.from_numpy(((pos - mean) / np.where(keep, std, 1.0))[:, keep]).float()
    neg = torch.from_numpy(((neg - mean) / np.where(keep, std, 1.0))[:, keep]).float()
    fold = np.random.default_rng(seed).permutation(len(neg)) % max(1, min(folds, len(neg)))
    weights = np.ones(len(neg))
    for f in np.unique(fold):
        held = fold == f
        train_neg = neg[torch.from_numpy(~held)] if (~held).any() else neg
        X = torch.cat([pos, train_neg])
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(train_neg))])
        sample_w = torch.where(y > 0, 0.5 / len(pos), 0.5 / len(train_neg))
        w = torch.zeros(X.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = X @ w + b
            loss = (sample_w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
            loss = loss + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            p = torch.sigmoid(neg[torch.from_numpy(held)] @ w + b).numpy()
        weights[held] = 1.0 - p
    return weights


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
    anchor: FusionData | None = None,
) -> TrainResult:
    """Train ``model`` in place from reviewer events (reward only, no labels needed).

    ``data`` holds the inputs of the images the events refer to (matched on ``id``), and may hold other images
    too. Validation events (for early stopping and the temperature) are those of a held-out share of the images.
    Works the same on a fresh model and on one loaded with ``from_pretrained`` (continued training: context
    scaling is kept, and the model's earlier answers on ``anchor``, by default the rows of ``data`` without
    events, are kept by the ``anchor_weight`` term; see the module docstring)."""
    args = args or FusionTrainingConfig()
    args.check()
    ev_np = _event_arrays(feedback, data, model.config)
    if len(ev_np["row"]) == 0:
        raise FeedbackError("no usable feedback event: no event names an image and attribute of the data (check "
                            "that the log was made on this annotated dataset)")
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
    continued = bool(model.config.training_info)
    before = predict(model, data)
    keep = _Anchor.build(model, data, ev_np["row"], anchor, args) if continued else None
    if keep is not None:
        logger.info("continued training: keeping the earlier answers on %d images without feedback",
                    keep.num_rows)

    def batch_loss(m, index):
        loss = _feedback_loss(m, x, ev, train_idx[index.to(device)], args, args.objective, weighted)
        return loss + args.anchor_weight * keep.batch(m, len(index)) if keep is not None else loss

    def val_terms(m, index, objective):
        events = val_idx[index]
        return _feedback_loss(m, x, ev, events, args, objective, False) * len(events), torch.tensor(len(events))

    def val_objective(m) -> float:
        value = _chunked_mean(lambda mm, i: val_terms(mm, i, args.objective), m, len(val_idx), device)
        return value + args.anchor_weight * keep.validation(m) if keep is not None else value

    has_val = len(val_idx) > 0
    if not has_val:
        logger.warning("no validation events: training runs all %d epochs, without early stopping or calibration",
                       args.max_epochs)
    if continued:
        fit_args = dataclasses.replace(args, batch_size=args.continued_batch_size,
                                       learning_rate=args.continued_learning_rate or args.learning_rate)
    else:
        fit_args = dataclasses.replace(args, batch_size=args.feedback_batch_size)
    result = _fit(model, len(train_idx), batch_loss, val_objective if has_val else None, fit_args, accelerator, log)
    if args.calibrate and has_val:
        calib_index = _calibration_subset(len(val_idx), args.seed, device)
        result.calibrated_val_loss = _calibrate(model, lambda m: _ratio(val_terms(m, calib_index, "likelihood")))
    result.temperature = model.log_temperature.detach().exp().tolist()
    versions: list[str] = []
    if "policy_version" in feedback.column_names:
        versions = sorted({str(v) for v in feedback["policy_version"] if v is not None})
    report = round_report(model.config, data, before, predict(model, data), ev_np, is_val, args.propensity_floor)
    _record_round(
        model,
        {"kind": "feedback", "images": int(len(np.unique(ev_np["row"]))), "events": int(len(ev_np["row"])),
         "data": data_name or "", "seed": args.seed, "command": command, "epochs": result.epochs_run,
         "objective": args.objective, "logged_by": versions, "given_images": len(data),
         "events_per_step": fit_args.batch_size, "learning_rate": fit_args.learning_rate,
         "continued": continued, "anchor_rows": args.anchor_rows, "anchor_weight_set": args.anchor_weight,
         "anchor_weight": args.anchor_weight if keep is not None else 0.0,
         "anchored_images": keep.num_rows if keep is not None else 0, "before_after": report},
        policy_version,
    )
    return result


def round_report(
    config: CharattrFusionConfig,
    data: FusionData,
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    events: Mapping[str, np.ndarray],
    held_out: np.ndarray,
    propensity_floor: float = 0.2,
) -> list[dict]:
    """What a round of feedback training changed, per group of the images it was given: one row per group
    (``data.groups``, e.g. the style, when set; otherwise images with and without events) and one for all.

    Keys: ``group``; ``images``; ``events`` (on those images); ``changed`` (share of the answers, image x
    attribute, whose top label or, multi-label, label set differs after the round: label-free, and on images
    without events it is what the round moved that nobody asked for); ``held_out_events`` and
    ``estimated_before`` / ``estimated_after`` (accuracy of the top label estimated from the held-out
    single-label events: self-normalised importance weighting of the events that showed the policy's own top
    label; None without such events); ``accuracy_before`` / ``accuracy_after`` (mean over attributes, only when
    ``data`` has labels, which training never uses). ``before``/``after``: :func:`~.scoring.predict` outputs."""
    n = len(data)
    has_events = np.zeros(n, dtype=bool)
    has_events[events["row"]] = True
    if data.groups is not None:
        groups = np.asarray([str(g) for g in data.groups], dtype=object)
    else:
        groups = np.where(has_events, "images with events", "images without events").astype(object)
    multi = np.array([bool(a["multi_label"]) for a in config.attributes], dtype=bool)
    thresholds = np.array([float(a["threshold"]) for a in config.attributes])
    sizes = np.array([len(a["labels"]) for a in config.attributes])
    label_ok = np.arange(config.max_labels)[None, :] < sizes[:, None]  # (A, L)

    def answers(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = np.where(label_ok[None], probs, -np.inf).argmax(-1)  # (N, A)
        present = (probs >= thresholds[None, :, None]) & label_ok[None]  # (N, A, L)
        return top, present

    (p0, a0), (p1, a1) = before, after
    top0, set0 = answers(p0)
    top1, set1 = answers(p1)
    differs = np.where(multi[None], (set0 != set1).any(-1), top0 != top1)
    both = a0 & a1
    ev_rows, ev_attr, ev_action = events["row"], events["attr"], events["action"]
    weight = 1.0 / np.maximum(events["propensity"], propensity_floor)
    single_val = held_out & ~events["multi"]
    labelled = {}
    if data.labels is not None:
        for name, (probs, avail) in (("before", before), ("after", after)):
            records = score(probs, avail, data.labels, config, name, list(groups))
            labelled[name] = {g: summarize(records, name, g) for g in set(groups.tolist())}
            labelled[name][None] = summarize(records, name, None)

    def estimate(top: np.ndarray, sel: np.ndarray) -> float | None:
        shown_top = sel & (top[ev_rows, ev_attr] == ev_action)
        den = float(weight[shown_top].sum())
        return float((weight * events["reward"])[shown_top].sum() / den) if den > 0 else None

    def finite(value: float | None) -> float | None:
        return None if value is None or not np.isfinite(value) else float(value)

    rows = []
    for g in [*sorted(set(groups.tolist())), None]:
        in_g = np.ones(n, dtype=bool) if g is None else groups == g
        sel = in_g[ev_rows] if len(ev_rows) else np.zeros(0, dtype=bool)
        pairs = both[in_g]
        rows.append({
            "group": "all" if g is None else g,
            "images": int(in_g.sum()),
            "events": int(sel.sum()),
            "changed": float(differs[in_g][pairs].mean()) if pairs.any() else None,
            "held_out_events": int((sel & single_val).sum()),
            "estimated_before": estimate(top0, sel & single_val),
            "estimated_after": estimate(top1, sel & single_val),
            "accuracy_before": finite(labelled["before"][g]) if labelled else None,
            "accuracy_after": finite(labelled["after"][g]) if labelled else None,
        })
    return rows


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
