"""The training loop shared by supervised and feedback training: options, early stopping, temperature
scaling, and the record of each training round in the policy's config."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..models.fusion import CharattrFusionModel
from .data import FusionData

logger = logging.getLogger(__name__)

__all__ = ["FusionTrainingConfig", "TrainResult", "fit_context_stats"]


@dataclass
class FusionTrainingConfig:
    """How to train a fusion policy (supervised or from feedback)."""

    max_epochs: int = field(
        default=200, metadata={"help": "Upper bound on epochs (early stopping usually ends sooner)."}
    )
    batch_size: int = field(default=256, metadata={"help": "Labelled rows per step (supervised training)."})
    feedback_batch_size: int = field(default=1024, metadata={"help": "Feedback events per step (feedback training)."})
    continued_learning_rate: float | None = field(
        default=1e-2,
        metadata={"help": "AdamW learning rate when continuing a trained policy from feedback (null in a config file: "
                          "learning_rate)."},
    )
    continued_batch_size: int = field(
        default=128,
        metadata={"help": "Feedback events per step when continuing a trained policy: a round of reviews is small, "
                  "and smaller steps let the change settle on the reviewed kind of image (see feedback.py)."},
    )
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
    anchor_weight: float = field(
        default=1.5,
        metadata={"help": "Continued feedback training: weight of keeping the policy's earlier answers on the "
                  "images without feedback (learning without forgetting; 0 = off)."},
    )
    anchor_rows: str = field(
        default="unlike_feedback",
        metadata={"help": "Which images the anchor keeps: 'unlike_feedback' (each image weighted by how unlike "
                  "the images with feedback it looks, from a classifier of the context) or 'all' (every image "
                  "without feedback alike)."},
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
        if not self.anchor_weight >= 0.0:
            raise ValueError("anchor_weight must be >= 0")
        if self.continued_learning_rate is not None and not self.continued_learning_rate > 0:
            raise ValueError("continued_learning_rate must be > 0 (or None: learning_rate)")
        if self.feedback_batch_size < 1 or self.continued_batch_size < 1 or self.batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.anchor_rows not in ("unlike_feedback", "all"):
            raise ValueError(f"anchor_rows must be 'unlike_feedback' or 'all', got {self.anchor_rows!r}")


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
