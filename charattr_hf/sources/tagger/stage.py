"""The WD tagger source: SmilingWolf's WD v3 taggers (or any timm tagger of the same layout) as ``probs_tagger``.

On anime and illustration datasets the attribute source practitioners trust is a WD tagger (kohya's sd-scripts,
waifuc and imgutils all tag with one). The v3 taggers are timm checkpoints published as a folder: ``config.json``
(``architecture``, ``model_args``, ``pretrained_cfg``), ``model.safetensors`` and ``selected_tags.csv``
(``tag_id,name,category,count``; category 0 general, 4 character, 9 rating).

``--tagger`` takes (:meth:`TaggerSpec.parse`):

- ``SmilingWolf/wd-vit-tagger-v3`` or ``hf-hub:SmilingWolf/wd-vit-tagger-v3`` (with ``--tagger_revision``; the three
  files are fetched once, at a pinned commit, and only those: safetensors weights, never a pickle);
- ``local-dir:/path`` (or an existing folder path) of the same layout;
- ``demo``: the small tagger shipped in the package (``charattr_hf/assets/demo-tagger``, synthetic characters only).

Preprocessing follows the reference implementations exactly; each step names its source:

- [Space] the wd-tagger Space (huggingface.co/spaces/SmilingWolf/wd-tagger, ``app.py``, ``Predictor.prepare_image``);
- [timm] the WD v3 timm inference script (github.com/neggles/wdv3-timm, ``wdv3_timm.py`` at 2f49e85).

CPU part (:func:`prepare_image`, in the ``num_proc`` decode map, no torch): alpha composited over white, padded to a
square with white, bicubic resize to the checkpoint's input size; uint8 RGB. Device part (:class:`TaggerStage`):
scale to [0, 1], normalise with the checkpoint's ``pretrained_cfg`` mean/std, RGB -> BGR, the model in batches
(fp16 on GPU), sigmoid.

Outputs, per row:

- ``probs_tagger``: per attribute of the schema, through the schema's tag aliases (the alias table the tag parser
  reads, :func:`charattr_hf.stages.tags.alias_table`): the score of ``blonde_hair`` is evidence for
  hair_color = blonde. A label's score is the highest score among its tags in the tagger's vocabulary. Single-label
  attributes: ``p_i`` proportional to ``odds(s_i) + prior_odds`` (a label whose tags all score low keeps the prior
  share, so a tagger that sees no hair gives a flat hair colour, not a confident guess); multi-label attributes: the
  score itself (0.5 for a label none of whose tags the tagger knows). ``None`` for an attribute whose labels have
  no tag in the vocabulary. Counting tags feed the count and gender attributes (``solo`` -> one, ``2girls`` -> two,
  ``3girls``/``6+boys`` -> group; ``1girl``/``multiple_girls`` -> feminine, ``1boy`` -> masculine).
- ``tagger_tags``: general tags scoring above ``threshold`` (default 0.35, as [Space] and [timm]), highest first;
  with ``mcut`` the MCut threshold of [Space] (the midpoint of the largest gap between sorted scores).
- ``tagger_characters``: character tags above ``character_threshold`` (default 0.85, as [Space]); with ``mcut``,
  MCut floored at 0.15, as [Space].
- ``tagger_rating``: the rating tag with the highest score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from datasets import List, Value
from PIL import Image, ImageOps

from ..errors import ModelLoadError, UserError
from ..schema import Schema, load_schema, probs_column
from .base import ERROR, Stage

logger = logging.getLogger(__name__)

__all__ = [
    "TaggerSpec",
    "TaggerConfig",
    "TaggerPreprocess",
    "TaggerStage",
    "prepare_image",
    "mcut_threshold",
    "select_tags",
    "demo_tagger_dir",
    "DEMO_TAGGER",
    "TAGGER_FILES",
    "TAGGER_COLUMNS",
]

DEMO_TAGGER = "demo"
TAGGER_FILES = ("config.json", "model.safetensors", "selected_tags.csv")
#: Output columns of the tagger source besides ``probs_tagger``.
TAGGER_COLUMNS = ("tagger_tags", "tagger_characters", "tagger_rating")
GENERAL, CHARACTER, RATING = 0, 4, 9
_LOCAL = "local-dir:"
_HUB = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PIXELS = "_tagger_pixels"
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
# timm's defaults when a pretrained_cfg gives no mean/std (timm.data.constants IMAGENET_DEFAULT_*)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def demo_tagger_dir() -> Path | None:
    """The shipped demo tagger folder, or None when this install has none."""
    from importlib import resources

    folder = Path(str(resources.files("charattr_hf") / "assets" / "demo-tagger"))
    return folder if all((folder / f).is_file() for f in TAGGER_FILES) else None


# ------------------------------------------------------------------------------------------------ spec
@dataclass(frozen=True)
class TaggerSpec:
    """What ``--tagger``/``--tagger_revision`` name, before anything is loaded."""

    source: str  # "local-dir:/abs/path" or "hf-hub:org/repo"
    revision: str | None = None
    name: str | None = None  # what the user wrote ("demo", a repo id...), for messages and the card

    @classmethod
    def parse(cls, value: str, revision: str | None = None) -> "TaggerSpec":
        value = str(value).strip()
        if value == DEMO_TAGGER:
            folder = demo_tagger_dir()
            if folder is None:
                raise UserError("--tagger demo: this installation ships no demo tagger (charattr_hf/assets/demo-tagger)")
            return cls(_LOCAL + str(folder), None, DEMO_TAGGER)
        if value.startswith(_LOCAL) or (not value.startswith(_HUB) and Path(value).expanduser().is_dir()):
            if revision:
                raise UserError("--tagger_revision applies to Hub taggers only, not to a local folder")
            folder = Path(value[len(_LOCAL):] if value.startswith(_LOCAL) else value).expanduser().resolve()
            _check_folder(folder, value)
            return cls(_LOCAL + str(folder), None, value)
        repo = value[len(_HUB):] if value.startswith(_HUB) else value
        if not _REPO_ID.match(repo):
            raise UserError(
                f"--tagger {value!r}: not a folder and not a Hub id; give 'org/repo' (e.g. SmilingWolf/wd-vit-tagger-v3), "
                "'hf-hub:org/repo', 'local-dir:/path' (config.json, model.safetensors, selected_tags.csv) or 'demo'"
            )
        return cls(_HUB + repo, revision, value)

    @property
    def is_local(self) -> bool:
        return self.source.startswith(_LOCAL)

    def local_dir(self) -> Path:
        """The folder with the three files (a Hub repo is fetched once, at a pinned commit)."""
        if self.is_local:
            return Path(self.source[len(_LOCAL):])
        return _hub_snapshot(self.source[len(_HUB):], self.revision)

    def fingerprint(self) -> str:
        """Identifies the weights and tags: a content hash for a folder, the commit for a Hub repo."""
        if self.is_local:
            return "dir-" + _folder_digest(str(self.local_dir()))
        return f"hub-{self.source[len(_HUB):]}@{self.local_dir().name}"

    def describe(self) -> str:
        if self.name == DEMO_TAGGER:
            return DEMO_TAGGER
        if self.is_local:
            return self.source
        return self.source[len(_HUB):] + (f"@{self.revision}" if self.revision else "")


def _check_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise ModelLoadError(f"--tagger {what}: no such folder {str(folder)!r}; check the path after 'local-dir:'")
    missing = [f for f in TAGGER_FILES if not (folder / f).is_file()]
    if not missing:
        return
    hint = ""
    if "model.safetensors" in missing and any((folder / f).exists() for f in ("pytorch_model.bin", "model.onnx")):
        hint = " (only safetensors weights are loaded: pickled .bin files can run code, and .onnx is not a timm model)"
    raise ModelLoadError(f"--tagger {what}: {folder} lacks {', '.join(missing)}{hint}; a WD tagger folder has "
                         f"{', '.join(TAGGER_FILES)}")


@lru_cache(maxsize=None)
def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """``config.json``, ``selected_tags.csv`` and ``model.safetensors`` of a Hub repo, at one commit; nothing else
    (the v3 repos also hold an ONNX export of the same weights)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(TAGGER_FILES)))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, bad revision: one clear line
        raise ModelLoadError(f"--tagger {repo_id}{'@' + revision if revision else ''}: cannot fetch it from the Hub "
                             f"({type(exc).__name__}: {exc})") from exc
    _check_folder(folder, repo_id)
    return folder


@lru_cache(maxsize=None)
def _folder_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for name in TAGGER_FILES:
        digest.update(name.encode())
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class TaggerConfig:
    """What the stages need from ``config.json`` (read as timm reads it; no torch)."""

    architecture: str
    model_args: dict
    num_classes: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    @classmethod
    def read(cls, folder: Path) -> "TaggerConfig":
        try:
            raw = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{folder}/config.json: unreadable ({exc})") from exc
        # the layout of timm's push_to_hf_hub (timm.models._hub._parse_model_cfg), as the WD v3 repos use it
        pre = dict(raw.get("pretrained_cfg") or {k: v for k, v in raw.items() if k != "architecture"})
        if "architecture" not in raw:
            raise ModelLoadError(f"{folder}/config.json: no 'architecture' (not a timm model config)")
        model_args = dict(raw.get("model_args") or {})
        size = pre.get("input_size") or (3, 224, 224)
        hw = (int(size[-2]), int(size[-1]))
        if model_args.get("img_size") is not None and pre.get("fixed_input_size", False):
            s = model_args["img_size"]
            hw = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))
        return cls(
            architecture=str(raw["architecture"]),
            model_args=model_args,
            num_classes=int(raw.get("num_classes", pre.get("num_classes", 0))),
            image_size=hw,
            mean=tuple(float(v) for v in pre.get("mean", _IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in pre.get("std", _IMAGENET_STD)),  # type: ignore[arg-type]
            interpolation=str(pre.get("interpolation") or "bicubic"),
            crop_pct=float(pre.get("crop_pct") or 1.0),
        )


# ------------------------------------------------------------------------------------------------ CPU part
def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with alpha composited over white.

    [timm] ``pil_ensure_rgb``: a mode other than RGB/RGBA becomes RGBA when it has a ``transparency`` key, else RGB;
    RGBA is ``alpha_composite``d onto a white RGBA canvas and converted to RGB. [Space] ``prepare_image`` does the
    same composite (its input is RGBA). Modes that carry alpha in another form (LA, PA, La, RGBa) are composited too
    (the reference would drop their alpha); 16-bit and float gray is scaled by its range, not clipped at 255.
    """
    if im.mode in ("LA", "PA", "La", "RGBa") or (im.mode not in ("RGB", "RGBA") and "transparency" in im.info):
        im = im.convert("RGBA")
    elif im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else (1.0 if im.mode == "F" and a.max(initial=0) <= 1 else 255.0)
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8), "L")
    if im.mode == "RGBA":
        canvas = Image.new("RGBA", im.size, (255, 255, 255))
        canvas.alpha_composite(im)
        return canvas.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def prepare_image(
    image: Image.Image, size: int | Sequence[int], interpolation: str = "bicubic", crop_pct: float = 1.0
) -> np.ndarray:
    """A WD tagger's input pixels for one image: ``(H, W, 3)`` uint8, RGB (the device part flips to BGR).

    1. alpha over white: see :func:`_to_rgb` ([timm] ``pil_ensure_rgb``, [Space] ``prepare_image``);
    2. pad to a square of the longer side with white, the image at ``((side - w) // 2, (side - h) // 2)``
       ([timm] ``pil_pad_square``, [Space] ``prepare_image``);
    3. resize to the checkpoint's input size with its interpolation (bicubic for every WD v3 config; [Space] resizes
       with ``Image.BICUBIC`` unless the side already matches, [timm] through timm's eval transform, a torchvision
       ``Resize`` of the square image with PIL's resampling); when ``crop_pct`` < 1 (not so for WD v3), timm's eval
       transform resizes to ``floor(size / crop_pct)`` and centre-crops, and so does this.
    """
    h, w = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[-1]))
    rgb = _to_rgb(image)
    side = max(rgb.size)
    if rgb.size != (side, side):
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        rgb = canvas
    resample = _RESAMPLING.get(interpolation, Image.Resampling.BICUBIC)
    if crop_pct and crop_pct < 1.0:
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        if (side, side) != (scale[1], scale[0]):
            rgb = rgb.resize((scale[1], scale[0]), resample)
        top, left = int(round((scale[0] - h) / 2.0)), int(round((scale[1] - w) / 2.0))
        rgb = rgb.crop((left, top, left + w, top + h))
    elif (side, side) != (w, h):
        rgb = rgb.resize((w, h), resample)
    return np.asarray(rgb, dtype=np.uint8)


def _open_cell(cell: Any) -> Image.Image:
    """The image of a dataset cell (``{"bytes", "path"}``, bytes, a path or a PIL image), EXIF orientation applied.

    EXIF orientation is applied as in the rest of the pipeline (and as gradio's image input does for [Space]); [timm]
    opens the file as stored."""
    import io

    if isinstance(cell, Image.Image):
        im = cell
    else:
        from .decode import _read_bytes

        im = Image.open(io.BytesIO(_read_bytes(cell)))
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - corrupt EXIF: keep the image as stored, as decode does
        return im


class TaggerPreprocess(Stage):
    """CPU part of the tagger source: ``_tagger_pixels`` (uint8 RGB at the input size) for every decodable row.

    Runs in the forked ``num_proc`` map beside the decode stage (PIL and numpy only). Rows the decode stage
    quarantined (``error`` set) are left alone."""

    name = "tagger_preprocess"
    cpu_bound: ClassVar[bool] = True

    def __init__(self, image_size: Sequence[int], interpolation: str = "bicubic", crop_pct: float = 1.0,
                 column: str = "image"):
        self.image_size = (int(image_size[0]), int(image_size[-1]))
        self.interpolation = interpolation
        self.crop_pct = float(crop_pct)
        self.column = column

    def params(self) -> dict:
        return {"size": list(self.image_size), "interpolation": self.interpolation, "crop_pct": self.crop_pct,
                "column": self.column, "version": 1}

    def features(self) -> dict:
        return {_PIXELS: Value("binary")}

    def input_columns(self) -> list[str]:
        return [self.column]

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        cells = batch[self.column]
        errors = batch.get(ERROR) or [None] * len(cells)
        out = []
        for cell, err in zip(cells, errors):
            if err is not None or cell is None:
                out.append(None)
                continue
            px = prepare_image(_open_cell(cell), self.image_size, self.interpolation, self.crop_pct)
            out.append(px.tobytes())
        return {_PIXELS: out}


# ------------------------------------------------------------------------------------------------ thresholds
def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut thresholding ([Space] ``mcut_threshold``; Largeron et al., 2012): sort the scores in decreasing
    order and cut at the midpoint of the largest gap between neighbours."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size < 2:
        return 0.0 if probs.size == 0 else float(probs[0]) / 2.0
    s = np.sort(probs)[::-1]
    t = int(np.argmax(s[:-1] - s[1:]))
    return float((s[t] + s[t + 1]) / 2.0)


def select_tags(names: Sequence[str], scores: np.ndarray, threshold: float, mcut: bool = False,
                floor: float = 0.0) -> list[str]:
    """Names whose score is above the threshold (strictly, as [Space] and [timm]), highest score first (ties in
    vocabulary order). With ``mcut`` the threshold is :func:`mcut_threshold` of ``scores``, at least ``floor``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return []
    if mcut:
        threshold = max(floor, mcut_threshold(scores))
    keep = np.flatnonzero(scores > threshold)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    return [names[i] for i in order]


# ------------------------------------------------------------------------------------------------ attribute map
def _attribute_map(schema: Schema, names: Sequence[str]) -> list[list[list[int]]]:
    """For each attribute and label, the vocabulary indices of its tags: the schema's alias table, plus the counting
    tags for the count and gender attributes (which the tag parser interprets rather than looks up)."""
    from .tags import _COUNT_FLAGS, alias_table, parse_count_tag

    aliases = alias_table(schema)
    out = [[[] for _ in attr.labels] for attr in schema]
    index = {n: i for i, n in enumerate(names)}
    for tag, entries in aliases.items():
        i = index.get(tag)
        if i is None:
            continue
        for ai, li in entries:
            if i not in out[ai][li]:
                out[ai][li].append(i)
    # counting tags, as the tag parser's defaults map them (TagStage count_labels / gender_labels)
    count = schema["character_count"] if "character_count" in schema else None
    gender = schema["gender_presentation"] if "gender_presentation" in schema else None
    ai_count = schema.attribute_names.index("character_count") if count is not None else None
    ai_gender = schema.attribute_names.index("gender_presentation") if gender is not None else None
    gender_of = {"girl": "feminine", "boy": "masculine"}
    for i, tag in enumerate(names):
        parsed = parse_count_tag(tag)
        if tag in _COUNT_FLAGS and tag == "solo" and count is not None and "one" in count.label_names:
            out[ai_count][count.index("one")].append(i)
        if parsed is None:
            continue
        kind, n, exact = parsed
        if gender is not None and gender_of.get(kind) in gender.label_names:
            out[ai_gender][gender.index(gender_of[kind])].append(i)
        if count is not None and not count.multi_label:
            label = "two" if (n == 2 and exact) else ("group" if n >= 3 else None)
            if label in count.label_names:
                out[ai_count][count.index(label)].append(i)
    return out


def _attribute_probs(schema: Schema, amap, scores: np.ndarray, prior_odds: float) -> dict[str, Any]:
    """``probs_tagger`` of one row from its tag scores (see the module docstring)."""
    row: dict[str, Any] = {}
    for attr, labels in zip(schema, amap):
        if not any(labels):
            row[attr.name] = None
            continue
        s = np.array([scores[idx].max() if idx else np.nan for idx in labels], dtype=np.float64)
        if attr.multi_label:
            row[attr.name] = np.where(np.isnan(s), 0.5, s).tolist()
            continue
        p = np.clip(np.nan_to_num(s, nan=0.0), 1e-6, 1 - 1e-6)
        odds = p / (1.0 - p) + prior_odds
        row[attr.name] = (odds / odds.sum()).tolist()
    return row


# ------------------------------------------------------------------------------------------------ device part
_REGISTRY: dict[tuple, Any] = {}


def _load_model(folder: Path, config: TaggerConfig, device: str, precision: str):
    """The timm model of a tagger folder: built from its config as timm's ``hf-hub:``/``local-dir:`` loaders build it
    (``architecture`` with ``model_args`` and ``num_classes``; no download, no weights), then the safetensors weights
    loaded into it (strict)."""
    import timm
    import torch
    from safetensors.torch import load_file

    try:
        model = timm.create_model(config.architecture, pretrained=False, num_classes=config.num_classes,
                                  **config.model_args)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"tagger {folder}: timm cannot build {config.architecture!r} from config.json "
                             f"({type(exc).__name__}: {exc})") from exc
    try:
        state = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"tagger {folder}: model.safetensors does not fit {config.architecture} "
                             f"({type(exc).__name__}: {str(exc)[:300]})") from exc
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    return model.to(device=device, dtype=dtype).eval()


class TaggerStage(Stage):
    """The tagger source: ``probs_tagger``, ``tagger_tags``, ``tagger_characters``, ``tagger_rating``.

    Args:
        schema: the run's attribute schema.
        spec: a :class:`TaggerSpec` (or what :meth:`TaggerSpec.parse` accepts).
        threshold / character_threshold / mcut: see the module docstring.
        prior_odds: added to every label's odds for single-label attributes (see the module docstring).
        batch_size: images per forward pass. precision: ``auto`` (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16.
    """

    name = "tagger"
    cpu_bound = False
    isolate_rows = False  # uniform tensors in: a failure is never one image's fault

    def __init__(
        self,
        schema: "Schema | str | None",
        spec: "TaggerSpec | str",
        threshold: float = 0.35,
        character_threshold: float = 0.85,
        mcut: bool = False,
        prior_odds: float = 0.1,
        batch_size: int = 32,
        precision: str = "auto",
        device: str | None = None,
    ):
        for name, v in (("threshold", threshold), ("character_threshold", character_threshold)):
            if not 0.0 <= float(v) <= 1.0:
                raise UserError(f"--tagger_{name} must be in [0, 1], got {v!r}")
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise UserError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.schema = load_schema(schema)
        self.spec = spec if isinstance(spec, TaggerSpec) else TaggerSpec.parse(spec)
        folder = self.spec.local_dir()
        self.config = TaggerConfig.read(folder)
        from ..demo_tagger import read_selected_tags

        try:
            self.tag_names, self.categories = read_selected_tags(folder / "selected_tags.csv")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"tagger {self.spec.describe()}: {exc}") from exc
        if self.config.num_classes and self.config.num_classes != len(self.tag_names):
            raise ModelLoadError(f"tagger {self.spec.describe()}: config.json has {self.config.num_classes} classes "
                                 f"but selected_tags.csv {len(self.tag_names)} tags")
        cats = np.asarray(self.categories)
        self._general = np.flatnonzero(cats == GENERAL)
        self._character = np.flatnonzero(cats == CHARACTER)
        self._rating = np.flatnonzero(cats == RATING)
        self._amap = _attribute_map(self.schema, self.tag_names)
        self.threshold = float(threshold)
        self.character_threshold = float(character_threshold)
        self.mcut = bool(mcut)
        self.prior_odds = float(prior_odds)
        self.batch_size = int(batch_size)
        self.precision = precision
        self.device = device
        self.model_fingerprint = self.spec.fingerprint()
        self.preprocess = TaggerPreprocess(self.config.image_size, self.config.interpolation, self.config.crop_pct)
        unmapped = [a.name for a, labels in zip(self.schema, self._amap) if not any(labels)]
        if unmapped:
            logger.info("tagger %s knows no tag of %s: probs_tagger is null there", self.spec.describe(), unmapped)

    # -- description ------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "schema": self.schema.fingerprint(),
            "model": self.model_fingerprint,
            "precision": self._precision_name(),
            "preprocess": self.preprocess.fingerprint(),
            "mean": list(self.config.mean),
            "std": list(self.config.std),
            "threshold": self.threshold,
            "character_threshold": self.character_threshold,
            "mcut": self.mcut,
            "prior_odds": self.prior_odds,
        }

    def features(self) -> dict:
        return {probs_column("tagger"): self.schema.probs_feature(), **self.output_features()}

    @staticmethod
    def output_features() -> dict:
        """The columns besides ``probs_tagger`` that the annotated dataset keeps."""
        return {
            "tagger_tags": List(Value("string")),
            "tagger_characters": List(Value("string")),
            "tagger_rating": Value("string"),
        }

    def input_columns(self) -> list[str]:
        return [_PIXELS]

    def __repr__(self) -> str:
        return f"TaggerStage({self.spec.describe()!r}, fingerprint={self.fingerprint()!r})"

    # -- set-up --------------------------------------------------------------------------------
    def _device_name(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _precision_name(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "fp16" if (self.device or "").startswith("cuda") or (self.device is None and _cuda()) else "fp32"

    def _key(self) -> tuple:
        return (self.model_fingerprint, self._device_name(), self._precision_name(), os.getpid())

    def setup(self) -> None:
        key = self._key()
        if key in _REGISTRY:
            return
        import torch

        device = torch.device(self._device_name())
        model = _load_model(self.spec.local_dir(), self.config, str(device), self._precision_name())
        dtype = next(model.parameters()).dtype
        mean = torch.tensor(self.config.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        _REGISTRY[key] = {"model": model, "device": device, "dtype": dtype, "mean": mean, "std": std}
        logger.info("loaded tagger %s on %s (%s)", self.spec.describe(), device, dtype)

    # -- processing -------------------------------------------------------------------------------
    def scores(self, pixel_blobs: Sequence[bytes]) -> np.ndarray:
        """Sigmoid scores ``(n, num_tags)`` float32 for prepared images (``_tagger_pixels``), in batches."""
        import torch

        self.setup()
        reg = _REGISTRY[self._key()]
        h, w = self.config.image_size
        cuda = reg["device"].type == "cuda"
        out = []
        with torch.inference_mode():
            for s in range(0, len(pixel_blobs), self.batch_size):
                part = pixel_blobs[s: s + self.batch_size]
                arr = np.stack([np.frombuffer(b, dtype=np.uint8) for b in part]).reshape(len(part), h, w, 3)
                x = torch.from_numpy(arr)
                if cuda:
                    x = x.pin_memory().to(reg["device"], non_blocking=True)
                # [timm]: ToTensor (uint8 -> [0, 1]) and Normalize(pretrained_cfg mean, std) in RGB order, then
                # ``inputs[:, [2, 1, 0]]`` (RGB -> BGR); [Space] feeds BGR too (``image_array[:, :, ::-1]``), its
                # ONNX graph normalising inside. Normalising before the flip uses each channel's own mean/std.
                x = x.permute(0, 3, 1, 2).float().div_(255.0).sub_(reg["mean"]).div_(reg["std"])
                x = x[:, [2, 1, 0]].to(reg["dtype"])
                logits = reg["model"](x)
                # [timm]: ``F.sigmoid(outputs)``; the WD models output logits
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.tag_names)), dtype=np.float32)

    def row(self, scores: np.ndarray) -> dict[str, Any]:
        """The output columns of one image from its tag scores."""
        names = self.tag_names
        general = select_tags([names[i] for i in self._general], scores[self._general], self.threshold, self.mcut)
        chars = select_tags([names[i] for i in self._character], scores[self._character], self.character_threshold,
                            self.mcut, floor=0.15)
        rating = names[int(self._rating[np.argmax(scores[self._rating])])] if self._rating.size else None
        return {
            probs_column("tagger"): _attribute_probs(self.schema, self._amap, scores, self.prior_odds),
            "tagger_tags": general,
            "tagger_characters": chars,
            "tagger_rating": rating,
        }

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        pixels = batch[_PIXELS]
        errors = batch.get(ERROR) or [None] * len(pixels)
        todo = [i for i, (p, e) in enumerate(zip(pixels, errors)) if p is not None and e is None]
        cols = list(self.features())
        out: dict[str, list] = {c: [None] * len(pixels) for c in cols}
        if todo:
            scores = self.scores([pixels[i] for i in todo])
            for i, s in zip(todo, scores):
                for c, v in self.row(s).items():
                    out[c][i] = v
        return out


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False
