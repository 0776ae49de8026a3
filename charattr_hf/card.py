"""Pictures for the dataset card, drawn with Pillow from the annotated Parquet files.

- ``images/<split>-labels.png``: label distribution per attribute (horizontal bars, count and share);
- ``images/<split>-confidence.png``: histograms of the fused confidence per attribute;
- ``images/<split>-agreement.png``: how often each source's top label equals the fused label, and how often
  two sources agree with each other, per attribute (rows where both have an answer);
- ``images/<split>-samples-<attribute>.png``: per label, thumbnails of the rows labelled with it most
  confidently, when the images can be read (an ``image`` column kept with ``--keep_images``, or the ``path``
  of a local file); otherwise no grid is drawn and the card says why.

Everything is read in bounded batches of the needed columns (the images only for the few rows shown), so
a card for millions of rows costs one pass over the small columns.
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageColor, ImageDraw, ImageFont

from .image_access import read_verified
from .schema import probs_sources
from .summary import _label_info, features_of

logger = logging.getLogger(__name__)

__all__ = ["CardFigures", "draw_card_figures", "IMAGES_DIR", "load_font", "open_thumbnail"]

IMAGES_DIR = "images"
MULTI_THRESHOLD = 0.5
HIST_BINS = 10
_BG = (255, 255, 255)
_FG = (34, 34, 34)
_GRID = (220, 220, 220)
_MUTED = (110, 110, 110)
_BAR = (76, 114, 176)  # a bar whose label names no colour
_OUTLINE = (120, 120, 120)
#: Colour names of hair, eyes and clothes whose CSS colour would mislead (CSS "brown" is brick red) or that CSS
#: does not know; other names are read as CSS colours (pink, aqua, light_blue...).
_HAIR_COLOURS = {"blonde": (235, 205, 120), "blond": (235, 205, 120), "brown": (120, 80, 45), "grey": (150, 150, 150),
                 "gray": (150, 150, 150), "silver": (195, 195, 200), "platinum": (229, 228, 226),
                 "orange": (240, 140, 40), "aqua": (60, 200, 200)}


@dataclass
class CardFigures:
    """What was drawn: paths relative to the output folder, and why a figure is missing when one is."""

    labels: str | None = None
    confidence: str | None = None
    agreement: str | None = None
    samples: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- drawing
def load_font(size: int):
    """Pillow's default font at ``size`` (a fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _text_w(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    return int(draw.textlength(text, font=font))


def _fit(draw, text: str, font, width: int) -> str:
    if _text_w(draw, text, font) <= width:
        return text
    while text and _text_w(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


def _grid(panels: list[Image.Image], columns: int, title: str, pad: int = 16) -> Image.Image:
    """Panels of equal width in rows of ``columns``, under a title."""
    font = load_font(20)
    w = max(p.width for p in panels)
    rows = [panels[i : i + columns] for i in range(0, len(panels), columns)]
    heights = [max(p.height for p in row) for row in rows]
    width = columns * w + (columns + 1) * pad
    img = Image.new("RGB", (width, 48 + sum(heights) + pad * (len(rows) + 1)), _BG)
    ImageDraw.Draw(img).text((pad, 14), title, font=font, fill=_FG)
    y = 48 + pad
    for row, h in zip(rows, heights):
        for j, panel in enumerate(row):
            img.paste(panel, (pad + j * (w + pad), y))
        y += h + pad
    return img


def label_colour(label: str) -> tuple[int, int, int] | None:
    """The colour a label names (``pink``, ``light_blue``, ``blonde``...), or None when it names none."""
    name = label.strip().lower().replace("-", "_").replace(" ", "_")
    if name.endswith("_hair"):  # a tag-style label: blonde_hair
        name = name[: -len("_hair")]
    if name in _HAIR_COLOURS:
        return _HAIR_COLOURS[name]
    try:
        return ImageColor.getrgb(name.replace("_", ""))[:3]  # type: ignore[return-value]
    except ValueError:
        return None


def _bars_panel(name: str, counts: list[tuple[str, int]], total: int, width: int = 460) -> Image.Image:
    """Horizontal bars, one per label, with the count and the share of annotated rows. A label that names a colour
    has a bar of that colour (outlined, so that white shows); the others share one colour."""
    title, small = load_font(16), load_font(13)
    row_h, label_w, top = 20, 120, 30
    img = Image.new("RGB", (width, top + row_h * max(len(counts), 1) + 10), _BG)
    d = ImageDraw.Draw(img)
    d.text((0, 4), f"{name}  ({total} rows)", font=title, fill=_FG)
    bar_w = width - label_w - 90
    peak = max([c for _, c in counts] + [1])
    for i, (label, count) in enumerate(counts):
        y = top + i * row_h
        d.text((0, y + 2), _fit(d, label, small, label_w - 6), font=small, fill=_FG)
        length = int(round(bar_w * count / peak))
        colour = label_colour(label)
        d.rectangle([label_w, y + 3, label_w + max(length, 1), y + row_h - 3], fill=colour or _BAR,
                    outline=_OUTLINE if colour else None)
        share = count / total if total else 0.0
        d.text((label_w + length + 6, y + 2), f"{count} ({share:.0%})", font=small, fill=_MUTED)
    return img


def _histogram_panel(name: str, counts: np.ndarray, total: float, width: int = 300, height: int = 190) -> Image.Image:
    title, small = load_font(16), load_font(12)
    img = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(img)
    n, bins = int(counts.sum()), len(counts)
    mean = f", mean {total / n:.2f}" if n else ""
    d.text((0, 2), _fit(d, f"{name} (n={n}{mean})", title, width), font=title, fill=_FG)
    left, top, bottom = 34, 28, height - 22
    plot_w = width - left - 6
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    d.line([left, top, left, bottom], fill=_GRID)
    d.line([left, bottom, width - 6, bottom], fill=_GRID)
    d.text((0, top - 2), str(peak), font=small, fill=_MUTED)
    d.text((0, bottom - 12), "0", font=small, fill=_MUTED)
    step = plot_w / bins
    for i, c in enumerate(counts):
        h = int(round((bottom - top) * c / peak))
        x0 = left + int(i * step) + 1
        d.rectangle([x0, bottom - h, left + int((i + 1) * step) - 1, bottom], fill=_BAR)
    for tick in (0.0, 0.5, 1.0):
        x = left + int(tick * plot_w)
        label = f"{tick:g}"
        d.text((min(x - _text_w(d, label, small) // 2, width - 20), bottom + 4), label, font=small, fill=_MUTED)
    return img


def _shade(value: float) -> tuple[int, int, int]:
    """White (0) to green (1)."""
    v = min(max(value, 0.0), 1.0)
    return tuple(int(round(a + (b - a) * v)) for a, b in zip((252, 252, 252), (65, 160, 95)))  # type: ignore[return-value]


def _agreement_table(attrs: list[str], columns: list[str], cells: dict, title: str) -> Image.Image:
    """Rows: attributes; columns: comparisons; a cell: share of rows that agree (and how many were compared)."""
    head, font, small = load_font(20), load_font(14), load_font(11)
    name_w, cell_w, cell_h = 150, 130, 38
    width = name_w + cell_w * len(columns) + 20
    img = Image.new("RGB", (width, 60 + 40 + cell_h * len(attrs) + 40), _BG)
    d = ImageDraw.Draw(img)
    d.text((10, 14), title, font=head, fill=_FG)
    y0 = 60
    for j, col in enumerate(columns):
        d.text((name_w + j * cell_w + 6, y0 + 10), _fit(d, col, font, cell_w - 8), font=font, fill=_FG)
    for i, attr in enumerate(attrs):
        y = y0 + 40 + i * cell_h
        d.text((10, y + 10), _fit(d, attr, font, name_w - 14), font=font, fill=_FG)
        for j, col in enumerate(columns):
            x = name_w + j * cell_w
            agree, n = cells.get((attr, col), (0, 0))
            if not n:
                d.rectangle([x + 2, y + 2, x + cell_w - 2, y + cell_h - 2], outline=_GRID)
                d.text((x + 10, y + 10), "-", font=font, fill=_MUTED)
                continue
            share = agree / n
            d.rectangle([x + 2, y + 2, x + cell_w - 2, y + cell_h - 2], fill=_shade(share))
            d.text((x + 10, y + 4), f"{share:.0%}", font=font, fill=_FG)
            d.text((x + 10, y + 21), f"of {n}", font=small, fill=_FG)
    d.text((10, y0 + 40 + len(attrs) * cell_h + 12),
           "share of rows where both have an answer and agree (top label; multi-label: the same set at 0.5)",
           font=small, fill=_MUTED)
    return img


def _samples_grid(attr: str, rows: list[tuple[str, list[tuple[Image.Image, float]]]], thumb: int) -> Image.Image:
    title, font, small = load_font(20), load_font(14), load_font(11)
    label_w, pad = 130, 6
    per_row = max([len(t) for _, t in rows] + [1])
    width = label_w + per_row * (thumb + pad) + pad
    img = Image.new("RGB", (max(width, 420), 50 + len(rows) * (thumb + 18 + pad)), _BG)
    d = ImageDraw.Draw(img)
    d.text((10, 12), f"{attr}: most confident rows per label", font=title, fill=_FG)
    for i, (label, thumbs) in enumerate(rows):
        y = 50 + i * (thumb + 18 + pad)
        d.text((10, y + thumb // 2 - 8), _fit(d, label, font, label_w - 16), font=font, fill=_FG)
        if not thumbs:
            d.text((label_w, y + thumb // 2 - 8), "no rows", font=small, fill=_MUTED)
        for j, (im, conf) in enumerate(thumbs):
            x = label_w + j * (thumb + pad)
            tile = im.copy()
            tile.thumbnail((thumb, thumb))
            d.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline=_GRID)
            img.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
            d.text((x + 2, y + thumb + 2), f"{conf:.2f}", font=small, fill=_MUTED)
    return img


# ---------------------------------------------------------------------------------------------- reading
def _top(values, multi: bool):
    """A source's answer for one attribute: the argmax, or the set of labels at >= 0.5."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float32)
    if not len(arr) or not np.isfinite(arr).all():
        return None
    return frozenset(np.flatnonzero(arr >= MULTI_THRESHOLD).tolist()) if multi else int(arr.argmax())


def draw_card_figures(
    output_dir: str | Path,
    split: str,
    files: Sequence[Path],
    *,
    thumbnails: int = 6,
    thumb_size: int = 72,
    max_labels: int = 16,
    batch_rows: int = 8192,
) -> CardFigures:
    """Draw the card's PNGs for ``split`` into ``output_dir/images`` and say what was drawn."""
    output_dir = Path(output_dir)
    files = [Path(f) for f in files]
    features = features_of(files)
    attrs = {n: i for n, f in features.items() if f"{n}_confidence" in features and (i := _label_info(f))}
    sources = probs_sources(features)
    figures = CardFigures()
    if not attrs:
        figures.notes.append("no attribute columns: nothing to draw")
        return figures
    names = list(attrs)
    cols = ["error", *names, *(f"{a}_confidence" for a in names), *(f"probs_{s}" for s in sources)]
    counts = {a: Counter() for a in names}
    annotated = Counter()
    hist = {a: np.zeros(HIST_BINS, dtype=np.int64) for a in names}  # fused confidence, streamed
    conf_sum = Counter()
    comparisons = [f"{s} = fused" for s in sources] + [f"{a} = {b}" for a, b in itertools.combinations(sources, 2)]
    cells: dict[tuple[str, str], list[int]] = {}
    best: dict[tuple[str, int], list] = {}  # (attr, label) -> min-heap of (confidence, file, row)

    for fi, path in enumerate(files):
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=cols):
            data = batch.to_pydict()
            errors = data["error"]
            for a in names:
                labels, multi = attrs[a]
                values, confs = data[a], data[f"{a}_confidence"]
                src = {s: data[f"probs_{s}"] for s in sources}
                for r, (v, c) in enumerate(zip(values, confs)):
                    if errors[r] or v is None:
                        continue
                    annotated[a] += 1
                    chosen = list(v) if multi else [v]
                    confs_r = list(c or []) if multi else [c]
                    counts[a].update(labels[k] for k in chosen)
                    for k, cf in zip(chosen, confs_r):
                        if cf is None:
                            continue
                        hist[a][min(int(float(cf) * HIST_BINS), HIST_BINS - 1)] += 1
                        conf_sum[a] += float(cf)
                        heap = best.setdefault((a, k), [])
                        item = (float(cf), fi, offset + r)
                        if len(heap) < thumbnails:
                            heapq.heappush(heap, item)
                        elif item > heap[0]:
                            heapq.heapreplace(heap, item)
                    fused = frozenset(v) if multi else v
                    answers = {s: _top((src[s][r] or {}).get(a), multi) for s in sources}
                    for s in sources:
                        if answers[s] is not None:
                            cell = cells.setdefault((a, f"{s} = fused"), [0, 0])
                            cell[0] += answers[s] == fused
                            cell[1] += 1
                    for s1, s2 in itertools.combinations(sources, 2):
                        if answers[s1] is not None and answers[s2] is not None:
                            cell = cells.setdefault((a, f"{s1} = {s2}"), [0, 0])
                            cell[0] += answers[s1] == answers[s2]
                            cell[1] += 1
            offset += batch.num_rows

    images = output_dir / IMAGES_DIR
    for old in images.glob(f"{split}-*.png"):  # pictures of an earlier run of this split
        old.unlink()

    panels = []
    for a in names:
        labels, _ = attrs[a]
        ordered = sorted(((lab, counts[a][lab]) for lab in labels), key=lambda t: -t[1])[:max_labels]
        panels.append(_bars_panel(a, ordered, annotated[a]))
    figures.labels = f"{IMAGES_DIR}/{split}-labels.png"
    _save(_grid(panels, 2, f"Label distribution per attribute ({split})"), output_dir / figures.labels)

    panels = [_histogram_panel(a, hist[a], conf_sum[a]) for a in names]
    figures.confidence = f"{IMAGES_DIR}/{split}-confidence.png"
    _save(_grid(panels, 3, f"Confidence of the fused labels ({split})"), output_dir / figures.confidence)

    if comparisons:
        figures.agreement = f"{IMAGES_DIR}/{split}-agreement.png"
        table = _agreement_table(names, comparisons, {k: tuple(v) for k, v in cells.items()},
                                 f"Agreement between sources ({split})")
        _save(table, output_dir / figures.agreement)
    else:
        figures.notes.append("no per-source probabilities in the output: no agreement chart")

    _draw_samples(output_dir, split, files, features, attrs, best, thumb_size, max_labels, figures)
    return figures


def _draw_samples(output_dir, split, files, features, attrs, best, thumb_size, max_labels, figures) -> None:
    wanted: dict[tuple[int, int], None] = {}
    for heap in best.values():
        for _, fi, row in heap:
            wanted[(fi, row)] = None
    source = "image" if "image" in features else "path" if "path" in features else None
    if source is None:
        figures.notes.append("no sample thumbnails: the output holds neither images nor image paths")
        return
    loaded: dict[tuple[int, int], Image.Image] = {}
    by_file: dict[int, set[int]] = {}
    for fi, row in wanted:
        by_file.setdefault(fi, set()).add(row)
    for fi, rows in by_file.items():
        offset, last = 0, max(rows)
        columns = [source, "sha256"] if "sha256" in features else [source]
        for batch in pq.ParquetFile(files[fi]).iter_batches(batch_size=1024, columns=columns):
            if offset > last:
                break
            here = [r for r in rows if offset <= r < offset + batch.num_rows]
            if here:
                column = batch.column(0)
                hashes = batch.column(1) if len(columns) > 1 else None
                for r in here:
                    value = column[r - offset].as_py()
                    im = open_thumbnail(value, thumb_size, hashes[r - offset].as_py() if hashes is not None else None)
                    if im is not None:
                        loaded[(fi, r)] = im
            offset += batch.num_rows
    if not loaded:
        why = ("the output keeps no image bytes (annotate with --keep_images to include them) and the image paths "
               "are not readable files here") if source == "path" else "the stored images could not be decoded"
        figures.notes.append(f"no sample thumbnails: {why}")
        return
    for a, (labels, _) in attrs.items():
        rows = []
        for k, label in enumerate(labels[:max_labels]):
            heap = sorted(best.get((a, k), []), reverse=True)
            rows.append((label, [(loaded[(fi, r)], c) for c, fi, r in heap if (fi, r) in loaded]))
        rel = f"{IMAGES_DIR}/{split}-samples-{a}.png"
        _save(_samples_grid(a, rows, thumb_size), output_dir / rel)
        figures.samples[a] = rel


def open_thumbnail(value, size: int, sha256: str | None = None) -> Image.Image | None:
    """An RGB thumbnail of an image cell ({bytes, path} or a path), or None when it cannot be read. A file that the
    cell names by path is read only when its bytes hash to ``sha256`` (the row's hash, recorded when the image was
    annotated): an output cannot make its card show a file it does not already know (#17)."""
    try:
        data = value.get("bytes") if isinstance(value, dict) else None
        if not data:
            path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            data = read_verified(path, sha256)
        if not data:
            return None
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (size * 2, size * 2))
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return im
    except Exception:  # noqa: BLE001 - a thumbnail that cannot be made is left out
        return None
