"""Training a small CLIP that knows the synthetic domain, and measuring it the way the pipeline uses it.

The shipped ``demo`` model (``charattr_hf/assets/demo-clip``) is produced by ``recipes/train_demo_clip.py``
with this library. It is a demonstration of the annotation pipeline that needs no download: it recognises
the procedural characters of :mod:`charattr_hf.synthetic` and nothing else.

What is here, and why:

- :data:`DEMO_MODEL_CFG`: an open_clip model config. Image tower: open_clip's ``ModifiedResNet`` (CLIP's
  ResNet) at 64 px, one bottleneck per stage, stem width 16 (1.4M parameters); text tower: width 128,
  4 layers, context 32; embedding 128. On this 2-core CPU it trains at about 400 images/s, twice the speed
  of the ViT first tried (64 px, patch 8, width 128, 4 layers: its image tower alone is 3x slower), and
  in the same number of steps it learned colours and hair length further. It keeps open_clip's default
  ``SimpleTokenizer``
  (vocabulary 49,408), which ships inside open_clip and works offline: the token table is 6.3M of the
  8.5M parameters (17 MB in fp16).
- :class:`ImagePool` / :func:`build_pool`: images are drawn once before training (about 2,000 per second
  per core) and kept as uint8 arrays with their labels; drawing them per step would cost more than the
  model's forward pass. Captions are drawn fresh for every step (:func:`synthetic.describe`, two per
  image by default), so one image is seen with many phrasings; token ids are cached per caption text
  (:class:`CaptionTokenizer`) and the text tower runs on length buckets (:func:`encode_text_bucketed`).
- :func:`caption_targets` / :func:`multi_positive_clip_loss`: the contrastive target is *multi-positive*.
  A short caption such as "long hair" is true of many images of a batch; the standard CLIP loss would
  push all but one of them away (false negatives), which stalled attributes that captions mention
  briefly. Here every image that a caption's facts describe is a positive of that caption, and the
  target distribution of a row (or column) spreads evenly over its positives.
- Sketches hide colours (every region is drawn in a random gray), so colour facts about a sketch are
  *unknown*, neither true nor false. Such image/caption pairs are left out of the contrastive softmax
  (masked), so the model is never asked to guess colours from gray pixels. Masking alone gives no reason
  for the colour scores of a sketch to be flat, so :func:`uniform_colour_loss` adds
  ``KL(uniform || p)`` on the pipeline's own colour label distributions for sketch images, where ``p`` is
  computed exactly as :class:`~charattr_hf.sources.clip.stage.ClipZeroShot` computes it (prompt-ensemble label
  embeddings of the schema, softmax of ``logit_scale * cosine``): "cannot tell" becomes an explicit,
  flat output that a fusion policy can hand over to the tags (which know the colours). It targets the
  exact quantity the pipeline reports, for the prompts it uses; pairing sketches with every colour
  caption instead would also tie the *caption* embeddings of colours to the sketch look.
- :class:`AttributeHead` (training only, not saved): a linear classifier of every attribute on the image
  embedding. Without it the contrastive signal taught colours, hair length, style and hats within
  800 steps but left expression, glasses and scarves at chance (even with :func:`prompt_loss`): at first
  the text tower embeds "smiling" and "sad" almost alike, so the gradient toward those small cues is tiny.
  With it they are learned after about 600 steps; zero-shot scoring still goes through the text tower.
- :func:`prompt_loss` (off for the shipped model): cross-entropy of the pipeline's zero-shot scores with
  the schema's prompts. It makes confidences match accuracy, at the price of training on the evaluation
  prompts; the shipped model does without it, so its accuracy is zero-shot in the usual sense.
- :func:`evaluate_zero_shot`: runs :class:`~charattr_hf.stages.decode.DecodeStage` and
  :class:`~charattr_hf.sources.clip.stage.ClipZeroShot` (the pipeline's stages, unchanged) on freshly generated
  images of each style, and reports accuracy and confidence per attribute, per-label F1 for multi-label
  attributes; :func:`format_results` prints them as a table.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import synthetic
from .markdown import markdown_table
from .metrics import core as metrics_core
from .schema import Schema, load_schema

__all__ = [
    "DEMO_MODEL_CFG",
    "DEMO_PREPROCESS_CFG",
    "COLOUR_ATTRIBUTES",
    "ImagePool",
    "build_pool",
    "CaptionTokenizer",
    "CaptionBatch",
    "sample_captions",
    "caption_targets",
    "multi_positive_clip_loss",
    "multi_positive_loss",
    "PromptBank",
    "uniform_colour_loss",
    "prompt_loss",
    "prompt_logits",
    "truth_loss",
    "batch_accuracy",
    "AttributeHead",
    "build_model",
    "encode_text_bucketed",
    "ContrastiveForward",
    "save_model",
    "evaluate_zero_shot",
    "format_results",
    "single_label_mean",
]

#: The demo model's architecture (open_clip ``model_cfg``): about 8.5M parameters, 17 MB in fp16.
DEMO_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}

#: Eval preprocessing stored with the model (open_clip's ``preprocess_cfg``): OpenAI mean/std, as open_clip.
DEMO_PREPROCESS_CFG: dict[str, Any] = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}

#: Attributes whose evidence is colour only: unknowable in sketches.
COLOUR_ATTRIBUTES: tuple[str, ...] = ("hair_color", "eye_color", "top_color")

_SKETCH = synthetic.STYLES.index("sketch")


# ---------------------------------------------------------------------------------------------- image pool
@dataclass
class ImagePool:
    """Pre-drawn training images with their attributes, as arrays indexed by pool position.

    ``labels[:, k]`` is the label index (in ``schema``) of the k-th single-label attribute
    (``single_attrs[k]``); ``accessories[:, m]`` says whether the m-th label of the multi-label attribute
    is present. ``characters`` are kept to draw captions.
    """

    pixels: np.ndarray  # (N, H, W, 3) uint8
    styles: np.ndarray  # (N,) int8, index into synthetic.STYLES
    labels: np.ndarray  # (N, A) int16
    accessories: np.ndarray  # (N, M) bool
    characters: list[synthetic.Character]
    single_attrs: tuple[str, ...]
    multi_attr: str

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def is_sketch(self) -> np.ndarray:
        return self.styles == _SKETCH


def _draw_items(args: tuple[int, int, int, int, tuple[str, ...]]) -> tuple[np.ndarray, list, list]:
    """Worker: items ``start..stop`` of ``seed``, drawn exactly as :func:`synthetic.make_item` draws them."""
    seed, start, stop, size, styles = args
    pixels = np.empty((stop - start, size, size, 3), dtype=np.uint8)
    chars, picked = [], []
    for k, index in enumerate(range(start, stop)):
        rng = synthetic.item_rng(seed, index, 0)
        ch = synthetic.sample_attributes(rng)
        style = styles[0] if len(styles) == 1 else styles[int(rng.integers(len(styles)))]
        img = synthetic.render(ch, style, synthetic.item_rng(seed, index, 1), size)
        pixels[k] = np.asarray(img, dtype=np.uint8)
        chars.append(ch)
        picked.append(style)
    return pixels, chars, picked


def build_pool(
    n: int,
    seed: int,
    size: int = 64,
    styles: Sequence[str] | None = None,
    num_proc: int = 1,
    start: int = 0,
    schema: Schema | str | None = "synthetic",
) -> ImagePool:
    """Draw items ``start .. start + n`` of ``seed`` (the same characters as ``synthetic.generate``).

    ``num_proc > 1`` draws in worker processes (fork on Linux: call this before torch starts its thread
    pools; the workers use PIL and numpy only).
    """
    schema = load_schema(schema)
    styles = tuple(styles or synthetic.STYLES)
    for s in styles:
        if s not in synthetic.STYLES:
            raise ValueError(f"unknown style {s!r}; styles: {list(synthetic.STYLES)}")
    if n <= 0:
        raise ValueError(f"the pool needs at least one image, got n={n}")
    chunk = 512
    jobs = [(int(seed), a, min(a + chunk, start + n), int(size), styles) for a in range(start, start + n, chunk)]
    if num_proc > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(min(num_proc, len(jobs))) as workers:
            parts = workers.map(_draw_items, jobs)
    else:
        parts = [_draw_items(job) for job in jobs]
    pixels = np.concatenate([p[0] for p in parts])
    chars = [c for p in parts for c in p[1]]
    style_names = [s for p in parts for s in p[2]]

    single = tuple(a.name for a in schema if not a.multi_label)
    multi = [a for a in schema if a.multi_label]
    if len(multi) != 1:
        raise ValueError(f"expected one multi-label attribute in schema {schema.name!r}, found {len(multi)}")
    acc_attr = multi[0]
    labels = np.empty((n, len(single)), dtype=np.int16)
    accessories = np.zeros((n, acc_attr.num_labels), dtype=bool)
    for i, (ch, style) in enumerate(zip(chars, style_names)):
        names = ch.labels(style)
        for k, attr in enumerate(single):
            labels[i, k] = schema[attr].index(names[attr])
        for lab in names[acc_attr.name]:
            accessories[i, acc_attr.index(lab)] = True
    styles_idx = np.array([synthetic.STYLES.index(s) for s in style_names], dtype=np.int8)
    return ImagePool(pixels, styles_idx, labels, accessories, chars, single, acc_attr.name)


# ---------------------------------------------------------------------------------------------- captions
class CaptionTokenizer:
    """open_clip tokenizer with a cache per caption text (captions repeat a lot: "long hair", ...)."""

    def __init__(self, context_length: int, max_cache: int = 500_000):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer(context_length=context_length)
        self.context_length = int(context_length)
        self.max_cache = int(max_cache)
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            ids = self.tokenizer(missing).numpy().astype(np.int32)
            if len(self._cache) + len(missing) > self.max_cache:
                self._cache.clear()
            for t, row in zip(missing, ids):
                self._cache[t] = row
        return np.stack([self._cache[t] for t in texts])

    def fits(self, text: str) -> bool:
        """Whether ``text`` fits the context without truncation (start and end tokens included)."""
        return len(self.tokenizer.encode(text)) + 2 <= self.context_length


@dataclass
class CaptionBatch:
    """Captions of one batch: ``texts[j]`` describes image ``j``; ``facts[j]`` what it asserts."""

    texts: list[str]
    facts: list[tuple[tuple[str, str, bool], ...]]


def sample_captions(
    pool: ImagePool, index: np.ndarray, rng: np.random.Generator, tokenizer: CaptionTokenizer | None = None
) -> CaptionBatch:
    """A fresh caption for each image ``index[j]``; captions that would be truncated are redrawn."""
    texts, facts = [], []
    for i in index:
        ch = pool.characters[int(i)]
        style = synthetic.STYLES[int(pool.styles[int(i)])]
        for _ in range(20):
            cap = synthetic.describe(ch, style, rng)
            if tokenizer is None or tokenizer.fits(cap.text):
                break
        texts.append(cap.text)
        facts.append(cap.facts)
    return CaptionBatch(texts, facts)


def caption_targets(
    pool: ImagePool, index: np.ndarray, captions: CaptionBatch, schema: Schema
) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, unknown)``, two (images x captions) boolean matrices for the batch ``index``.

    ``positive[i, j]``: every fact of caption ``j`` is true of image ``i`` (and visible in it).
    ``unknown[i, j]``: image ``i`` is a sketch, caption ``j`` states a colour, and all its other facts are
    true: whether it describes the image cannot be seen, so the pair is left out of the loss.
    A caption with a false non-colour fact is a negative of a sketch, as of any image.
    """
    single_col = {name: k for k, name in enumerate(pool.single_attrs)}
    multi = schema[pool.multi_attr]
    n_cap = len(captions.texts)
    # requirements per caption: -1 = not stated
    req = np.full((n_cap, len(pool.single_attrs)), -1, dtype=np.int16)
    req_acc = np.full((n_cap, multi.num_labels), -1, dtype=np.int8)
    has_colour = np.zeros(n_cap, dtype=bool)
    for j, facts in enumerate(captions.facts):
        for attr, label, positive in facts:
            if attr == pool.multi_attr:
                req_acc[j, multi.index(label)] = 1 if positive else 0
            else:
                req[j, single_col[attr]] = schema[attr].index(label)
                has_colour[j] |= attr in COLOUR_ATTRIBUTES
    labels = pool.labels[index]  # (B, A)
    acc = pool.accessories[index].astype(np.int8)  # (B, M)
    sketch = pool.is_sketch[index]  # (B,)
    colour_cols = np.array([a in COLOUR_ATTRIBUTES for a in pool.single_attrs])

    match = (req[None, :, :] < 0) | (labels[:, None, :] == req[None, :, :])  # (B, C, A)
    acc_ok = ((req_acc[None, :, :] < 0) | (acc[:, None, :] == req_acc[None, :, :])).all(-1)  # (B, C)
    shape_ok = match[:, :, ~colour_cols].all(-1) & acc_ok
    colour_ok = match[:, :, colour_cols].all(-1)
    unknown = sketch[:, None] & has_colour[None, :] & shape_ok
    positive = shape_ok & np.where(sketch[:, None], ~has_colour[None, :], colour_ok)
    return positive, unknown


# ---------------------------------------------------------------------------------------------- losses
def multi_positive_clip_loss(image_emb, text_emb, logit_scale, positive, unknown=None):
    """Symmetric InfoNCE with soft targets spread over all positives; ``unknown`` pairs are masked out.

    ``image_emb``/``text_emb``: unit vectors (B, D) and (C, D); ``positive``/``unknown``: bool (B, C)
    tensors. Every row and column needs at least one positive (caption ``j`` of image ``j`` is one).
    """
    return multi_positive_loss(logit_scale * image_emb @ text_emb.T, positive, unknown)


def multi_positive_loss(logits, positive, unknown=None):
    """:func:`multi_positive_clip_loss` on a (B, C) logit matrix: the mean of the image-to-text (rows) and
    text-to-image (columns) cross-entropies against targets uniform over each row's/column's positives."""
    if unknown is not None:
        logits = logits.masked_fill(unknown, float("-inf"))
    pos = positive.to(logits.dtype)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    # where() keeps the -inf of masked entries out of the sums (0 * -inf would be nan)
    i2t = -torch.where(positive, torch.log_softmax(logits, dim=1), zero).sum(1) / pos.sum(1).clamp_min(1)
    t2i = -torch.where(positive, torch.log_softmax(logits, dim=0), zero).sum(0) / pos.sum(0).clamp_min(1)
    return 0.5 * (i2t.mean() + t2i.mean())


class PromptBank:
    """The schema's prompts, tokenised once, turned into label embeddings on demand exactly as
    :class:`~charattr_hf.sources.clip.stage.ClipZeroShot` builds them
    (:func:`charattr_hf.sources.clip.model.label_embeddings`: mean of the unit embeddings of a label's prompts,
    renormalised; multi-label attributes get each label's negative prompts after the labels)."""

    def __init__(self, schema: Schema, attributes: Sequence[str] | None, tokenizer: CaptionTokenizer):
        self.schema = schema
        self.attributes = tuple(a.name for a in schema) if attributes is None else tuple(attributes)
        prompts: list[str] = []
        self.groups: list[list[tuple[int, int]]] = []
        for name in self.attributes:
            attr = schema[name]
            sets = [lab.prompts for lab in attr.labels]
            if attr.multi_label:
                sets += [lab.negative_prompts for lab in attr.labels]
            groups = []
            for ps in sets:
                groups.append((len(prompts), len(prompts) + len(ps)))
                prompts.extend(ps)
            self.groups.append(groups)
        self.prompts = prompts
        self.tokens = tokenizer(prompts) if prompts else np.zeros((0, tokenizer.context_length), np.int32)

    def label_embeddings(self, prompt_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per attribute, a (num_labels, D) tensor of unit label embeddings ((2 * num_labels, D) for
        multi-label: labels, then their negatives), from the unit text embeddings of :attr:`prompts` (in
        order; computed in the training forward pass, so gradients flow)."""
        out = {}
        for name, groups in zip(self.attributes, self.groups):
            means = torch.stack([prompt_emb[a:b].mean(0) for a, b in groups])
            out[name] = means / means.norm(dim=-1, keepdim=True)
        return out


def uniform_colour_loss(image_emb: torch.Tensor, label_embs: Sequence[torch.Tensor], logit_scale) -> torch.Tensor:
    """Mean over attributes of ``KL(uniform || softmax(logit_scale * image @ labels.T))`` (image rows
    averaged). Zero when every label is equally likely; grows as soon as one label is ruled out."""
    total = image_emb.new_zeros(())
    for lab in label_embs:
        logp = torch.log_softmax(logit_scale * image_emb @ lab.T, dim=-1)
        total = total + (-logp.mean(-1) - math.log(lab.shape[0])).mean()
    return total / max(len(label_embs), 1)


def truth_loss(
    logits: Mapping[str, torch.Tensor], pool: ImagePool, index: np.ndarray, schema: Schema
) -> torch.Tensor:
    """Loss of per-attribute logits against the truth of images ``index``: cross-entropy for single-label
    attributes ((B, num_labels) logits), binary cross-entropy per label for multi-label ones ((B,
    num_labels) presence logits). Colour attributes of sketches are skipped (unknowable; see
    :func:`uniform_colour_loss`). Averaged over the attributes given."""
    terms = []
    for name, lg in logits.items():
        device = lg.device
        if schema[name].multi_label:
            target = torch.from_numpy(pool.accessories[index]).to(device, lg.dtype)
            terms.append(torch.nn.functional.binary_cross_entropy_with_logits(lg, target))
            continue
        target = torch.from_numpy(pool.labels[index, pool.single_attrs.index(name)].astype(np.int64)).to(device)
        ce = torch.nn.functional.cross_entropy(lg, target, reduction="none")
        if name in COLOUR_ATTRIBUTES:
            keep = torch.from_numpy(~pool.is_sketch[index]).to(device)
            ce = ce[keep] if bool(keep.any()) else ce.new_zeros(1)
        terms.append(ce.mean())
    if not terms:
        raise ValueError("no attributes to score")
    return torch.stack(terms).mean()


@torch.no_grad()
def batch_accuracy(
    logits: Mapping[str, torch.Tensor], pool: ImagePool, index: np.ndarray, schema: Schema
) -> dict[str, float]:
    """Training-batch accuracy per attribute of :func:`truth_loss`-style logits (progress reports).
    Multi-label: the fraction of (image, label) decisions right at logit 0. Sketch colours are skipped."""
    out = {}
    for name, lg in logits.items():
        if schema[name].multi_label:
            pred = (lg > 0).cpu().numpy()
            out[name] = float((pred == pool.accessories[index]).mean())
            continue
        pred = lg.argmax(-1).cpu().numpy()
        ok = pred == pool.labels[index, pool.single_attrs.index(name)]
        if name in COLOUR_ATTRIBUTES:
            ok = ok[~pool.is_sketch[index]]
        out[name] = float(ok.mean()) if ok.size else float("nan")
    return out


def prompt_logits(
    image_emb: torch.Tensor, label_embs: Mapping[str, torch.Tensor], logit_scale, schema: Schema
) -> dict[str, torch.Tensor]:
    """The pipeline's zero-shot logits: ``logit_scale * cos`` per label (softmax over them gives
    :class:`ClipZeroShot`'s probabilities); multi-label: ``logit_scale * (cos_pos - cos_neg)`` (its sigmoid)."""
    out = {}
    for name, lab in label_embs.items():
        lg = logit_scale * image_emb @ lab.T
        if schema[name].multi_label:
            k = schema[name].num_labels
            lg = lg[:, :k] - lg[:, k:]
        out[name] = lg
    return out


def prompt_loss(
    image_emb: torch.Tensor,
    label_embs: Mapping[str, torch.Tensor],
    logit_scale,
    pool: ImagePool,
    index: np.ndarray,
    schema: Schema,
) -> torch.Tensor:
    """:func:`truth_loss` of the pipeline's own zero-shot scores (:func:`prompt_logits`)."""
    return truth_loss(prompt_logits(image_emb, label_embs, logit_scale, schema), pool, index, schema)


class AttributeHead(torch.nn.Module):
    """A linear classifier of every attribute on the unit image embedding, used during training only.

    It teaches the small image tower the fine cues (mouth shape, glasses, scarf) that the contrastive
    signal does not bootstrap within a CPU budget: at first the text tower embeds "smiling" and "sad" (or
    "wearing a scarf" and "without a scarf") almost alike, so the contrastive gradient toward those cues is
    tiny, while a linear head has independent weights from the first step. The head is not saved; the
    embedding it shapes is what zero-shot scoring reads.
    """

    def __init__(self, embed_dim: int, schema: Schema):
        super().__init__()
        self.names = [a.name for a in schema]
        self.sizes = [a.num_labels for a in schema]
        self.linear = torch.nn.Linear(embed_dim, sum(self.sizes))

    def forward(self, image_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        # unit vectors scaled to unit variance per dimension: with raw unit vectors the logits start tiny
        # and the head (and the cues it teaches) learns several times slower
        x = image_emb * math.sqrt(image_emb.shape[-1])
        return dict(zip(self.names, torch.split(self.linear(x), self.sizes, dim=-1)))


# ---------------------------------------------------------------------------------------------- model
def build_model(model_cfg: Mapping[str, Any] | None = None, seed: int = 0):
    """A randomly initialised open_clip ``CLIP`` from ``model_cfg`` (default :data:`DEMO_MODEL_CFG`)."""
    from open_clip.model import CLIP

    cfg = json.loads(json.dumps(dict(model_cfg or DEMO_MODEL_CFG)))
    torch.manual_seed(seed)
    return CLIP(**cfg)


def encode_text_bucketed(model, tokens: torch.Tensor, bucket: int = 128, normalize: bool = True) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on length-sorted buckets, each cut to its longest sequence.

    The text tower is causal and pools at the end token, so positions after a sequence's end token never
    change its embedding: cutting them away gives the same result (to float rounding) at a fraction of
    the cost (median caption: 13 of 32 positions; prompts: under 10).
    """
    from open_clip.transformer import text_global_pool

    lengths = (tokens != 0).sum(1)
    order = torch.argsort(lengths, stable=True)
    out = None
    for chunk in torch.split(order, bucket):
        n = max(1, int(lengths[chunk].max()))
        t = tokens[chunk, :n]
        x = model.token_embedding(t) + model.positional_embedding[:n]
        mask = model.attn_mask[:n, :n] if model.attn_mask is not None else None
        x = model.ln_final(model.transformer(x, attn_mask=mask))
        x = text_global_pool(x, t, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        if out is None:
            out = x.new_empty((tokens.shape[0], x.shape[-1]))
        out = out.index_copy(0, chunk, x)
    assert out is not None
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


class ContrastiveForward(torch.nn.Module):
    """The training forward pass as one module (so ``accelerator.prepare``/DDP sees every parameter used):
    unit image embeddings, unit text embeddings (bucketed, see :func:`encode_text_bucketed`), logit scale,
    and the :class:`AttributeHead` logits (``None`` without a head)."""

    def __init__(self, clip, head: "AttributeHead | None" = None):
        super().__init__()
        self.clip = clip
        self.head = head

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        image = self.clip.encode_image(images, normalize=True)
        text = encode_text_bucketed(self.clip, tokens)
        aux = self.head(image) if self.head is not None else None
        return image, text, self.clip.logit_scale.exp(), aux


def save_model(
    model,
    folder: str | Path,
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any] | None = None,
    schema: Schema | str | None = None,
    dtype: str = "fp16",
) -> Path:
    """Write an open_clip ``local-dir:`` folder: ``open_clip_config.json``, ``open_clip_model.safetensors``
    (``dtype`` fp16 or fp32; fp16 weights load into the fp32 model) and, when ``schema`` is given,
    ``charattr_schema.yaml`` (the pipeline then uses that schema by default with this model)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cast = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    state = {k: v.detach().to("cpu", cast if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    tmp = folder / "open_clip_model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "open_clip_model.safetensors")
    (folder / "open_clip_model.safetensors").chmod(0o644)  # the writer may create it owner-only
    config = {"model_cfg": dict(model_cfg), "preprocess_cfg": dict(preprocess_cfg or DEMO_PREPROCESS_CFG)}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if schema is not None:
        schema_obj = load_schema(schema)
        src = Path(schema_obj.source_path) if schema_obj.source_path else None
        target = folder / "charattr_schema.yaml"
        if src is not None and src.is_file():
            target.write_text(src.read_text())
        else:  # a shipped schema (package resource) or one built in memory
            from importlib import resources

            res = resources.files("charattr_hf") / "schemas" / f"{schema_obj.name}.yaml"
            if res.is_file():
                target.write_text(res.read_text())
            else:
                schema_obj.save(target)
    return folder


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_zero_shot(
    model: str | Path,
    schema: Schema | str | None = None,
    styles: Sequence[str] = synthetic.STYLES,
    n: int = 1000,
    seed: int = 20_261_126,
    batch_size: int = 256,
    device: str = "cpu",
    num_proc: int = 1,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Zero-shot scores of ``model`` through the pipeline's own stages, per style and attribute.

    ``model``: anything :meth:`ClipSpec.parse` accepts (``demo``, ``local-dir:/path``) or a folder path.
    ``schema``: default the model folder's ``charattr_schema.yaml``, else ``synthetic``. For each style,
    ``n`` images of ``synthetic.generate(n, seed, styles=[style])`` (pick a seed not used in training)
    go through :class:`DecodeStage` (at the model's input size, as the pipeline sets it up) and
    :class:`ClipZeroShot`. Returns ``{style: {attribute: metrics}}``; single-label metrics: ``accuracy``,
    ``confidence`` (mean top-label probability), ``chance`` (1 / number of labels); multi-label: ``f1``,
    ``precision``, ``recall`` per label, ``macro_f1`` and ``exact`` (whole set right).
    """
    from datasets import Image as ImageFeature

    from .sources.clip.model import ClipSpec
    from .sources.clip.stage import ClipZeroShot
    from .stages.decode import DecodeStage

    name = str(model)
    if name != "demo" and not name.startswith(("local-dir:", "hf-hub:")) and Path(name).is_dir():
        name = "local-dir:" + name
    spec = ClipSpec.parse(name)
    if schema is None:
        folder = spec.local_dir()
        own = folder / "charattr_schema.yaml" if folder is not None else None
        schema = str(own) if own is not None and own.is_file() else "synthetic"
    schema = load_schema(schema)
    clip = ClipZeroShot(schema, spec, batch_size=batch_size, precision="fp32", device=device)
    decode = DecodeStage({clip.pixels_column: clip.pixel_spec})
    size = int(clip.pixel_spec.size[0])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for style in styles:
        ds = synthetic.generate(n, seed=seed, size=size, styles=[style], num_proc=num_proc)
        ds = ds.cast_column("image", ImageFeature(decode=False))
        probs: list[dict] = []
        truths: list[dict] = []
        for a in range(0, n, batch_size):
            batch = ds[a : a + batch_size]
            dec = decode({"image": batch["image"]})
            out = clip({clip.pixels_column: dec[clip.pixels_column], "sha256": dec["sha256"], "error": dec["error"]})
            probs.extend(out["probs_clip"])
            truths.extend(batch["truth"])
        results[style] = _score(schema, probs, truths)
    return results


def _score(schema: Schema, probs: list[dict | None], truths: list[dict]) -> dict[str, dict[str, Any]]:
    """Per attribute, the metrics of :mod:`charattr_hf.metrics.core` on the rows with ground truth (a row without
    probabilities counts as wrong). Single-label: ``accuracy``, ``confidence`` (mean top-label probability),
    ``ece``, ``chance`` (1 / labels); multi-label (presence at the schema's threshold): ``labels`` (F1,
    precision, recall, support per label), ``macro_f1`` and ``exact`` (whole set right)."""
    out: dict[str, dict[str, Any]] = {}
    for attr in schema:
        rows = [(p[attr.name] if p else None, t.get(attr.name)) for p, t in zip(probs, truths)]
        rows = [(p, t) for p, t in rows if t is not None]
        if not rows:
            continue
        k = attr.num_labels
        prob = np.array([p if p is not None else [np.nan] * k for p, _ in rows], dtype=np.float64).reshape(-1, k)
        known = np.isfinite(prob).all(axis=1)
        if attr.multi_label:
            ref = np.zeros((len(rows), k), dtype=np.int64)
            for r, (_, t) in enumerate(rows):
                ref[r, list(t)] = 1
            pred = np.where(known[:, None], (prob >= attr.threshold).astype(np.int64), -1)
            m = metrics_core.score_multi_label(pred, ref, prob, label_threshold=attr.threshold)
            per = m["per_label"]
            out[attr.name] = {
                "labels": {lab.name: {key: per[key][j] for key in ("f1", "precision", "recall", "support")}
                           for j, lab in enumerate(attr.labels)},
                "macro_f1": m["macro_f1"],
                "exact": m["subset_accuracy"],
                "n": m["n"],
            }
        else:
            ref = np.array([t for _, t in rows], dtype=np.int64)
            pred = np.where(known, np.nan_to_num(prob).argmax(axis=1), -1)
            conf = np.where(known, np.nan_to_num(prob).max(axis=1), np.nan)
            m = metrics_core.score_single_label(pred, ref, conf)
            out[attr.name] = {
                "accuracy": m["accuracy"],
                "confidence": m["mean_confidence"] if m["mean_confidence"] is not None else 0.0,
                "ece": m["ece"],
                "chance": 1.0 / attr.num_labels,
                "n": m["n"],
            }
    return out


def single_label_mean(style_results: Mapping[str, Mapping[str, Any]]) -> float:
    """Mean accuracy over the single-label attributes of one style's results."""
    accs = [m["accuracy"] for m in style_results.values() if "accuracy" in m]
    return float(np.mean(accs)) if accs else float("nan")


def format_results(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown tables: accuracy (top-label confidence) per style and single-label attribute, the mean over
    them; then per-label F1 of multi-label attributes."""
    styles = list(results)
    if not styles:
        return "(no results)"
    first = results[styles[0]]
    single = [a for a, m in first.items() if "accuracy" in m]
    multi = [a for a, m in first.items() if "labels" in m]
    rows = [[style, *(f"{results[style][a]['accuracy']:.3f} ({results[style][a]['confidence']:.2f})" for a in single),
             f"{single_label_mean(results[style]):.3f}"] for style in styles]
    rows.append(["chance", *(f"{first[a]['chance']:.3f}" for a in single), ""])
    lines = ["accuracy (mean top-label confidence; chance = 1/labels)", "",
             markdown_table(["style", *single, "mean"], rows, missing="")]
    for attr in multi:
        labels = list(first[attr]["labels"])
        lines += ["", f"{attr}: F1 per label (threshold from the schema), macro F1, exact-set accuracy", ""]
        rows = [[style, *(results[style][attr]["labels"][lab]["f1"] for lab in labels),
                 results[style][attr]["macro_f1"], results[style][attr]["exact"]] for style in styles]
        lines.append(markdown_table(["style", *labels, "macro F1", "exact"], rows))
    return "\n".join(lines)
