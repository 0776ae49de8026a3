"""Attribute schema: labels, CLIP prompts and tag aliases, and the typed `datasets.Features` they imply.

A schema is a YAML file::

    name: default
    version: 1
    attributes:
      hair_color:
        description: Dominant hair colour.
        templates: ["a picture of a character with {} hair."]   # "{}" takes each label's text
        labels:
          black: [black_hair]                 # short form: the danbooru tags for this label
          blonde:                             # long form
            text: blonde                      # what "{}" becomes (default: name with spaces)
            tags: [blonde_hair, blond_hair]   # danbooru-style tags meaning this label
            phrases: [blond hair]             # extra free-text phrases for captions
            prompts: ["a character with golden blonde hair."]   # full prompts, replace the templates
      accessories:
        multi_label: true                     # a list of labels per image
        templates: ["a picture of a character wearing {}."]
        negative_templates: ["a picture of a character without {}."]
        labels: {glasses: [glasses, round_eyewear], hat: [hat]}
        question: "is the character wearing {}?"   # optional, for question-answering sources (BLIP-2)

Output columns, for an attribute ``a`` (see :meth:`Schema.output_features`):
``a`` (ClassLabel, or a list of them when multi-label), ``a_confidence`` (float32, or a list aligned with
``a``), and per source ``probs_<source>.a`` (one float32 per label; null where the source had no evidence).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from datasets import ClassLabel, Features, List, Value

__all__ = ["Attribute", "Label", "Schema", "load_schema", "list_schemas", "probs_column", "probs_sources",
           "QUALITY_FIELDS", "QUALITY_FEATURES", "SIGNATURE_FEATURES"]


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DEFAULT_TEMPLATES = ("a picture of a character with {}.",)
_DEFAULT_NEGATIVE_TEMPLATES = ("a picture of a character without {}.",)


class SchemaError(ValueError):
    """A schema file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Label:
    name: str
    text: str
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attribute:
    name: str
    labels: tuple[Label, ...]
    multi_label: bool = False
    description: str = ""
    threshold: float = 0.5
    #: question for question-answering sources; None = a default question, "" = not asked
    question: str | None = None

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        for i, lab in enumerate(self.labels):
            if lab.name == label:
                return i
        raise KeyError(f"{self.name!r} has no label {label!r}; labels: {self.label_names}")

    def class_label(self) -> ClassLabel:
        return ClassLabel(names=self.label_names)

    def label_feature(self):
        return List(self.class_label()) if self.multi_label else self.class_label()

    def confidence_feature(self):
        return List(Value("float32")) if self.multi_label else Value("float32")

    def probs_feature(self):
        return List(Value("float32"), length=self.num_labels)


@dataclass(frozen=True)
class Schema:
    name: str
    attributes: tuple[Attribute, ...]
    version: int = 1
    description: str = ""
    source_path: str | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source_path: str | None = None) -> "Schema":
        if not isinstance(data, Mapping) or "attributes" not in data:
            raise SchemaError(f"{source_path or 'schema'}: expected a mapping with an 'attributes' key")
        defaults = data.get("defaults") or {}
        templates = tuple(defaults.get("templates", _DEFAULT_TEMPLATES))
        neg_templates = tuple(defaults.get("negative_templates", _DEFAULT_NEGATIVE_TEMPLATES))
        attrs = []
        raw_attrs = data["attributes"]
        if not isinstance(raw_attrs, Mapping) or not raw_attrs:
            raise SchemaError(f"{source_path or 'schema'}: 'attributes' must be a non-empty mapping")
        for attr_name, spec in raw_attrs.items():
            attrs.append(_parse_attribute(attr_name, spec or {}, templates, neg_templates, source_path))
        schema = cls(
            name=str(data.get("name", Path(source_path).stem if source_path else "custom")),
            attributes=tuple(attrs),
            version=int(data.get("version", 1)),
            description=str(data.get("description", "")).strip(),
            source_path=source_path,
        )
        schema._check_tags()
        return schema

    def _check_tags(self) -> None:
        seen: dict[str, str] = {}
        for attr in self.attributes:
            for label in attr.labels:
                for tag in label.tags:
                    key = f"{attr.name}:{tag}"
                    if key in seen and seen[key] != label.name:
                        raise SchemaError(
                            f"tag {tag!r} maps to both {seen[key]!r} and {label.name!r} in {attr.name!r}"
                        )
                    seen[key] = label.name

    # ------------------------------------------------------------------ access
    def __getitem__(self, name: str) -> Attribute:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        raise KeyError(f"schema {self.name!r} has no attribute {name!r}; attributes: {self.attribute_names}")

    def __contains__(self, name: object) -> bool:
        return any(attr.name == name for attr in self.attributes)

    def __iter__(self):
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    @property
    def attribute_names(self) -> list[str]:
        return [attr.name for attr in self.attributes]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.description:
            out["description"] = self.description
        out["attributes"] = {}
        for attr in self.attributes:
            a: dict[str, Any] = {}
            if attr.description:
                a["description"] = attr.description
            if attr.multi_label:
                a["multi_label"] = True
                a["threshold"] = attr.threshold
            if attr.question is not None:
                a["question"] = attr.question
            a["labels"] = {}
            for label in attr.labels:
                lab: dict[str, Any] = {"text": label.text, "prompts": list(label.prompts)}
                if attr.multi_label:
                    lab["negative_prompts"] = list(label.negative_prompts)
                if label.tags:
                    lab["tags"] = list(label.tags)
                if label.phrases:
                    lab["phrases"] = list(label.phrases)
                a["labels"][label.name] = lab
            out["attributes"][attr.name] = a
        return out

    def fingerprint(self) -> str:
        """Stable hash of everything that changes annotations (labels, prompts, tags)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    def restrict(self, keep: Mapping[str, Iterable[str] | None], name: str | None = None) -> "Schema":
        """A schema with only some attributes (and, where given, only some of their labels, in that order)."""
        attrs = []
        for attr_name, label_names in keep.items():
            attr = self[attr_name]
            if label_names is not None:
                labels = tuple(attr.labels[attr.index(n)] for n in label_names)
                attr = replace(attr, labels=labels)
            attrs.append(attr)
        return Schema(name or f"{self.name}-restricted", tuple(attrs), self.version, self.description)

    # ------------------------------------------------------------------ features
    def label_features(self) -> Features:
        """One column per attribute: the (list of) ClassLabel."""
        return Features({attr.name: attr.label_feature() for attr in self.attributes})

    def probs_feature(self) -> dict:
        """Struct of per-attribute probability vectors, as one source emits them."""
        return {attr.name: attr.probs_feature() for attr in self.attributes}

    def output_features(self, sources: Iterable[str], embedding_dim: int | None = None) -> Features:
        """The typed columns of an annotated dataset made by ``sources`` (without pass-through columns and the
        columns a source adds besides its ``probs_<source>``)."""
        feats: dict[str, Any] = {
            "id": Value("string"),
            "index": Value("int64"),
            "path": Value("string"),
            "sha256": Value("string"),
            "error": Value("string"),
            "flags": List(Value("string")),
            "width": Value("int32"),
            "height": Value("int32"),
            "quality": QUALITY_FEATURES,
            "signature": dict(SIGNATURE_FEATURES),  # near-duplicate signatures (#11)
        }
        for attr in self.attributes:
            feats[attr.name] = attr.label_feature()
            feats[f"{attr.name}_confidence"] = attr.confidence_feature()
        for source in sources:
            feats[probs_column(source)] = self.probs_feature()
        if embedding_dim:
            feats["embedding"] = List(Value("float16"), length=embedding_dim)
        return Features(feats)

    def truth_feature(self) -> dict:
        """Struct column ``truth`` holding ground truth typed like the predictions."""
        return {attr.name: attr.label_feature() for attr in self.attributes}


#: Quality measurements made while decoding, stored in the ``quality`` struct column.
QUALITY_FIELDS = ("brightness", "contrast", "saturation", "colorfulness", "sharpness")
QUALITY_FEATURES = {name: Value("float32") for name in QUALITY_FIELDS}
#: Near-duplicate signatures made while decoding, stored in the ``signature`` struct column
#: (:mod:`charattr_hf.stages.signatures`).
#: The ``signature`` column's type (see :mod:`charattr_hf.stages.signatures`): strings and numbers, so a printed
#: row stays readable.
SIGNATURE_FEATURES = {
    "phash": Value("string"),
    "thumb": Value("string"),
    "keypoints": Value("string"),
    "format": Value("string"),
    "content_width": Value("int32"),
    "content_height": Value("int32"),
    "lossless": Value("bool"),
    "jpeg_quality": Value("int16"),
    "bits_per_pixel": Value("float32"),
}


def probs_column(source: str) -> str:
    return f"probs_{source}"


def probs_sources(columns: Iterable[str]) -> list[str]:
    """The sources that ``columns`` hold probabilities of (``probs_<source>``), in the columns' order."""
    return [c[len("probs_"):] for c in columns if c.startswith("probs_")]


def _as_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    raise SchemaError(f"{what}: expected a string or a list of strings, got {type(value).__name__}")


def _parse_attribute(name, spec, templates, neg_templates, source_path) -> Attribute:
    where = f"{source_path or 'schema'}: attribute {name!r}"
    if not _NAME.match(str(name)):
        raise SchemaError(f"{where}: names must be lower_snake_case")
    if not isinstance(spec, Mapping):
        raise SchemaError(f"{where}: expected a mapping")
    multi = bool(spec.get("multi_label", False))
    attr_templates = _as_list(spec.get("templates"), where) or templates
    attr_neg = _as_list(spec.get("negative_templates"), where) or neg_templates
    raw_labels = spec.get("labels")
    if isinstance(raw_labels, (list, tuple)):
        raw_labels = {str(n): None for n in raw_labels}
    if not isinstance(raw_labels, Mapping) or len(raw_labels) < (1 if multi else 2):
        raise SchemaError(f"{where}: needs 'labels' (at least {1 if multi else 2})")
    labels = []
    for label_name, lspec in raw_labels.items():
        lwhere = f"{where}, label {label_name!r}"
        if not _NAME.match(str(label_name)):
            raise SchemaError(f"{lwhere}: names must be lower_snake_case")
        if lspec is None or isinstance(lspec, (list, tuple, str)):
            lspec = {"tags": lspec}
        if not isinstance(lspec, Mapping):
            raise SchemaError(f"{lwhere}: expected a list of tags or a mapping")
        text = str(lspec.get("text", str(label_name).replace("_", " ")))
        prompts = _as_list(lspec.get("prompts"), lwhere) or tuple(t.replace("{}", text) for t in attr_templates)
        negatives: tuple[str, ...] = ()
        if multi:
            negatives = _as_list(lspec.get("negative_prompts"), lwhere) or tuple(
                t.replace("{}", text) for t in attr_neg
            )
        tags = tuple(normalize_tag(t) for t in _as_list(lspec.get("tags"), lwhere))
        phrases = tuple(p.lower() for p in _as_list(lspec.get("phrases"), lwhere))
        labels.append(Label(str(label_name), text, prompts, negatives, tags, phrases))
    names = [lab.name for lab in labels]
    if len(set(names)) != len(names):
        raise SchemaError(f"{where}: duplicate label names")
    threshold = float(spec.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise SchemaError(f"{where}: threshold must be in (0, 1)")
    question = spec.get("question")
    if question is False:
        question = ""
    elif question is not None and not isinstance(question, str):
        raise SchemaError(f"{where}: question must be a string (or false to skip the attribute)")
    return Attribute(
        str(name),
        tuple(labels),
        multi,
        str(spec.get("description", "")).strip(),
        threshold,
        None if question is None else question.strip(),
    )


def normalize_tag(tag: str) -> str:
    """Danbooru normal form: lower case, spaces to underscores, outer whitespace stripped."""
    return re.sub(r"\s+", "_", str(tag).strip().lower())


def list_schemas() -> list[str]:
    """Names of the schemas shipped with the package."""
    folder = resources.files("charattr_hf") / "schemas"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_schema(name_or_path: "str | Path | Schema | None" = None) -> Schema:
    """Load a shipped schema by name (``default``) or a YAML file by path."""
    if isinstance(name_or_path, Schema):
        return name_or_path
    name_or_path = name_or_path or "default"
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"schema file not found: {path}")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("charattr_hf") / "schemas" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise FileNotFoundError(
                f"no shipped schema named {str(name_or_path)!r}; shipped: {list_schemas()}, or pass a YAML path"
            )
        text, source = res.read_text(), f"charattr_hf/schemas/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SchemaError(f"{source}: not valid YAML: {exc}") from exc
    return Schema.from_dict(data, source_path=source)
