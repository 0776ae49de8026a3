"""Resolving, fingerprinting and loading open_clip models, and their zero-shot label embeddings.

Model specs (``--model``):

- ``demo``: the small demo model shipped in the package (synthetic characters only);
- ``ViT-B-32`` with ``pretrained="laion2b_s34b_b79k"``: a built-in architecture and a pretrained tag;
  ``pretrained="none"`` builds it with random weights (for benchmarks: same compute, meaningless output);
- ``hf-hub:org/repo`` (with an optional ``revision``): an open_clip model folder on the Hub;
- ``local-dir:/path/to/folder``: a folder with ``open_clip_config.json`` and safetensors weights.

Nothing here loads weights until :func:`load_model`; :func:`preprocess_config` and
:meth:`ClipSpec.fingerprint` read configs only, so the CPU stages can be set up without torch work. Folders and Hub
repositories are resolved by :func:`charattr_hf.loading.resolve_model` (safetensors weights only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ...loading import ModelRef, ResolvedModel, resolve_model
from ...stages.pixels import PixelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "ClipSpec", "DEMO_MODEL", "demo_model_dir", "preprocess_config", "load_model", "label_embeddings",
    "quantize_int8",
]

DEMO_MODEL = "demo"
_LOCAL = "local-dir:"
_HUB = "hf-hub:"
#: An open_clip model folder: its config, one weights file (the first of these that exists), and what its tokenizer
#: and schema need.
_REQUIRED = ("open_clip_config.json",
             ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors"))
_OPTIONAL = ("*.json", "*.txt", "*.yaml", "tokenizer*", "vocab*", "merges*", "*.model")


def demo_model_dir() -> Path | None:
    """The shipped demo model folder, or None when this install has none."""
    folder = Path(str(resources.files("charattr_hf") / "assets" / "demo-clip"))
    return folder if (folder / "open_clip_config.json").is_file() else None


@dataclass(frozen=True)
class ClipSpec:
    """What ``--model``/``--pretrained``/``--model_revision`` name, before anything is loaded."""

    model: str
    pretrained: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, model: str, pretrained: str | None = None, revision: str | None = None) -> "ClipSpec":
        if model == DEMO_MODEL:
            folder = demo_model_dir()
            if folder is None:
                raise FileNotFoundError("this installation ships no demo model (charattr_hf/assets/demo-clip)")
            return cls(_LOCAL + str(folder))
        if model.startswith(_LOCAL):
            if pretrained:
                raise ValueError("--pretrained does not apply to a local-dir: model")
            folder = Path(model[len(_LOCAL) :]).expanduser().resolve()
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{model}: no open_clip_config.json in {folder}")
            return cls(_LOCAL + str(folder))
        if model.startswith(_HUB):
            if pretrained:
                raise ValueError("--pretrained does not apply to an hf-hub: model (use --model_revision)")
            return cls(model, None, revision)
        import open_clip

        if open_clip.get_model_config(model) is None:
            raise ValueError(
                f"unknown open_clip model {model!r}: use a built-in name (see open_clip.list_models()), "
                "'hf-hub:org/repo' or 'local-dir:/path'"
            )
        if revision:
            raise ValueError("--model_revision applies to hf-hub: models only (built-in tags are fixed)")
        tag = None if pretrained in (None, "", "none", "random") else pretrained
        if tag is not None and not open_clip.get_pretrained_cfg(model, tag) and not Path(tag).is_file():
            raise ValueError(
                f"unknown pretrained tag {tag!r} for {model}; known: {open_clip.list_pretrained_tags_by_model(model)}"
            )
        return cls(model, tag, None)

    # -- resolution --------------------------------------------------------------------------
    @property
    def is_random(self) -> bool:
        return not (self.model.startswith((_LOCAL, _HUB)) or self.pretrained)

    def resolved(self) -> ResolvedModel | None:
        """The model's files (an ``hf-hub:`` repo is fetched once, at the commit its revision points to); None for a
        built-in architecture, whose weights open_clip fetches by its pretrained tag."""
        if not self.model.startswith((_LOCAL, _HUB)):
            return None
        ref = ModelRef.parse(self.model, self.revision, what="CLIP model", flag="--model")
        return resolve_model(ref, required=_REQUIRED, optional=_OPTIONAL)

    def local_dir(self) -> Path | None:
        """The folder holding config and weights (None for a built-in architecture)."""
        resolved = self.resolved()
        return resolved.folder if resolved is not None else None

    def fingerprint(self) -> str:
        """Identifies the weights: content hash for local folders and files, commit for Hub repos, tag for
        built-ins (open_clip pins each tag to one file)."""
        resolved = self.resolved()
        if resolved is not None:
            return resolved.fingerprint
        pretrained = self.pretrained or "random"
        if self.pretrained and Path(self.pretrained).is_file():
            from ...loading import file_digest

            pretrained = "file-" + file_digest(str(Path(self.pretrained).resolve()))
        return json.dumps({"name": self.model, "pretrained": pretrained}, sort_keys=True)

    def describe(self) -> str:
        if self.model.startswith(_LOCAL):
            folder = Path(self.model[len(_LOCAL) :])
            return "demo" if folder == demo_model_dir() else self.model
        if self.model.startswith(_HUB):
            return self.model + (f"@{self.revision}" if self.revision else "")
        return f"{self.model} ({self.pretrained or 'random weights'})"


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def pixel_spec(self) -> PixelSpec:
        """What the decode stage makes for the model: open_clip's eval transform (its padding colour is black: the
        configs' ``fill_color`` default, which no shipped config changes)."""
        return PixelSpec(self.image_size, self.resize_mode, self.interpolation, mean=self.mean, std=self.std)


# open_clip.transform.PreprocessCfg's defaults (tests/test_user_errors.py checks they agree)
_OPEN_CLIP_PREPROCESS_DEFAULTS = {
    "size": 224,
    "mode": "RGB",
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def preprocess_config(spec: ClipSpec) -> PreprocessConfig:
    """The model's eval preprocessing (read from configs; no weights loaded).

    A model folder's config is read without importing open_clip (which imports torchvision and torch's
    compiler: seconds that a rerun with nothing to do need not spend); the defaults are open_clip's
    ``PreprocessCfg``'s."""
    folder = spec.local_dir()
    if folder is not None:
        raw = json.loads((folder / "open_clip_config.json").read_text())
        model_cfg = raw.get("model_cfg", raw)
        cfg = dict(_OPEN_CLIP_PREPROCESS_DEFAULTS)
        cfg.update({k: v for k, v in (raw.get("preprocess_cfg") or {}).items() if k in cfg and v is not None})
    else:
        import open_clip
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        cfg = asdict(PreprocessCfg())
        model_cfg = open_clip.get_model_config(spec.model)
        if spec.pretrained:
            cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {})
    size = model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"])
    if isinstance(size, int):
        size = (size, size)
    return PreprocessConfig(
        image_size=tuple(size),  # type: ignore[arg-type]
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )


def quantize_int8(model):
    """Dynamic int8 quantization of the image tower's ``nn.Linear`` layers, in place; returns the model.

    Weights are stored in int8 (per-tensor scale), activations are quantized on the fly per batch, and the matrix
    products run in int8 (fbgemm/onednn kernels, VNNI where the CPU has it). Only the image tower is quantized:
    the text tower runs once per schema, to embed the label prompts, so it stays in fp32. In a ViT tower the
    self-attention modules (``nn.MultiheadAttention``, whose QKV projection is a bare parameter) are replaced by
    the same computation over two ``nn.Linear`` (QKV and output) and ``scaled_dot_product_attention``, so that
    the attention projections are quantized too, not only the MLPs. In the ModifiedResNet
    towers (the demo model, RN50...) the convolutions stay fp32 (dynamic quantization covers Linear layers only)
    and the attention pool's projections become int8: the pool is switched to calling its Linear modules (it
    reads their weights directly otherwise), which gives the same result in fp32.

    ``torch.ao.quantization.quantize_dynamic`` is used (torchao, its successor, is not a dependency; its int8
    dynamic path on CPU relies on ``torch.compile``).
    """
    import warnings

    import torch

    _attention_pools_through_modules(model.visual)
    _self_attention_through_linears(model.visual)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        model.visual = torch.ao.quantization.quantize_dynamic(model.visual, {torch.nn.Linear}, dtype=torch.qint8)
    return model


_MODULE_POOL: Any = None


def _self_attention_through_linears(visual) -> None:
    """Replace ``nn.MultiheadAttention`` in open_clip's ``ResidualAttentionBlock`` by :class:`_LinearSelfAttention`."""
    try:
        from open_clip.transformer import ResidualAttentionBlock
    except ImportError:  # pragma: no cover
        return
    import torch

    for block in visual.modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, torch.nn.MultiheadAttention):
            block.attn = _linear_self_attention(block.attn)


def _linear_self_attention(mha):
    import torch
    import torch.nn.functional as F

    class LinearSelfAttention(torch.nn.Module):
        """Self-attention as ``nn.MultiheadAttention`` computes it (no dropout, eval), with ``nn.Linear``
        projections that dynamic quantization can replace."""

        def __init__(self, mha: torch.nn.MultiheadAttention):
            super().__init__()
            separate_kv = mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim
            if separate_kv or mha.bias_k is not None or mha.add_zero_attn:
                raise ValueError("unsupported MultiheadAttention layout")
            d = mha.embed_dim
            self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
            self.qkv = torch.nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
            self.out = torch.nn.Linear(d, d, bias=mha.out_proj.bias is not None)
            with torch.no_grad():
                self.qkv.weight.copy_(mha.in_proj_weight)
                if mha.in_proj_bias is not None:
                    self.qkv.bias.copy_(mha.in_proj_bias)
                self.out.weight.copy_(mha.out_proj.weight)
                if mha.out_proj.bias is not None:
                    self.out.bias.copy_(mha.out_proj.bias)

        def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_):
            if (key is not None and key is not query) or (value is not None and value is not query):
                raise ValueError("LinearSelfAttention handles self-attention only")
            x = query if self.batch_first else query.transpose(0, 1)
            n, length, d = x.shape
            qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            out = self.out(out.transpose(1, 2).reshape(n, length, d))
            return (out if self.batch_first else out.transpose(0, 1)), None

    return LinearSelfAttention(mha)


def _attention_pools_through_modules(visual) -> None:
    """Make open_clip's ``AttentionPool2d`` call its q/k/v/c projections as modules (so that they can be swapped
    for quantized ones) instead of passing their weights to ``F.multi_head_attention_forward``."""
    global _MODULE_POOL
    try:
        from open_clip.modified_resnet import AttentionPool2d
    except ImportError:  # pragma: no cover - another open_clip layout
        return
    if _MODULE_POOL is None:
        _MODULE_POOL = type("ModuleAttentionPool2d", (AttentionPool2d,), {"forward": _module_attention_pool_forward})
    for module in visual.modules():
        if type(module) is AttentionPool2d:
            module.__class__ = _MODULE_POOL


def _module_attention_pool_forward(self, x):
    import torch
    import torch.nn.functional as F

    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # NCHW -> (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + self.positional_embedding[:, None, :].to(x.dtype)
    length, batch, dim = x.shape
    heads = self.num_heads
    # only the first (pooled) position is returned: it is the only query needed
    q = self.q_proj(x[:1]).reshape(1, batch * heads, dim // heads).transpose(0, 1)
    k = self.k_proj(x).reshape(length, batch * heads, dim // heads).transpose(0, 1)
    v = self.v_proj(x).reshape(length, batch * heads, dim // heads).transpose(0, 1)
    out = F.scaled_dot_product_attention(q, k, v)  # (batch * heads, 1, head_dim)
    return self.c_proj(out.transpose(0, 1).reshape(batch, dim))


def load_model(spec: ClipSpec, device: Any, precision: str = "auto"):
    """Build the model on ``device`` in eval mode and its tokenizer. ``precision`` auto = fp16 on CUDA;
    int8 = fp32 weights loaded, then the image tower quantized (:func:`quantize_int8`, CPU only)."""
    import open_clip
    import torch

    device = torch.device(device)
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    int8 = precision == "int8"
    if int8:
        if device.type != "cpu":
            raise ValueError("--precision int8 runs on CPU only (dynamic int8 quantization); on a GPU use fp16")
        precision = "fp32"
    folder = spec.local_dir()
    name = f"{_LOCAL}{folder}" if folder is not None else spec.model
    if spec.is_random:
        logger.warning("%s: random weights (pretrained='none'); outputs are meaningless", spec.model)
    model = open_clip.create_model(name, pretrained=spec.pretrained, device=device, precision=precision)
    model.eval()
    if int8:
        model = quantize_int8(model)
    tokenizer = open_clip.get_tokenizer(name)
    return model, tokenizer


def label_embeddings(model, tokenizer, prompts_per_label: list[tuple[str, ...]], device) -> "Any":
    """Prompt-ensemble text embeddings, one unit vector per label: (num_labels, dim) float32."""
    import torch

    flat = [p for prompts in prompts_per_label for p in prompts]
    parts = []
    with torch.inference_mode():
        for start in range(0, len(flat), 64):
            tokens = tokenizer(flat[start : start + 64]).to(device)
            parts.append(model.encode_text(tokens, normalize=True).float())
    emb = torch.cat(parts)
    out, start = [], 0
    for prompts in prompts_per_label:
        mean = emb[start : start + len(prompts)].mean(0)
        out.append(mean / mean.norm())
        start += len(prompts)
    return torch.stack(out)
