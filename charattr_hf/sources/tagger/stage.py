"""The WD tagger source: SmilingWolf's WD v3 taggers (or any timm tagger of the same layout) as ``probs_tagger``.

On anime and illustration datasets the attribute source practitioners trust is a WD tagger (kohya's sd-scripts,
waifuc and imgutils all tag with one). The v3 taggers are timm checkpoints published as a folder: ``config.json``
(``architecture``, ``model_args``, ``pretrained_cfg``), ``model.safetensors`` and ``selected_tags.csv``
(``tag_id,name,category,count``; category 0 general, 4 character, 9 rating).

``--tagger`` takes (:meth:`TaggerSpec.parse`, resolved by :func:`charattr_hf.loading.resolve_model`):

- ``SmilingWolf/wd-vit-tagger-v3`` or ``hf-hub:SmilingWolf/wd-vit-tagger-v3`` (with ``--tagger_revision``; the three
  files are fetched once, at the commit the revision points to, and only those: safetensors weights, never a
  pickle);
- ``local-dir:/path`` (or an existing folder path) of the same layout;
- ``demo``: the small tagger shipped in the package (``charattr_hf/assets/demo-tagger``, synthetic characters only).

Preprocessing follows the reference implementations exactly; each step names its source:

- [Space] the wd-tagger Space (huggingface.co/spaces/SmilingWolf/wd-tagger, ``app.py``, ``Predictor.prepare_image``);
- [timm] the WD v3 timm inference script (github.com/neggles/wdv3-timm, ``wdv3_timm.py`` at 2f49e85).

Pixels (:attr:`TaggerStage.pixel_spec`, made by the shared decode stage in the ``num_proc`` decode map, from the one
decode of each image): alpha composited over white, padded to a square with white, bicubic resize to the
checkpoint's input size; uint8 RGB (``pad_square`` in :mod:`charattr_hf.stages.pixels`). Device part
(:class:`TaggerStage`): scale to [0, 1], normalise with the checkpoint's ``pretrained_cfg`` mean/std, RGB -> BGR, the
model in batches (fp16 on GPU), sigmoid.

Outputs, per row:

- ``probs_tagger``: per attribute of the schema, through the schema's tag aliases (the alias table the tag parser
  reads, :func:`charattr_hf.sources.tags.stage.alias_table`): the score of ``blonde_hair`` is evidence for
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

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from datasets import List, Value

from ...errors import ModelLoadError, UserError
from ...loading import ModelRef, ResolvedModel, resolve_model
from ...schema import Schema, load_schema, probs_column
from ...stages.base import ERROR, Stage
from ...stages.pixels import PixelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "TaggerSpec",
    "TaggerConfig",
    "TaggerStage",
    "mcut_threshold",
    "select_tags",
    "read_selected_tags",
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

    ref: ModelRef

    @classmethod
    def parse(cls, value: str, revision: str | None = None) -> "TaggerSpec":
        """A Hub id, ``hf-hub:``, ``local-dir:``, a folder or ``demo``; a folder's files are checked now."""
        value = str(value).strip()
        if value == DEMO_TAGGER:
            folder = demo_tagger_dir()
            if folder is None:
                raise UserError("--tagger demo: this installation ships no demo tagger "
                                "(charattr_hf/assets/demo-tagger)")
            ref = ModelRef.local(folder, what="tagger", name=DEMO_TAGGER)
        else:
            try:
                ref = ModelRef.parse(value, revision, what="tagger", flag="--tagger")
            except UserError as exc:
                raise UserError(f"{exc} (a WD tagger, e.g. SmilingWolf/wd-vit-tagger-v3, or a folder with "
                                f"{', '.join(TAGGER_FILES)}; 'demo': the shipped one)") from None
        spec = cls(ref)
        if ref.is_local:
            spec.resolved()  # a folder that lacks a file ends here
        return spec

    @property
    def is_local(self) -> bool:
        return self.ref.is_local

    def resolved(self) -> ResolvedModel:
        """The three files (a Hub repo's fetched once, at the commit its revision points to)."""
        return resolve_model(self.ref, required=TAGGER_FILES)

    def local_dir(self) -> Path:
        return self.resolved().folder

    def fingerprint(self) -> str:
        """Identifies the weights and tags: a content hash for a folder, the commit for a Hub repo."""
        return self.resolved().fingerprint

    def describe(self) -> str:
        return self.ref.describe()


def read_selected_tags(path: str | Path) -> tuple[list[str], list[int]]:
    """Names and categories of a ``selected_tags.csv`` (columns ``tag_id,name,category,count``)."""
    names, cats = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"name", "category"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns tag_id,name,category,count (got {reader.fieldnames})")
        for row in reader:
            names.append(row["name"])
            cats.append(int(row["category"]))
    return names, cats


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
    from ..tags.stage import _COUNT_FLAGS, alias_table, parse_count_tag

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
        pixels_column: the decode stage's column of :attr:`pixel_spec` (default: the spec's own name).
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
        pixels_column: str | None = None,
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
        # the reference preprocessing ([Space], [timm]), made by the shared decode stage; BGR and the checkpoint's
        # mean/std applied on the device
        self.pixel_spec = PixelSpec(self.config.image_size, "pad_square", self.config.interpolation, fill="white",
                                    crop_pct=self.config.crop_pct, order="BGR", mean=self.config.mean,
                                    std=self.config.std)
        self.pixels_column = pixels_column or self.pixel_spec.column
        unmapped = [a.name for a, labels in zip(self.schema, self._amap) if not any(labels)]
        if unmapped:
            logger.info("tagger %s knows no tag of %s: probs_tagger is null there", self.spec.describe(), unmapped)

    # -- description ------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "schema": self.schema.fingerprint(),
            "model": self.model_fingerprint,
            "precision": self._precision_name(),
            "pixels": self.pixel_spec.geometry(),
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
        return [self.pixels_column]

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
        mean = torch.tensor(self.pixel_spec.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_spec.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        _REGISTRY[key] = {"model": model, "device": device, "dtype": dtype, "mean": mean, "std": std}
        logger.info("loaded tagger %s on %s (%s)", self.spec.describe(), device, dtype)

    # -- processing -------------------------------------------------------------------------------
    def scores(self, pixel_blobs: Sequence[bytes]) -> np.ndarray:
        """Sigmoid scores ``(n, num_tags)`` float32 for prepared images (:attr:`pixel_spec`'s), in batches."""
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
                if self.pixel_spec.order == "BGR":
                    x = x[:, [2, 1, 0]]
                x = x.to(reg["dtype"])
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
        pixels = batch[self.pixels_column]
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
