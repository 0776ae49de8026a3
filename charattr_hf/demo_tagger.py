"""A small WD-style tagger trained on the synthetic characters (the shipped ``--tagger demo``).

The WD v3 taggers (SmilingWolf/wd-vit-tagger-v3 and siblings) are timm image classifiers with one sigmoid output
per Danbooru tag, published as a folder: ``config.json`` (timm's ``architecture``, ``model_args`` and
``pretrained_cfg``), ``model.safetensors`` and ``selected_tags.csv`` (``tag_id,name,category,count``; category 0
general, 4 character, 9 rating). The demo tagger is the same thing, small: it exists so that the tagger source runs
offline end to end and can be measured on :mod:`charattr_hf.synthetic`, whose truth is known. It has never seen a
real image.

- :data:`DEMO_TAGGER_ARCH` / :data:`DEMO_TAGGER_ARGS`: timm ``resnet10t`` (tiered 3-conv stem, one basic block per
  stage) with narrow stages (24-192 channels), 0.7M parameters; on the 2-core CPU this trains at a few hundred
  images per second at 64 px, where a ViT of the same cost learned hair length far more slowly (see the demo CLIP's
  notes).
- :func:`demo_vocabulary`: the tags, one per label of the ``synthetic`` schema (the first, canonical tag of each:
  ``blonde_hair``, ``long_hair``, ``smile``, ``watercolor_(medium)``...) plus tags of things the drawings show that
  are no attribute (backgrounds, ``solo``, ``open_mouth``, ``monochrome``); the four WD rating tags; no character
  tags (the synthetic characters have no names).
- :func:`tag_targets`: the multi-label target of one drawn character. On sketches the colour tags are 0: the
  colours are invisible there (every region is a random gray), and a real WD tagger does not tag hair colours
  on a monochrome sketch either; the tagger source then gives flat colour distributions for sketches.
- :func:`save_tagger`: writes the WD folder layout (fp16 safetensors that load into the fp32 model).
- The model is fed exactly what :class:`~charattr_hf.sources.tagger.stage.TaggerStage` feeds a real WD tagger: the
  image padded to a square with white, resized (bicubic) to 64 px, scaled to [-1, 1] (mean = std = 0.5, as the WD
  v3 configs) and in BGR channel order.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import synthetic

__all__ = [
    "DEMO_TAGGER_ARCH",
    "DEMO_TAGGER_ARGS",
    "DEMO_TAGGER_SIZE",
    "RATING_TAGS",
    "COLOUR_PREFIXES",
    "demo_vocabulary",
    "tag_targets",
    "wd_config",
    "save_tagger",
]

DEMO_TAGGER_ARCH = "resnet10t"
DEMO_TAGGER_ARGS: dict[str, Any] = {"channels": [24, 48, 96, 192], "stem_width": 8}
DEMO_TAGGER_SIZE = 64
#: The WD v3 rating tags, in their order in selected_tags.csv (category 9).
RATING_TAGS = ("general", "sensitive", "questionable", "explicit")
#: Attributes whose tags name a colour (left at 0 for sketches).
COLOUR_PREFIXES = ("hair_color", "eye_color", "top_color")

_BACKGROUND_TAGS = ("white_background", "simple_background", "gradient_background", "abstract_background")
_EXTRA_TAGS = ("solo", "open_mouth", "closed_mouth", "monochrome", "greyscale", *_BACKGROUND_TAGS)


def demo_vocabulary(schema: Any = "synthetic") -> list[tuple[str, int, str | None, str | None]]:
    """``(tag, category, attribute, label)`` rows of the demo tagger's vocabulary, in output order: ratings, then
    one general tag per label of ``schema`` (its first tag), then the extra visual tags."""
    from .schema import load_schema

    schema = load_schema(schema)
    rows: list[tuple[str, int, str | None, str | None]] = [(t, 9, None, None) for t in RATING_TAGS]
    seen = set(RATING_TAGS)
    for attr in schema:
        for label in attr.labels:
            if not label.tags:
                continue
            tag = label.tags[0]
            if tag not in seen:
                seen.add(tag)
                rows.append((tag, 0, attr.name, label.name))
    for tag in _EXTRA_TAGS:
        if tag not in seen:
            seen.add(tag)
            rows.append((tag, 0, None, None))
    return rows


def tag_targets(
    character: synthetic.Character, style: str, vocabulary: Sequence[tuple[str, int, str | None, str | None]]
) -> np.ndarray:
    """The 0/1 target over ``vocabulary`` for one drawn character (see the module docstring for sketches)."""
    labels = character.labels(style)
    index = {row[0]: i for i, row in enumerate(vocabulary)}
    y = np.zeros(len(vocabulary), dtype=np.float32)
    for i, (tag, _cat, attr, label) in enumerate(vocabulary):
        if attr is None:
            continue
        if style == "sketch" and attr in COLOUR_PREFIXES:
            continue
        value = labels.get(attr)
        if value == label or (isinstance(value, list) and label in value):
            y[i] = 1.0
    y[index["general"]] = 1.0
    y[index["solo"]] = 1.0
    y[index["open_mouth" if character.expression in ("smile", "surprised") else "closed_mouth"]] = 1.0
    if style == "sketch":
        y[index["monochrome"]] = y[index["greyscale"]] = 1.0
    for tag in {"white": ("white_background", "simple_background"), "simple": ("simple_background",),
                "gradient": ("gradient_background",), "noise": ("abstract_background",)}[character.background]:
        y[index[tag]] = 1.0
    return y


def wd_config(num_classes: int, num_features: int, image_size: int = DEMO_TAGGER_SIZE,
              architecture: str = DEMO_TAGGER_ARCH, model_args: Mapping[str, Any] | None = None) -> dict:
    """``config.json`` of a WD v3 tagger folder (the fields timm's ``local-dir:``/``hf-hub:`` loaders read)."""
    return {
        "architecture": architecture,
        "num_classes": int(num_classes),
        "num_features": int(num_features),
        "global_pool": "avg",
        "model_args": dict(DEMO_TAGGER_ARGS if model_args is None else model_args),
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": [3, int(image_size), int(image_size)],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": int(num_classes),
            "pool_size": None,
            "first_conv": None,
            "classifier": None,
        },
    }


def save_tagger(
    model,
    folder: str | Path,
    config: Mapping[str, Any],
    vocabulary: Sequence[tuple[str, int, Any, Any]],
    counts: Sequence[int] | None = None,
    dtype: str = "fp16",
) -> Path:
    """Write a WD tagger folder: ``config.json``, ``model.safetensors`` (``dtype``), ``selected_tags.csv``."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cast = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    state = {k: v.detach().to("cpu", cast if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "model.safetensors").chmod(0o644)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
    with open(folder / "selected_tags.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, row in enumerate(vocabulary):
            writer.writerow([i, row[0], row[1], int(counts[i]) if counts is not None else 0])
    return folder
