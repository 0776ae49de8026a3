"""Which member of a duplicate group is kept, and why (#17).

The group is narrowed criterion by criterion, each keeping the members that are best on it, until one is left:

1. the rows that pass the filters (when any does);
2. the larger pictures: the content's size without flat borders (``signature.content_width`` x
   ``content_height``; width x height when unknown), so a letterboxed or framed copy does not win by its padding;
   every member within :data:`PICTURE_TOLERANCE` of the group's largest stays;
3. the lossless files (a PNG original over its JPEG copy), when any is;
4. between lossy files, the higher estimated JPEG quality when all left are JPEGs whose quality is known (from their
   quantisation tables); else, when all left have it, the more bits per pixel: first those within
   :data:`BITS_TOLERANCE` of the most stay, then the higher JPEG quality if only such JPEGs are left, else the
   most bits per pixel (a WebP against JPEGs);
5. the sharpest (``quality.sharpness``), when every member left has it;
6. the fewest ``flags``;
7. the first row.

Narrowing the whole group, rather than comparing two rows at a time, makes it one ranking: two rows at a time, the
size tolerance goes round in circles (a PNG beats a JPEG 8 % larger on lossless, that one beats a JPEG 8 % larger
still on quality, and that one beats the PNG on size), and the kept row would depend on the rows' order.

The reason a quarantined duplicate gets names the criterion that ruled it out, with the kept row's value against
its own, e.g. ``near_duplicate: of img-3 (kept: lossless PNG over lossy JPEG)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = ["RowFacts", "STAGES", "rank_groups", "reason", "compare", "PICTURE_TOLERANCE", "BITS_TOLERANCE"]

#: Pictures whose content sizes (pixels) differ by less than this factor count as the same size: the content box
#: is found to about 1/64 of a side, so a framed copy of the same pixels can measure a few percent larger.
PICTURE_TOLERANCE = 1.1
#: Between lossy files of other formats (a WebP among JPEGs), those within this factor of the most bits per pixel
#: stay, so that two JPEGs a few bits apart are still told apart by their quality.
BITS_TOLERANCE = 1.1


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

    def subset(self, rows: np.ndarray) -> "RowFacts":
        """The facts of ``rows`` only, in that order."""
        return RowFacts(**{f.name: _take(getattr(self, f.name), rows) for f in fields(self)})


def _take(value, rows: np.ndarray):
    return None if value is None else [value[r] for r in rows] if isinstance(value, list) else np.asarray(value)[rows]


#: The criteria, in order (``rank_groups``' ``stage`` indexes this).
STAGES = ("passes", "picture", "lossless", "bits_per_pixel_band", "jpeg_quality", "bits_per_pixel", "sharpness",
          "flags", "first")


def _segments(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(start of each run, run index per position)`` of a sorted label array."""
    new = np.r_[True, label[1:] != label[:-1]]
    return np.flatnonzero(new), np.cumsum(new) - 1


def rank_groups(label: np.ndarray, rows: np.ndarray, facts: RowFacts) -> tuple[np.ndarray, np.ndarray]:
    """The kept row of each group and why each other member was not kept.

    ``label`` (one per dataset row) names each row's group; ``rows`` are the rows to rank (the members of groups
    of two or more). Returns ``(kept, stage)``, arrays of the dataset's length: the kept row of each ranked row's
    group (-1 for rows not ranked) and the index in :data:`STAGES` of the criterion that ruled each row out (-1
    for kept rows and rows not ranked). Vectorised over all groups at once."""
    n = len(label)
    rows = np.asarray(rows, np.int64)
    rows = rows[np.argsort(label[rows], kind="stable")]
    kept_out = np.full(n, -1, np.int64)
    stage_out = np.full(n, -1, np.int64)
    if not len(rows):
        return kept_out, stage_out
    starts, seg = _segments(label[rows])
    alive = np.ones(len(rows), bool)
    stage = np.full(len(rows), -1, np.int64)

    def every(ok: np.ndarray) -> np.ndarray:  # per position: every row still in its group has ``ok``
        return np.minimum.reduceat((ok | ~alive).astype(np.int8), starts)[seg].astype(bool)

    def narrow(k: int, key: np.ndarray, applies: np.ndarray | None = None) -> None:
        """Rule out the rows below their group's best ``key`` (among rows still in), where ``applies``."""
        value = np.where(alive, key, -np.inf)
        out = alive & (value < np.maximum.reduceat(value, starts)[seg])
        if applies is not None:
            out &= applies
        stage[out] = k
        alive[out] = False

    narrow(0, facts.passes[rows].astype(np.float64))
    area = (facts.content_width * facts.content_height)[rows]
    largest = np.maximum.reduceat(np.where(alive, area, -np.inf), starts)[seg]
    narrow(1, (area * PICTURE_TOLERANCE >= largest).astype(np.float64))
    narrow(2, (facts.lossless[rows] == 1.0).astype(np.float64))
    quality, bpp = facts.jpeg_quality[rows], facts.bits_per_pixel[rows]

    def by_bits() -> np.ndarray:  # lossy files, not all JPEGs of known quality, all with bits per pixel
        lossy = every(facts.lossless[rows] != 1.0)
        return lossy & ~every(np.isfinite(quality)) & every(np.isfinite(bpp))

    most = np.maximum.reduceat(np.where(alive, bpp, -np.inf), starts)[seg]
    narrow(3, (bpp * BITS_TOLERANCE >= most).astype(np.float64), by_bits())
    narrow(4, quality, every(facts.lossless[rows] != 1.0) & every(np.isfinite(quality)))
    narrow(5, bpp, by_bits())
    sharp = facts.sharpness[rows].astype(np.float64)
    narrow(6, sharp, every(np.isfinite(sharp)))
    narrow(7, -facts.nflags[rows].astype(np.float64))
    narrow(8, -rows.astype(np.float64))
    winner = np.full(len(starts), -1, np.int64)
    winner[seg[alive]] = rows[alive]
    kept_out[rows] = winner[seg]
    stage_out[rows] = stage
    return kept_out, stage_out


def _name(facts: RowFacts, r: int) -> str:
    return str(facts.format[r] or "file")


def reason(facts: RowFacts, kept: int, row: int, stage: int) -> str:
    """What the kept row has over ``row`` on the criterion ``STAGES[stage]`` that ruled ``row`` out."""
    name = STAGES[stage]
    if name == "passes":
        return "passes the filters"
    if name == "picture":
        cw, ch = facts.content_width, facts.content_height
        return f"larger picture {int(cw[kept])}x{int(ch[kept])} > {int(cw[row])}x{int(ch[row])}"
    if name == "lossless":
        other = _name(facts, row)
        other = f"lossy {other}" if facts.lossless[row] == 0.0 else f"{other} of unknown encoding"
        return f"lossless {_name(facts, kept)} over {other}"
    if name == "jpeg_quality":
        return f"higher JPEG quality {int(facts.jpeg_quality[kept])} > {int(facts.jpeg_quality[row])}"
    if name.startswith("bits_per_pixel"):
        return f"more bits per pixel {facts.bits_per_pixel[kept]:.2f} > {facts.bits_per_pixel[row]:.2f}"
    if name == "sharpness":
        return f"sharper {facts.sharpness[kept]:.3f} > {facts.sharpness[row]:.3f}"
    if name == "flags":
        return f"fewer flags {int(facts.nflags[kept])} < {int(facts.nflags[row])}"
    return "first in the data"


def compare(facts: RowFacts, a: int, b: int) -> tuple[int, str]:
    """The rule for two rows: ``(-1 if row a is kept, 1 if b, 0 if a is b; what decided, from the kept row's
    side)``."""
    if a == b:
        return 0, "first in the data"
    rows = np.array([a, b], np.int64)
    kept, stage = rank_groups(np.zeros(len(facts.passes), np.int64), rows, facts)
    winner, loser = (a, b) if kept[a] == a else (b, a)
    return (-1 if winner == a else 1), reason(facts, winner, loser, int(stage[loser]))
