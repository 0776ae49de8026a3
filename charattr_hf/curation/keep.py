"""Which member of a duplicate group is kept, and why (#17).

The better file wins, criterion by criterion, the first that differs deciding:

1. a row that passes the filters;
2. the larger picture: the content's size without flat borders (``signature.content_width`` x
   ``content_height``; width x height when unknown), so a letterboxed or framed copy does not win by its padding;
   sizes within :data:`PICTURE_TOLERANCE` of each other count as equal;
3. lossless over lossy (a PNG original over its JPEG copy);
4. between lossy files, the higher estimated JPEG quality when both are JPEGs (from their quantisation tables),
   else the more bits per pixel (WebP against JPEG, or when the tables are not known);
5. the sharper (``quality.sharpness``);
6. the fewer ``flags``;
7. the first row.

The reason a quarantined duplicate gets names the comparison that decided against it, e.g. ``near_duplicate: of
img-3 (kept: lossless PNG over lossy JPEG)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RowFacts", "compare", "pick_representatives", "PICTURE_TOLERANCE"]

#: Pictures whose content sizes (pixels) differ by less than this factor count as the same size: the content box
#: is found to about 1/64 of a side, so a framed copy of the same pixels can measure a few percent larger.
PICTURE_TOLERANCE = 1.1


@dataclass
class RowFacts:
    """Per-row facts the rule reads (arrays of the dataset's length; NaN / None where unknown)."""

    passes: np.ndarray
    width: np.ndarray
    height: np.ndarray
    sharpness: np.ndarray
    nflags: np.ndarray
    content_width: np.ndarray | None = None  # NaN: unknown (then width x height)
    content_height: np.ndarray | None = None
    format: list | None = None
    lossless: np.ndarray | None = None  # 1.0 lossless, 0.0 lossy, NaN unknown
    jpeg_quality: np.ndarray | None = None  # NaN: not a JPEG / unknown
    bits_per_pixel: np.ndarray | None = None  # NaN: unknown

    def __post_init__(self):
        n = len(self.passes)
        nan = np.full(n, np.nan)
        self.lossless = nan if self.lossless is None else np.asarray(self.lossless, np.float64)
        self.jpeg_quality = nan.copy() if self.jpeg_quality is None else np.asarray(self.jpeg_quality, np.float64)
        self.bits_per_pixel = nan.copy() if self.bits_per_pixel is None else np.asarray(self.bits_per_pixel,
                                                                                       np.float64)
        self.format = [None] * n if self.format is None else list(self.format)
        cw = nan.copy() if self.content_width is None else np.asarray(self.content_width, np.float64)
        ch = nan.copy() if self.content_height is None else np.asarray(self.content_height, np.float64)
        known = np.isfinite(cw) & np.isfinite(ch) & (cw > 0) & (ch > 0)
        self.content_width = np.where(known, cw, np.asarray(self.width, np.float64))
        self.content_height = np.where(known, ch, np.asarray(self.height, np.float64))


def _name(facts: RowFacts, r: int) -> str:
    return str(facts.format[r] or "file")


def compare(facts: RowFacts, a: int, b: int) -> tuple[int, str]:
    """``(-1 if row a is the better file, 1 if b, 0 if neither; what decided, from the winner's side)``."""
    def decide(better_a: bool, text: str) -> tuple[int, str]:
        return (-1 if better_a else 1), text

    if facts.passes[a] != facts.passes[b]:
        return decide(bool(facts.passes[a]), "passes the filters")
    cw, ch = facts.content_width, facts.content_height
    pa, pb = cw[a] * ch[a], cw[b] * ch[b]
    if max(pa, pb) > PICTURE_TOLERANCE * min(pa, pb):
        w, l = (a, b) if pa > pb else (b, a)
        return decide(pa > pb, f"larger picture {int(cw[w])}x{int(ch[w])} > {int(cw[l])}x{int(ch[l])}")
    la, lb = facts.lossless[a], facts.lossless[b]
    if la == la and lb == lb and la != lb:  # both known, one lossless
        w, l = (a, b) if la > lb else (b, a)
        return decide(la > lb, f"lossless {_name(facts, w)} over lossy {_name(facts, l)}")
    if not (la == 1.0 and lb == 1.0):  # between lossy (or unknown) files: what the encoding kept
        qa, qb = facts.jpeg_quality[a], facts.jpeg_quality[b]
        if qa == qa and qb == qb:
            if qa != qb:
                return decide(qa > qb, f"higher JPEG quality {int(max(qa, qb))} > {int(min(qa, qb))}")
        else:
            ba, bb = facts.bits_per_pixel[a], facts.bits_per_pixel[b]
            if ba == ba and bb == bb and ba != bb:
                return decide(ba > bb, f"more bits per pixel {max(ba, bb):.2f} > {min(ba, bb):.2f}")
    sa, sb = facts.sharpness[a], facts.sharpness[b]
    if sa != sb and sa == sa and sb == sb:
        return decide(sa > sb, f"sharper {max(sa, sb):.3f} > {min(sa, sb):.3f}")
    if facts.nflags[a] != facts.nflags[b]:
        return decide(facts.nflags[a] < facts.nflags[b],
                      f"fewer flags {int(min(facts.nflags[a], facts.nflags[b]))} < "
                      f"{int(max(facts.nflags[a], facts.nflags[b]))}")
    return (0, "first in the data") if a == b else decide(a < b, "first in the data")


def pick_representatives(label: np.ndarray, rows: np.ndarray, facts: RowFacts) -> dict[int, int]:
    """The kept row of each component (``label`` per row) among ``rows``: ``{label: row}``."""
    order = np.argsort(label[rows], kind="stable")
    rows = rows[order]
    starts = np.flatnonzero(np.r_[True, label[rows][1:] != label[rows][:-1]])
    out = {}
    for members in np.split(rows, starts[1:]):
        best = int(members[0])
        for r in members[1:]:
            if compare(facts, int(r), best)[0] < 0:
                best = int(r)
        out[int(label[best])] = best
    return out
