"""Planted near-duplicates: edited copies of synthetic characters with known groups, for tests and benchmarks.

:func:`planted_set` draws ``n_originals`` distinct synthetic characters (all styles; distinct characters share
their composition, so they are hard to tell apart by grey structure alone) and gives each of the first
``n_with_copies`` of them ``copies`` edited copies. Each copy gets one to three edits of a kind:

``mild`` (the first group, which the curation targets: a copy anyone would call a duplicate)
    ``resize`` (50-90% of the side), ``jpeg`` (quality 50-90), ``crop`` (at most 5% of the area in all, any
    sides), ``border`` (a flat frame 2-4% of the side), ``brightness`` (x0.88-1.12), ``color`` (saturation
    x0.85-1.15 and a slight per-channel gain), ``text`` (a short stamp in a corner, <= 2% of the area).
``hard`` (reported separately)
    ``flip`` (mirror image) and ``heavy_crop`` (15-30% of the area cut away).

Rows: ``id``, ``image`` (PNG bytes, or JPEG for ``jpeg`` edits), ``group`` (the original's index: the same for
an original and its copies), ``edits`` (the names applied; empty for originals) and ``kind`` (``original``,
``mild`` or ``hard``). Uses PIL and numpy only.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

__all__ = ["MILD_EDITS", "HARD_EDITS", "edit", "planted_set", "planted_rows"]

MILD_EDITS = ("resize", "jpeg", "crop", "border", "brightness", "color", "text")
HARD_EDITS = ("flip", "heavy_crop")


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _crop(img: Image.Image, rng: np.random.Generator, area: float) -> Image.Image:
    """Cut away about ``area`` of the picture, spread over the four sides at random."""
    w, h = img.size
    keep = 1.0 - area
    kx = float(np.clip(np.sqrt(keep) * rng.uniform(0.97, 1.03), keep, 1.0))
    ky = keep / kx
    left = rng.uniform(0, 1 - kx) * w
    top = rng.uniform(0, 1 - ky) * h
    return img.crop((round(left), round(top), round(left + kx * w), round(top + ky * h)))


def edit(img: Image.Image, name: str, rng: np.random.Generator) -> tuple[Image.Image, dict[str, Any]]:
    """Apply one edit; returns the image and encoding options (``{"format": "JPEG", "quality": q}`` for jpeg)."""
    w, h = img.size
    if name == "resize":
        s = rng.uniform(0.5, 0.9)
        return img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.LANCZOS), {}
    if name == "jpeg":
        return img, {"format": "JPEG", "quality": int(rng.integers(50, 91))}
    if name == "crop":
        return _crop(img, rng, rng.uniform(0.01, 0.05)), {}
    if name == "heavy_crop":
        return _crop(img, rng, rng.uniform(0.15, 0.30)), {}
    if name == "border":
        b = max(1, round(min(w, h) * rng.uniform(0.02, 0.04)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        canvas = Image.new("RGB", (w + 2 * b, h + 2 * b), colour)
        canvas.paste(img, (b, b))
        return canvas, {}
    if name == "brightness":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(0.88, 1.12)), {}
    if name == "color":
        out = ImageEnhance.Color(img).enhance(rng.uniform(0.85, 1.15))
        gain = rng.uniform(0.95, 1.05, 3)
        arr = np.asarray(out, dtype=np.float32) * gain.astype(np.float32)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), {}
    if name == "text":
        out = img.copy()
        d = ImageDraw.Draw(out)
        size = max(6, round(h * 0.06))
        try:
            font = ImageFont.load_default(size)
        except TypeError:  # Pillow without FreeType sizes
            font = ImageFont.load_default()
        text = "".join(rng.choice(list("abcdefghkmnpqrstuvwxyz0123456789"), 6))
        x = rng.uniform(0.02, 0.12) * w if rng.random() < 0.5 else w * rng.uniform(0.55, 0.62)
        y = rng.uniform(0.02, 0.06) * h if rng.random() < 0.5 else h * rng.uniform(0.88, 0.92)
        colour = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
        d.text((x, y), "@" + text, fill=colour, font=font)
        return out, {}
    if name == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {}
    raise ValueError(f"unknown edit {name!r}; known: {MILD_EDITS + HARD_EDITS}")


def edited_copy(img: Image.Image, names: Sequence[str], rng: np.random.Generator) -> bytes:
    """Apply ``names`` in order and encode (JPEG when a ``jpeg`` edit is among them, else PNG)."""
    opts: dict[str, Any] = {}
    for name in names:
        img, o = edit(img, name, rng)
        opts.update(o)
    fmt = opts.pop("format", "PNG")
    return _encode(img.convert("RGB"), fmt, **opts)


def planted_rows(
    n_originals: int = 200,
    copies: int = 2,
    n_with_copies: int | None = None,
    hard_copies: int = 0,
    size: int = 128,
    seed: int = 0,
    styles: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of a planted set (see the module docstring), originals first then copies, shuffled."""
    from ..synthetic import STYLES, item_rng, render, sample_attributes

    styles = tuple(styles or STYLES)
    n_with_copies = n_originals if n_with_copies is None else min(n_with_copies, n_originals)
    rows: list[dict[str, Any]] = []
    for i in range(n_originals):
        rng = item_rng(seed, i, 0)
        ch = sample_attributes(rng)
        style = styles[int(rng.integers(len(styles)))]
        img = render(ch, style, item_rng(seed, i, 1), size)
        rows.append({"id": f"orig-{i}", "image": _encode(img), "group": i, "edits": [], "kind": "original"})
        if i >= n_with_copies:
            continue
        erng = item_rng(seed, i, 7)
        for c in range(copies):
            k = int(erng.integers(1, 4))
            names = list(erng.choice(MILD_EDITS, size=k, replace=False))
            rows.append({"id": f"copy-{i}-{c}", "image": edited_copy(img, names, erng), "group": i,
                         "edits": names, "kind": "mild"})
        for c in range(hard_copies):
            names = [HARD_EDITS[c % len(HARD_EDITS)]]
            if erng.random() < 0.5:
                names.append(str(erng.choice(("jpeg", "resize"))))
            rows.append({"id": f"hard-{i}-{c}", "image": edited_copy(img, names, erng), "group": i,
                         "edits": names, "kind": "hard"})
    order = np.random.default_rng(seed + 1).permutation(len(rows))
    return [rows[j] for j in order]


def planted_set(*args, **kwargs):
    """:func:`planted_rows` as a ``datasets.Dataset`` with an ``image`` column of ``Image(decode=False)``."""
    from datasets import Dataset, Features, Image as ImageFeature, List, Value

    rows = planted_rows(*args, **kwargs)
    feats = Features({"id": Value("string"), "image": ImageFeature(decode=False), "group": Value("int64"),
                      "edits": List(Value("string")), "kind": Value("string")})
    data = {k: [r[k] for r in rows] for k in feats}
    data["image"] = [{"bytes": b, "path": None} for b in data["image"]]
    return Dataset.from_dict(data, features=feats)
