"""Supervised training of the fusion policy from ground-truth labels (cross-entropy / BCE, early stopping on
a validation split, temperature fitted on it afterwards, deterministic with a seed)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from ..models.fusion import CharattrFusionModel
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

logger = logging.getLogger(__name__)

__all__ = ["train_supervised"]


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
