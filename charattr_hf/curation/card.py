"""The curated dataset's card: YAML header for ``load_dataset`` (train and quarantine splits), each filter with
its threshold and the rows it removed, duplicate kinds with theirs, a picture of the near-duplicate distance
distribution and a few example groups (pictures when the images are in the data, else ids and paths)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow.parquet as pq
from datasets import Features
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image, ImageDraw

from .. import __version__
from ..card import load_font, open_thumbnail
from ..hub import card_header
from ..markdown import markdown_table

if TYPE_CHECKING:
    from .config import CurateConfig
    from .result import CurateResult
    from .dedup import Pairs

__all__ = ["write_curation_card", "histogram_png", "DISTANCES_PNG", "EXAMPLES_PNG"]

DISTANCES_PNG = "images/dedup_distances.png"
EXAMPLES_PNG = "images/dedup_examples.png"

_DESCRIPTIONS = {
    "error": "the image could not be decoded (always removed)",
    "too_small": "shorter side below a number of pixels",
    "aspect_ratio": "longer side / shorter side above a ratio",
    "monochrome": "colourfulness (Hasler-Suesstrunk) below a level: greyscale or nearly",
    "low_contrast": "spread of luma below a level: blank or washed out",
    "blurry": "sharpness (Laplacian variance on a thumbnail) below a level",
    "several_characters": "the character count attribute says several characters",
    "no_character": "no character-count label is confident: probably no character",
    "not_illustration": "the art style attribute says photo or 3D render",
    "low_confidence": "a chosen attribute's confidence is low",
    "label_rules": "label rules",
}


def histogram_png(series: Sequence[tuple[str, np.ndarray, float | None, str]], width: int = 720,
                  panel_height: int = 200) -> bytes:
    """PNG of one histogram panel per ``(title, values, threshold, x label)``, threshold drawn as a red line."""
    series = [s for s in series if len(s[1])] or [("no candidate pairs", np.zeros(0), None, "")]
    height = panel_height * len(series)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = load_font(12)
    for k, (title, values, threshold, xlabel) in enumerate(series):
        top = k * panel_height
        left, right, bottom = 50, width - 20, top + panel_height - 35
        ptop = top + 25
        d.text((left, top + 5), title, fill="black", font=font)
        d.line([(left, bottom), (right, bottom)], fill="black")
        d.line([(left, ptop), (left, bottom)], fill="black")
        if not len(values):
            continue
        lo = float(min(values.min(), threshold if threshold is not None else values.min()))
        hi = float(max(values.max(), threshold if threshold is not None else values.max()))
        if hi <= lo:
            hi = lo + 1.0
        bins = 50
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        scale = np.log1p(counts) / max(np.log1p(counts).max(), 1e-9)  # log scale: rare pairs stay visible
        bw = (right - left) / bins
        for b in range(bins):
            if counts[b]:
                x0 = left + b * bw
                y0 = bottom - scale[b] * (bottom - ptop)
                d.rectangle([x0 + 1, y0, x0 + bw - 1, bottom - 1], fill=(70, 110, 180))
        if threshold is not None:
            x = left + (threshold - lo) / (hi - lo) * (right - left)
            d.line([(x, ptop), (x, bottom)], fill=(220, 30, 30), width=2)
            d.text((x + 3, ptop), f"threshold {threshold:g}", fill=(220, 30, 30), font=font)
        for frac in (0.0, 0.5, 1.0):
            x = left + frac * (right - left)
            d.text((x - 10, bottom + 3), f"{lo + frac * (hi - lo):.3g}", fill="black", font=font)
        d.text((right - 200, bottom + 17), f"{xlabel} (count, log scale)", fill="black", font=font)
        d.text((5, ptop), f"{counts.max()}", fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _example_groups(group: np.ndarray, rep: np.ndarray, limit: int) -> list[list[int]]:
    """Up to ``limit`` groups (row lists, representative first), the largest first."""
    if limit <= 0 or not len(group) or group.max() < 0:
        return []
    rows = np.flatnonzero(group >= 0)
    sizes = np.bincount(group[rows])
    chosen = np.argsort(-sizes, kind="stable")[:limit]
    out = []
    for g in chosen:
        members = rows[group[rows] == g]
        r = int(rep[members[0]])
        out.append([r] + [int(m) for m in members if m != r])
    return out


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` cut into lines no wider than ``width`` (at any character: file names have no spaces to break at)."""
    lines, line = [], ""
    for ch in text:
        if line and draw.textlength(line + ch, font=font) > width:
            lines.append(line)
            line = ""
        line += ch
    return lines + [line] if line else lines or [""]


def _images_png(files: Sequence[Path], groups: list[list[int]], labels: dict[int, str], thumb: int = 112,
                per_line: int = 6) -> bytes | None:
    """A contact sheet of the groups when the data holds images: each group under a caption, every member shown
    (``per_line`` to a line, representative first, framed in green), each with its full file name (or id)
    wrapped under it."""
    if not groups or "image" not in pq.read_schema(files[0]).names:
        return None
    want = {r for g in groups for r in g}
    cells: dict[int, Image.Image] = {}
    offset = 0
    for f in files:
        pf = pq.ParquetFile(f)
        n = pf.metadata.num_rows
        local = sorted(r - offset for r in want if offset <= r < offset + n)
        if local:
            col = pf.read(columns=["image"]).column("image").take(local).to_pylist()
            for r, cell in zip(local, col):
                im = open_thumbnail(cell, thumb)
                if im is not None:  # an unreadable image shows as a grey cell
                    cells[r + offset] = im
        offset += n
    font = load_font(11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = 13
    names = {r: _wrap(measure, labels[r], font, thumb) for r in want}
    cols = min(per_line, max(len(g) for g in groups))
    blocks = []  # (group, members on each sheet line, text lines under that line)
    for g in groups:
        lines = [g[k : k + per_line] for k in range(0, len(g), per_line)]
        blocks.append((g, lines, [max(len(names[r]) for r in line) for line in lines]))
    height = 6 + sum(20 + sum(thumb + 6 + t * line_h for t in texts) for _, _, texts in blocks)
    sheet = Image.new("RGB", (cols * (thumb + 8) + 8, height), "white")
    d = ImageDraw.Draw(sheet)
    y = 6
    for g, lines, texts in blocks:
        d.text((6, y + 3), f"{len(g)} rows, kept first", fill=(60, 60, 60), font=font)
        y += 20
        for line, t in zip(lines, texts):
            for x, r in enumerate(line):
                px = 8 + x * (thumb + 8)
                im = cells.get(r)
                if im is None:
                    d.rectangle([px, y, px + thumb, y + thumb], fill=(200, 200, 200))
                else:
                    sheet.paste(im, (px, y))
                if r == g[0]:
                    d.rectangle([px - 2, y - 2, px + thumb + 1, y + thumb + 1], outline=(30, 160, 60), width=2)
                for k, text in enumerate(names[r]):
                    d.text((px, y + thumb + 3 + k * line_h), text, fill="black", font=font)
            y += thumb + 6 + t * line_h
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


def _paths(files: Sequence[Path], rows: set[int]) -> dict[int, str]:
    if "path" not in pq.read_schema(files[0]).names:
        return {}
    out, offset = {}, 0
    for f in files:
        col = pq.read_table(f, columns=["path"]).column("path").to_pylist()
        for r in rows:
            if offset <= r < offset + len(col) and col[r - offset]:
                out[r] = col[r - offset]
        offset += len(col)
    return out


def write_curation_card(output_dir: Path, source: str, cfg: "CurateConfig", result: "CurateResult",
                        pairs: "list[Pairs]", features: Features, *, group: np.ndarray, rep: np.ndarray, ids: list,
                        files: Sequence[Path]) -> Path:
    output_dir = Path(output_dir)
    card_data = DatasetCardData(tags=["charattr-hf", "curated", "deduplicated"])
    split_files = {s: sorted((output_dir / "data").glob(f"{s}-*.parquet")) for s in ("train", "quarantine")}
    card_header(card_data, {s: (features, fs) for s, fs in split_files.items()})

    # pictures
    (output_dir / "images").mkdir(exist_ok=True)
    series = []
    for p in pairs:
        if p.kind == "near" and cfg.near is not None:
            series.append(("near: each row's nearest other row in its cell, colour thumbnail distance "
                           "(mirror-symmetric block means)", p.candidates, cfg.near.candidate_radius,
                           "block-mean distance"))
        if p.kind == "semantic" and cfg.semantic is not None:
            series.append(("semantic: each row's nearest other row in its cluster, 1 - cosine", p.candidates,
                           round(1 - cfg.semantic.threshold, 6), "1 - cosine similarity"))
    (output_dir / DISTANCES_PNG).write_bytes(histogram_png(series))
    groups = _example_groups(group, rep, cfg.examples)
    paths = _paths(files, {r for g in groups for r in g})
    labels = {r: (paths[r].replace("\\", "/").rsplit("/", 1)[-1] if r in paths else str(ids[r]))
              for g in groups for r in g}
    sheet = _images_png(files, groups, labels)
    if sheet is not None:
        (output_dir / EXAMPLES_PNG).write_bytes(sheet)
    else:
        (output_dir / EXAMPLES_PNG).unlink(missing_ok=True)

    lines = [f"# Curated character dataset (charattr-hf {__version__})", "",
             f"Curated from `{source}` with `recipes/curate.py` (config: {cfg.source}). Every input row is in "
             "exactly one split: `train` (kept) or `quarantine` (removed, with its `reasons`).", "",
             markdown_table(["rows in", "train", "quarantine", "duplicate groups"],
                            [[result.rows, result.train, result.quarantine, result.groups]]), "",
             "## Filters", "", "A row can fail several filters; each count is the rows that failed that one.", ""]
    filters = [["error", _DESCRIPTIONS["error"], None, result.removed_by.get("error", 0)]]
    filters += [[f.name, _DESCRIPTIONS.get(f.name, ""), f.describe(), result.removed_by.get(f.name, 0)]
                for f in cfg.filters]
    lines.append(markdown_table(["filter", "what it removes", "threshold", "rows"], filters))
    if cfg.skipped:  # steps of the config this dataset cannot take (skip_unavailable)
        lines += ["", "Skipped, because this dataset cannot take them:", "",
                  markdown_table(["step", "why"], [list(s) for s in cfg.skipped])]
    lines += ["", "## Duplicates", "",
              "Groups are found over the whole dataset at once. One row per group is kept, the better file: a row "
              "that passes the filters, then the larger picture (without flat borders), then lossless over lossy "
              "and the higher JPEG quality (or bits per pixel), then the sharper, then the fewer flags. The others go to quarantine "
              "with `duplicate_of` set to the kept row's id and a reason naming the comparison; all members share "
              "`dup_group`.", ""]
    by_kind = {p.kind: p for p in pairs}
    kinds = []
    if cfg.exact:
        kinds.append(["exact", "same sha256 of the file", None, len(by_kind["exact"]),
                      result.removed_by.get("exact_duplicate", 0)])
    if cfg.near is not None:
        local = f"; or >= {cfg.near.min_inliers} local features on one scale and shift" if cfg.near.min_inliers else ""
        kinds.append(["near", "whole picture: 16x16 colour thumbnail (direct or mirrored, compared within k-means "
                              "cells) and 64-bit luma pHash; local features (ORB) for crops, zooms and borders",
                      f"phash <= {cfg.near.phash_radius} bits{local}; then aligned thumbnail distance <= "
                      f"{cfg.near.thumb_threshold:g}", len(by_kind["near"]),
                      result.removed_by.get("near_duplicate", 0)])
    if cfg.semantic is not None:
        kinds.append(["semantic", "CLIP image embeddings, k-means clusters, cosine within a cluster (SemDeDup)",
                      f"cosine >= {cfg.semantic.threshold:g}", len(by_kind["semantic"]),
                      result.removed_by.get("semantic_duplicate", 0)])
    lines.append(markdown_table(["kind", "how", "threshold", "pairs", "rows removed"], kinds))
    lines += ["", f"![distance distribution]({DISTANCES_PNG})", "", "### Example groups", ""]
    if not groups:
        lines.append("No duplicate groups.")
    else:
        total = int(group.max()) + 1
        shown = (f"the {len(groups)} largest of {total} groups" if len(groups) < total
                 else "the only group" if total == 1 else f"all {total} groups")
        if sheet is not None:
            lines += [f"![example groups]({EXAMPLES_PNG})", "",
                      f"Showing {shown}, every member with its file name; the kept row comes first, framed in "
                      "green.", ""]
        else:
            lines += [f"Showing {shown}.", ""]

        def show(r: int) -> str:
            p = paths.get(r)
            return f"`{ids[r]}`" + (f" ({p})" if p and p != ids[r] else "")

        lines.append(markdown_table(["group", "kept", "quarantined"], [
            [int(group[g[0]]), show(g[0]), ", ".join(show(r) for r in g[1:])] for g in groups]))
    lines += ["", "## Use", "", "```python", "from datasets import load_dataset",
              f'train = load_dataset("{output_dir}", split="train")',
              f'quarantine = load_dataset("{output_dir}", split="quarantine")  # see its `reasons` column',
              "```", ""]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = output_dir / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(str(card))
    info = {"source": source, "config": cfg.raw, "rows": result.rows, "train": result.train,
            "quarantine": result.quarantine, "groups": result.groups, "removed_by": result.removed_by,
            "skipped": dict(cfg.skipped),
            "pairs": {p.kind: len(p) for p in pairs}, "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
    (output_dir / "curation.json").write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(path)
    return path
