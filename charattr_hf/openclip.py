"""Resolving, fingerprinting and loading open_clip models, and their zero-shot label embeddings.

Model specs (``--model``):

- ``demo``: the small demo model shipped in the package (synthetic characters only);
- ``ViT-B-32`` with ``pretrained="laion2b_s34b_b79k"``: a built-in architecture and a pretrained tag;
  ``pretrained="none"`` builds it with random weights (for benchmarks: same compute, meaningless output);
- ``hf-hub:org/repo`` (with an optional ``revision``): an open_clip model folder on the Hub;
- ``local-dir:/path/to/folder``: a folder with ``open_clip_config.json`` and safetensors weights.

Nothing here loads weights until :func:`load_model`; :func:`preprocess_config` and
:meth:`ClipSpec.fingerprint` read configs only, so the CPU stages can be set up without torch work.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ClipSpec", "DEMO_MODEL", "demo_model_dir", "preprocess_config", "load_model", "label_embeddings"]

DEMO_MODEL = "demo"
_LOCAL = "local-dir:"
_HUB = "hf-hub:"
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")


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

    def local_dir(self) -> Path | None:
        """The folder holding config and weights (downloads ``hf-hub:`` repos once, at a pinned revision)."""
        if self.model.startswith(_LOCAL):
            return Path(self.model[len(_LOCAL) :])
        if self.model.startswith(_HUB):
            return _hub_snapshot(self.model[len(_HUB) :], self.revision)
        return None

    def fingerprint(self) -> str:
        """Identifies the weights: content hash for local folders and files, commit for Hub repos, tag for
        built-ins (open_clip pins each tag to one file)."""
        if self.model.startswith(_HUB):
            return f"hub-{self.model[len(_HUB):]}@{self.local_dir().name}"
        folder = self.local_dir()
        if folder is not None:
            return "dir-" + _folder_digest(str(folder))
        pretrained = self.pretrained or "random"
        if self.pretrained and Path(self.pretrained).is_file():
            pretrained = "file-" + _file_digest(str(Path(self.pretrained).resolve()))
        return json.dumps({"name": self.model, "pretrained": pretrained}, sort_keys=True)

    def describe(self) -> str:
        if self.model.startswith(_LOCAL):
            folder = Path(self.model[len(_LOCAL) :])
            return "demo" if folder == demo_model_dir() else self.model
        if self.model.startswith(_HUB):
            return self.model + (f"@{self.revision}" if self.revision else "")
        return f"{self.model} ({self.pretrained or 'random weights'})"


@lru_cache(maxsize=None)
def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """Config, tokenizer and schema files of the repo, plus the one weights file open_clip would load.

    Repositories often hold the same weights in several formats (several GB each); only one is fetched, and
    safetensors is preferred. The folder is ``.../snapshots/<commit>``, which pins what was loaded.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    folder = Path(
        snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["open_clip_config.json", "*.txt", "*.yaml", "tokenizer*", "vocab*", "merges*",
                            "special_tokens_map.json", "*.model"],
        )
    )
    for name in (*_WEIGHT_FILES, "open_clip_pytorch_model.bin"):
        try:
            hf_hub_download(repo_id, name, revision=folder.name)
            break
        except Exception:  # noqa: BLE001 - try the next format
            continue
    else:
        raise FileNotFoundError(f"hf-hub:{repo_id}: no open_clip weights file ({', '.join(_WEIGHT_FILES)}, .bin)")
    return folder


@lru_cache(maxsize=None)
def _folder_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".txt", ".yaml"):
            digest.update(path.name.encode())
            digest.update(_file_digest(str(path)).encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


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


def load_model(spec: ClipSpec, device: Any, precision: str = "auto"):
    """Build the model on ``device`` in eval mode and its tokenizer. ``precision`` auto = fp16 on CUDA."""
    import open_clip
    import torch

    device = torch.device(device)
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    folder = spec.local_dir()
    name = f"{_LOCAL}{folder}" if folder is not None else spec.model
    if spec.is_random:
        logger.warning("%s: random weights (pretrained='none'); outputs are meaningless", spec.model)
    model = open_clip.create_model(name, pretrained=spec.pretrained, device=device, precision=precision)
    model.eval()
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
