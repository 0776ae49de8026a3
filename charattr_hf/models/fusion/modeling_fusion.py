"""The learned fusion policy: which source to trust, for which kind of image.

Design (why it looks like this)
-------------------------------
Every source already outputs a probability vector per attribute. The hard part of fusion is not combining
vectors, it is knowing *when* a source is worth listening to: a tag parser is excellent where an image has
tags and silent otherwise; CLIP reads hair colour on an anime picture but guesses on a pencil sketch; some
source may be useless everywhere. So the model is a small *gating* network around a fixed, well-understood
combination rule, rather than a classifier that re-learns the attributes:

1. **Context encoder** (MLP, ``hidden_size`` 64 by default). Input: every source's probability vectors and the
   availability mask (they reveal the kind of image: e.g. the sources' art-style distributions), the decode
   stage's ``quality`` measurements (``asinh`` then standardised with statistics stored in the checkpoint), the
   ``flags`` as a multi-hot over a stored vocabulary, and optionally a projection of the CLIP image embedding.
2. **Gates**: per attribute, a softmax over the sources that have evidence for that row (masked softmax:
   a missing source gets weight exactly 0, and its values cannot influence anything).
3. **Log-linear pooling**: per attribute, ``z = sum_s gate_s * log p'_s`` (single-label) or the same on
   log-odds (multi-label, per label). For conditionally independent, calibrated sources the Bayes-optimal
   combination is exactly a sum of log-probabilities, so with the learned scale below the model can express
   "both agree, so be more sure" as well as "ignore this source here"; a linear mixture could only do the
   latter. ``p'_s = (1 - e) p_s + e / k`` mixes each source with "no idea" by a learned, context-dependent
   share ``e`` (starting at 1.8 %): a source that is sometimes simply wrong puts noise on the labels it does
   not pick, and without this the pool would read that noise as evidence (and the fitted temperature would
   then make every answer under-confident: measured on the test bed, top-label ECE 0.07-0.10 -> 0.04-0.05
   on the 11-12 label attributes).
4. **Small correction**: ``logits = scale(ctx) * (z + z @ M_a) + w(ctx) * log(sum_s gate_s p'_s) + bias(ctx)
   + b_a``, where ``M_a`` is a label-by-label matrix per attribute (systematic confusions), the second term a
   learned share of the *linear* pool (robust when one source is right and the others are not),
   ``bias(ctx)`` a context-dependent prior and ``scale(ctx) > 0`` a context-dependent sharpness. All heads
   start at zero, so an untrained model is the equal-weight geometric-mean fusion (of the lightly smoothed
   sources): a sane baseline and a sane starting point for learning from feedback.
5. **Temperature**: a per-attribute temperature divides the logits. It is fitted after training on held-out
   data (temperature scaling), which keeps the confidence columns calibrated (target ECE <= 0.05).

The whole model has a few tens of thousands of parameters; a forward pass over thousands of rows takes
milliseconds on one CPU core, so it does not slow an annotation run down.

Tensor layout: attributes have different label counts, so label tensors are padded to
``(batch, num_attributes, max_labels)``; padded entries are masked out of every softmax and loss. Use
:meth:`CharattrFusionModel.split` to get one tensor per attribute.

Pipeline columns -> model inputs: :func:`encode_columns` (the policy's "processor") lives here with the model,
so that a checkpoint and the code reading its inputs cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .card import MODEL_CARD_TEMPLATE, render_metrics_table, render_model_card
from .configuration_fusion import CharattrFusionConfig

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init  # type: ignore[assignment]

__all__ = [
    "CharattrFusionModel",
    "CharattrFusionOutput",
    "CharattrFusionPreTrainedModel",
    "encode_columns",
    "supervised_loss",
    "render_model_card",
    "render_metrics_table",
    "MODEL_CARD_TEMPLATE",
]

#: Large negative logit for padded label slots (finite, so that losses never see inf - inf).
_PAD_LOGIT = -1.0e4
#: Initial logit of the share of "no idea" mixed into each source: sigmoid(-4) ~ 1.8 %, a mild prior that any
#: source is sometimes uninformative; learned from there (per attribute and source, and per context).
_SMOOTHING_INIT = -4.0
#: Bounds of the log of the context-dependent scale: keeps early training from exploding.
_LOG_SCALE_BOUND = 4.0


# ================================================================================================ outputs
@dataclass
class CharattrFusionOutput(ModelOutput):
    """Output of :class:`CharattrFusionModel`.

    Args:
        loss: supervised loss (cross-entropy for single-label, summed binary cross-entropy over the labels of a
            multi-label attribute), averaged over the (row, attribute) pairs with a known target; only when
            ``labels`` is given.
        logits: ``(batch, num_attributes, max_labels)``, padded label slots hold a large negative value.
        probs: same shape; a distribution over labels for single-label attributes, independent presence
            probabilities for multi-label ones; 0 in padded slots.
        gate_weights: ``(batch, num_attributes, num_sources)``, how much each source was trusted (0 for a
            source without evidence; all 0 where no source has evidence).
        available: ``(batch, num_attributes)`` bool, whether any source had evidence (the fused output is only
            meaningful there; the pipeline writes null elsewhere).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    probs: torch.FloatTensor | None = None
    gate_weights: torch.FloatTensor | None = None
    available: torch.BoolTensor | None = None


# ================================================================================================ model
class CharattrFusionPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading conventions shared by fusion models."""

    config_class = CharattrFusionConfig
    base_model_prefix = "fusion"
    main_input_name = "source_probs"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """Encoder layers: small normal init. Heads and correction parameters: zero, so that an untrained
        policy is exactly the equal-weight geometric-mean fusion of the available sources."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_zero_init", False):
                _init.zeros_(module.weight)
            else:
                _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, CharattrFusionModel):
            zero = ("label_bias", "log_scale", "log_temperature", "correction", "linear_pool_weight", "quality_mean")
            for name in zero:
                tensor = getattr(module, name, None)
                if tensor is not None:
                    _init.zeros_(tensor)
            if getattr(module, "quality_std", None) is not None:
                _init.ones_(module.quality_std)
            if getattr(module, "smoothing_logit", None) is not None:
                _init.constant_(module.smoothing_logit, _SMOOTHING_INIT)


class CharattrFusionModel(CharattrFusionPreTrainedModel):
    """Context-gated log-linear pooling of per-source probabilities (see the module docstring).

    Inputs (all batched; build them from pipeline columns with :func:`encode_columns`):

    - ``source_probs``: ``(B, S, A, L)`` float, each source's vector per attribute, zero-padded; any value where
      ``source_mask`` is False is ignored.
    - ``source_mask``: ``(B, S, A)`` bool, which (source, attribute) pairs have evidence.
    - ``quality``: ``(B, Q)`` raw quality measurements; ``quality_mask``: ``(B,)`` whether they are known.
    - ``flags``: ``(B, F + 1)`` multi-hot over ``config.flag_vocab`` plus an "other" slot.
    - ``embedding``: ``(B, E)`` image embedding and ``embedding_mask`` ``(B,)``, only if ``config.embedding_dim``.
    - ``labels``: ``(B, A, L)`` float targets, ``-1`` where unknown (one-hot for single-label, 0/1 for
      multi-label); when given, ``loss`` is computed.
    """

    def __init__(self, config: CharattrFusionConfig):
        super().__init__(config)
        if config.num_attributes == 0:
            raise ValueError("the fusion config has no attributes; build it with CharattrFusionConfig.from_schema")
        S, A, L = config.num_sources, config.num_attributes, config.max_labels
        Q = len(config.quality_fields)
        context_dim = S * A + Q + 1 + config.num_flags
        if config.use_source_probs_in_context:
            context_dim += S * A * L
        if config.embedding_dim:
            self.embedding_proj = nn.Linear(config.embedding_dim, config.embedding_proj_dim)
            context_dim += config.embedding_proj_dim + 1
        else:
            self.embedding_proj = None
        layers: list[nn.Module] = []
        width = context_dim
        for _ in range(config.num_hidden_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.GELU(), nn.Dropout(config.hidden_dropout_prob)]
            width = config.hidden_size
        self.encoder = nn.Sequential(*layers)
        self.gate_head = nn.Linear(config.hidden_size, A * S)
        self.scale_head = nn.Linear(config.hidden_size, A)
        self.bias_head = nn.Linear(config.hidden_size, A * L)
        self.linear_pool_head = nn.Linear(config.hidden_size, A) if config.use_linear_pool else None
        self.smoothing_head = nn.Linear(config.hidden_size, A * S)
        for head in (self.gate_head, self.scale_head, self.bias_head, self.linear_pool_head, self.smoothing_head):
            if head is not None:
                head._zero_init = True
        self.label_bias = nn.Parameter(torch.zeros(A, L))
        self.log_scale = nn.Parameter(torch.zeros(A))
        self.linear_pool_weight = nn.Parameter(torch.zeros(A)) if config.use_linear_pool else None
        self.log_temperature = nn.Parameter(torch.zeros(A))
        # How much each source is mixed with "no idea" before pooling (logit of the share; starts near 0).
        self.smoothing_logit = nn.Parameter(torch.full((A, S), _SMOOTHING_INIT))
        self.correction = nn.Parameter(torch.zeros(A, L, L)) if config.use_correction else None
        # Context normalisation statistics: part of the checkpoint (persistent buffers), set by training.
        self.register_buffer("quality_mean", torch.zeros(Q))
        self.register_buffer("quality_std", torch.ones(Q))
        self.context_dim = context_dim
        self._static_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.post_init()

    # ------------------------------------------------------------------ static masks
    def _static(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``label_mask (A, L)`` and ``multi_label (A,)``, derived from the config (not stored in the weights)."""
        key = str(device)
        if key not in self._static_cache:
            with torch.inference_mode(False):  # plain tensors, usable later with autograd
                self._static_cache[key] = self._build_static(device)
        return self._static_cache[key]

    def _build_static(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        label_mask = torch.zeros(cfg.num_attributes, cfg.max_labels, dtype=torch.bool)
        for i, attr in enumerate(cfg.attributes):
            label_mask[i, : len(attr["labels"])] = True
        multi = torch.tensor([bool(a["multi_label"]) for a in cfg.attributes], dtype=torch.bool)
        return label_mask.to(device), multi.to(device)

    # ------------------------------------------------------------------ helpers
    def set_context_normalization(self, quality_mean: Sequence[float], quality_std: Sequence[float]) -> None:
        """Store the statistics of ``asinh(quality)`` on the training data (part of the checkpoint)."""
        mean = torch.as_tensor(np.asarray(quality_mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(quality_std, dtype=np.float32)).clamp_min(1e-3)
        if mean.shape != self.quality_mean.shape or std.shape != self.quality_std.shape:
            raise ValueError(f"expected {tuple(self.quality_mean.shape)} statistics, got {tuple(mean.shape)}")
        with torch.no_grad():
            self.quality_mean.copy_(mean)
            self.quality_std.copy_(std)

    def split(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, A, L)`` padded tensor -> ``{attribute: (B, num_labels)}``."""
        return {a["name"]: tensor[:, i, : len(a["labels"])] for i, a in enumerate(self.config.attributes)}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        source_probs: torch.Tensor,
        source_mask: torch.Tensor,
        quality: torch.Tensor | None = None,
        quality_mask: torch.Tensor | None = None,
        flags: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,
        embedding_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> CharattrFusionOutput | tuple:
        cfg = self.config
        B, S, A, L = source_probs.shape
        if (S, A, L) != (cfg.num_sources, cfg.num_attributes, cfg.max_labels):
            raise ValueError(
                f"source_probs has shape {tuple(source_probs.shape)}, expected (batch, {cfg.num_sources}, "
                f"{cfg.num_attributes}, {cfg.max_labels}) for sources {cfg.sources}"
            )
        device = source_probs.device
        dtype = self.label_bias.dtype
        label_mask, multi = self._static(device)
        mask = source_mask.to(torch.bool)  # (B, S, A)
        valid = mask[..., None] & label_mask[None, None]  # (B, S, A, L)
        probs_in = torch.where(valid, source_probs.to(dtype), torch.zeros((), dtype=dtype, device=device))

        # -- context
        parts = [mask.to(dtype).flatten(1)]
        if cfg.use_source_probs_in_context:
            parts.insert(0, probs_in.flatten(1))
        Q = len(cfg.quality_fields)
        if quality is None:
            quality = torch.zeros(B, Q, dtype=dtype, device=device)
            quality_mask = torch.zeros(B, dtype=torch.bool, device=device)
        elif quality_mask is None:
            quality_mask = torch.isfinite(quality).all(-1)
        qmask = quality_mask.to(dtype)[:, None]
        q = torch.nan_to_num(quality.to(dtype), nan=0.0, posinf=0.0, neginf=0.0)
        q = ((torch.asinh(q) - self.quality_mean) / self.quality_std).clamp(-5.0, 5.0) * qmask
        parts += [q, qmask]
        if flags is None:
            flags = torch.zeros(B, cfg.num_flags, dtype=dtype, device=device)
        parts.append(flags.to(dtype))
        if self.embedding_proj is not None:
            if embedding is None:
                embedding = torch.zeros(B, cfg.embedding_dim, dtype=dtype, device=device)
                embedding_mask = torch.zeros(B, dtype=torch.bool, device=device)
            elif embedding_mask is None:
                embedding_mask = torch.ones(B, dtype=torch.bool, device=device)
            emask = embedding_mask.to(dtype)[:, None]
            # CLIP embeddings are unit-norm: scale entries to unit variance before the projection.
            emb = torch.nan_to_num(embedding.to(dtype)) * math.sqrt(cfg.embedding_dim) * emask
            parts += [self.embedding_proj(emb), emask]
        hidden = self.encoder(torch.cat(parts, dim=-1))

        # -- per-source evidence in log space (log-prob for single-label, log-odds for multi-label), after
        #    mixing each source with "no idea" (uniform / 0.5) by a learned, context-dependent amount
        smooth_logit = self.smoothing_logit.t()[None] + self.smoothing_head(hidden).view(B, A, S).transpose(1, 2)
        eps = torch.sigmoid(smooth_logit)[..., None]  # (B, S, A, 1)
        uniform = torch.where(multi[:, None], 0.5, 1.0 / label_mask.sum(-1, keepdim=True).to(dtype))  # (A, 1)
        floor = cfg.prob_floor
        clipped = ((1.0 - eps) * probs_in + eps * uniform).clamp(floor, 1.0 - floor)
        log_p = torch.log(clipped)
        evidence = torch.where(multi[None, None, :, None], log_p - torch.log1p(-clipped), log_p)
        evidence = torch.where(valid, evidence, torch.zeros((), dtype=dtype, device=device))

        # -- gates: masked softmax over the sources with evidence
        gate_logits = self.gate_head(hidden).view(B, A, S).transpose(1, 2)  # (B, S, A)
        gate_logits = gate_logits.masked_fill(~mask, float("-inf"))
        available = mask.any(1)  # (B, A)
        gates = torch.softmax(gate_logits, dim=1)
        gates = torch.where(mask, gates, torch.zeros((), dtype=dtype, device=device))  # NaN-free where none

        # -- pooling, correction, scale, temperature
        pooled = (gates[..., None] * evidence).sum(1)  # (B, A, L)
        if self.correction is not None:
            pooled = pooled + torch.einsum("bal,alm->bam", pooled, self.correction)
        log_scale = (self.scale_head(hidden) + self.log_scale).clamp(-_LOG_SCALE_BOUND, _LOG_SCALE_BOUND)
        logits = torch.exp(log_scale)[..., None] * pooled
        if self.linear_pool_head is not None:
            mixture = (gates[..., None] * clipped).sum(1).clamp(floor, 1.0 - floor)  # (B, A, L)
            log_mix = torch.log(mixture)
            log_mix = torch.where(multi[None, :, None], log_mix - torch.log1p(-mixture), log_mix)
            weight = self.linear_pool_head(hidden) + self.linear_pool_weight  # (B, A)
            logits = logits + weight[..., None] * log_mix
        logits = logits + self.bias_head(hidden).view(B, A, L) + self.label_bias
        logits = logits / torch.exp(self.log_temperature)[None, :, None]
        logits = logits.masked_fill(~label_mask[None], _PAD_LOGIT)

        soft = torch.softmax(logits, dim=-1)
        probs = torch.where(multi[None, :, None], torch.sigmoid(logits), soft) * label_mask[None]

        loss = None
        if labels is not None:
            loss = supervised_loss(logits, labels.to(dtype), available, label_mask, multi)
        out = CharattrFusionOutput(
            loss=loss, logits=logits, probs=probs, gate_weights=gates.transpose(1, 2), available=available
        )
        if return_dict is False:
            return out.to_tuple()
        return out

    # ------------------------------------------------------------------ pipeline convenience
    @torch.no_grad()
    def fuse_columns(
        self, columns: Mapping[str, Sequence], batch_size: int = 4096
    ) -> dict[str, list[np.ndarray | None]]:
        """Fused vectors for a batch of pipeline rows: ``{attribute: [vector or None per row]}``.

        ``None`` where no source had evidence for that attribute (same convention as the fixed fusion rules).
        """
        was_training = self.training
        self.eval()
        try:
            inputs = encode_columns(columns, self.config)
            n = inputs["source_probs"].shape[0]
            device = self.label_bias.device
            probs_chunks, avail_chunks = [], []
            for start in range(0, n, batch_size):
                chunk = {k: torch.from_numpy(v[start : start + batch_size]).to(device) for k, v in inputs.items()}
                out = self(**chunk)
                probs_chunks.append(out.probs.float().cpu().numpy())
                avail_chunks.append(out.available.cpu().numpy())
        finally:
            self.train(was_training)
        probs = np.concatenate(probs_chunks) if probs_chunks else np.zeros((0, self.config.num_attributes, 1))
        avail = np.concatenate(avail_chunks) if avail_chunks else np.zeros((0, self.config.num_attributes), bool)
        result: dict[str, list[np.ndarray | None]] = {}
        for i, attr in enumerate(self.config.attributes):
            k = len(attr["labels"])
            result[attr["name"]] = [probs[r, i, :k].astype(np.float64) if avail[r, i] else None for r in range(n)]
        return result

    # ------------------------------------------------------------------ saving and publishing
    def weights_fingerprint(self) -> str:
        """Hash of the weights and config (stable across processes): identifies exactly this policy."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.to_diff_dict(), sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save_pretrained(
        self,
        save_directory: str | Path,
        *args: Any,
        write_model_card: bool = True,
        model_card_id: str | None = None,
        card_tags: Sequence[str] = (),
        **kwargs: Any,
    ):
        """``PreTrainedModel.save_pretrained`` (safetensors + config.json) plus a rendered ``README.md``.

        The card is the packaged template rendered by :func:`~.card.render_model_card` from the config
        (attributes, sources, training rounds, measured ``eval_results``, which also go into its ``model-index``
        so the Hub shows them; ``card_tags`` are added to its Hub tags). ``push_to_hub=True`` is routed to :meth:`push_to_hub` so that the card is
        the one that gets published.
        """
        push = kwargs.pop("push_to_hub", False)
        repo_id = kwargs.pop("repo_id", None)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if write_model_card and kwargs.get("is_main_process", True):
            card = render_model_card(self.config, model_id=model_card_id or repo_id, tags=card_tags)
            Path(save_directory, "README.md").write_text(card, encoding="utf-8")
        if push:
            self.push_to_hub(repo_id or Path(save_directory).name, token=kwargs.get("token"))
        return result

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ):
        """Publish weights, config and the rendered model card (as ``README.md``) in one commit.

        Overrides the transformers default, which would replace the card by a generic one.
        Returns the ``CommitInfo`` of the upload.
        """
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size, model_card_id=repo_id, card_tags=tags or ())
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                repo_type="model",
                revision=revision,
                commit_message=commit_message or "Upload charattr fusion policy",
                commit_description=commit_description,
                create_pr=create_pr,
            )


# ================================================================================================ loss
def supervised_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    available: torch.Tensor,
    label_mask: torch.Tensor,
    multi: torch.Tensor,
) -> torch.Tensor:
    """Mean over known (row, attribute) pairs of: cross-entropy (single-label, soft targets allowed) or the
    sum over labels of binary cross-entropy (multi-label: the log-likelihood of the whole label set, so a
    multi-label attribute weighs as one decision per row, like a single-label one).

    Pairs where no source had evidence are skipped: the policy is not asked to answer there.
    """
    known = (labels >= 0) & label_mask[None]
    target = labels.clamp(0.0, 1.0)
    log_soft = torch.log_softmax(logits, dim=-1)
    ce = -(torch.where(known, target * log_soft, torch.zeros_like(log_soft))).sum(-1)
    bce_all = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = torch.where(known, bce_all, torch.zeros_like(bce_all)).sum(-1)
    per_pair = torch.where(multi[None], bce, ce)
    has_target = known.any(-1) & available
    if not bool(has_target.any()):
        return logits.sum() * 0.0
    return per_pair[has_target].mean()


# ================================================================================================ inputs
def encode_columns(columns: Mapping[str, Sequence], config: CharattrFusionConfig) -> dict[str, np.ndarray]:
    """Pipeline columns of a batch -> numpy model inputs (see :class:`CharattrFusionModel`).

    Reads ``probs_<source>`` (struct of per-attribute vectors or null), ``quality`` (struct), ``flags``
    (list of str) and, when the policy uses it, ``embedding``. Missing columns or null cells become zeros with
    a false mask, so a row with a failed decode or a source that was not run is still handled.
    """
    n = _num_rows(columns)
    S, A, L = config.num_sources, config.num_attributes, config.max_labels
    names = config.attribute_names
    sizes = [len(a["labels"]) for a in config.attributes]
    source_probs = np.zeros((n, S, A, L), dtype=np.float32)
    source_mask = np.zeros((n, S, A), dtype=bool)
    for s, source in enumerate(config.sources):
        col = columns.get(f"probs_{source}")
        if col is None:
            continue
        for r, cell in enumerate(col):
            if not cell:
                continue
            for a, name in enumerate(names):
                vec = cell.get(name)
                if vec is None:
                    continue
                if len(vec) != sizes[a]:
                    raise ValueError(
                        f"probs_{source}.{name} has {len(vec)} values in row {r}, the policy expects {sizes[a]} "
                        f"(labels {config.attributes[a]['labels']})"
                    )
                source_probs[r, s, a, : sizes[a]] = vec
                source_mask[r, s, a] = True
    bad = ~np.isfinite(source_probs)
    if bad.any():  # a NaN vector is no evidence
        source_mask &= ~bad.any(-1)
        source_probs[bad] = 0.0

    fields = config.quality_fields
    quality = np.zeros((n, len(fields)), dtype=np.float32)
    quality_mask = np.zeros(n, dtype=bool)
    qcol = columns.get("quality")
    if qcol is not None:
        for r, cell in enumerate(qcol):
            if not cell:
                continue
            values = [cell.get(f) for f in fields]
            if all(v is not None and math.isfinite(v) for v in values):
                quality[r] = values
                quality_mask[r] = True

    vocab = {f: i for i, f in enumerate(config.flag_vocab)}
    flags = np.zeros((n, config.num_flags), dtype=np.float32)
    fcol = columns.get("flags")
    if fcol is not None:
        other = config.num_flags - 1
        for r, row_flags in enumerate(fcol):
            for flag in row_flags or ():
                flags[r, vocab.get(flag, other)] = 1.0

    inputs = {
        "source_probs": source_probs,
        "source_mask": source_mask,
        "quality": quality,
        "quality_mask": quality_mask,
        "flags": flags,
    }
    if config.embedding_dim:
        emb = np.zeros((n, config.embedding_dim), dtype=np.float32)
        emask = np.zeros(n, dtype=bool)
        ecol = columns.get("embedding")
        if ecol is not None:
            for r, vec in enumerate(ecol):
                if vec is None:
                    continue
                if len(vec) != config.embedding_dim:
                    raise ValueError(f"embedding has {len(vec)} values in row {r}, expected {config.embedding_dim}")
                emb[r] = vec
                emask[r] = True
        inputs["embedding"] = emb
        inputs["embedding_mask"] = emask
    return inputs


def _num_rows(columns: Mapping[str, Sequence]) -> int:
    for value in columns.values():
        return len(value)
    return 0
