"""Near-duplicate signatures of one image: cheap (no model), computed in the decode map, stored per row.

A row's ``signature`` struct holds two signatures of the image's *centre*: the picture inside a flat frame when it
has one (:func:`frame_box`: flat lines along an edge, at most 6% of the side, of a colour clearly unlike the
inside), without :data:`MARGIN` of its side on each edge, so a border, a crop of a few percent or a corner stamp
changes little.

``phash``
    64-bit perceptual hash of luma (8 bytes): the lowest 8x8 DCT coefficients of the centre box-resized to
    32x32, each compared with their median (the usual pHash). Compared by Hamming distance; it finds
    *candidates* in an index. On its own it confuses distinct characters of similar composition (centred
    figure, plain background): measured on planted synthetic copies, pairwise precision 0.58 at recall 0.97.
``thumb``
    a 16x16 colour thumbnail of the centre in YCbCr (768 bytes, ``uint8``, row-major, Y Cb Cr interleaved;
    chroma offset by 128, as JPEG's). Compared by :func:`thumb_distance`: the RMS difference after luma is
    normalised by its mean and spread (brightness and contrast changes cancel), chroma kept as is, so colour
    tells distinct characters apart. It *verifies* the candidates.

On planted copies of synthetic characters (``benchmarks/dedup.py quality``, 1,000 originals at 256 px),
``thumb`` distance <= 10 and ``phash`` distance <= 10, grouped, gave pairwise precision 0.99 at recall 0.96 (a
grey 64-bit pHash of the whole image alone: 0.46 at 0.65, or 0.007 at 0.88); see benchmarks/README.md.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..schema import SIGNATURE_FEATURES  # the column's type, declared with the row's other columns

__all__ = [
    "SIGNATURE_VERSION",
    "SIGNATURE_FEATURES",
    "MARGIN",
    "THUMB_SIDE",
    "compute_signature",
    "phash_distance",
    "thumb_distance",
    "normalise_thumbs",
]

#: Bumped when signatures of the same image change (part of the decode stage's fingerprint).
SIGNATURE_VERSION = 1
#: Fraction of the side left out on each edge.
MARGIN = 0.10
#: Side of the colour thumbnail.
THUMB_SIDE = 16
HASH_SIDE = 32
HASH_BITS = 64


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    m[0] *= 1 / np.sqrt(2)
    return (m * np.sqrt(2 / n)).astype(np.float32)


_DCT = _dct_matrix(HASH_SIDE)[:8]  # only the 8 lowest frequencies are used
_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32
)


#: A frame (flat rows/columns along an edge, of one colour clearly unlike what is inside) at most this fraction of
#: the side is cut off before the signatures: a border added to a copy then changes nothing.
MAX_FRAME = 0.06
_FRAME_SIDE = 128
_FRAME_SAME = 10.0  # a frame line: every pixel within this of the frame colour (0..255 per channel)
_FRAME_DIFF = 30.0  # the first line inside: its mean colour this far from the frame colour


def _frame_depth(lines: np.ndarray) -> int:
    """Lines (outermost first, ``(n, length, 3)``) that form a flat frame, or 0."""
    colour = lines[0].mean(axis=0)
    limit = max(1, int(MAX_FRAME * len(lines)) + 1)
    for t in range(limit + 1):
        dev = np.abs(lines[t] - colour).max()
        if dev > _FRAME_SAME:
            if t == 0:
                return 0
            inner = np.abs(lines[t].mean(axis=0) - colour).max()
            return t if inner > _FRAME_DIFF and t <= limit - 1 else 0
    return 0


def frame_box(rgb: Image.Image) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the picture inside a flat frame (the whole image when there is none)."""
    w, h = rgb.size
    sw, sh = min(w, _FRAME_SIDE), min(h, _FRAME_SIDE)
    a = np.asarray(rgb.resize((sw, sh), Image.Resampling.BOX) if (sw, sh) != (w, h) else rgb, dtype=np.float32)
    if sw < 8 or sh < 8:
        return (0.0, 0.0, float(w), float(h))
    top = _frame_depth(a)
    bottom = _frame_depth(a[::-1])
    left = _frame_depth(a.transpose(1, 0, 2))
    right = _frame_depth(a.transpose(1, 0, 2)[::-1])
    return (left * w / sw, top * h / sh, w - right * w / sw, h - bottom * h / sh)


def compute_signature(rgb: Image.Image) -> dict[str, bytes]:
    """``{"phash": 8 bytes, "thumb": 768 bytes}`` of an RGB image (any size >= 1x1)."""
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    x0, y0, x1, y1 = frame_box(rgb)
    w, h = x1 - x0, y1 - y0
    box = (x0 + MARGIN * w, y0 + MARGIN * h, x1 - MARGIN * w, y1 - MARGIN * h)
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        box = (0, 0, rgb.width, rgb.height)
    small = rgb.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, box=box)
    a = np.asarray(small, dtype=np.float32)
    luma = a @ _YCC[0]
    low = (_DCT @ luma @ _DCT.T).ravel()
    bits = low > np.median(low)
    phash = np.packbits(bits).tobytes()
    thumb_img = rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, box=box)
    t = np.asarray(thumb_img, dtype=np.float32) @ _YCC.T
    t[..., 1:] += 128.0
    thumb = np.clip(np.rint(t), 0, 255).astype(np.uint8).tobytes()
    return {"phash": phash, "thumb": thumb}


def phash_distance(a: bytes, b: bytes) -> int:
    """Hamming distance of two ``phash`` values."""
    x = np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)
    return int(np.unpackbits(x).sum())


def normalise_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """``(n, 768) uint8`` thumbnails -> ``(n, 768) float32`` with luma normalised (see the module docstring)."""
    t = thumbs.reshape(len(thumbs), -1, 3).astype(np.float32)
    y = t[:, :, 0]
    mean = y.mean(axis=1, keepdims=True)
    spread = y.std(axis=1, keepdims=True) + 8.0
    t[:, :, 0] = (y - mean) / spread * 48.0
    t[:, :, 1:] -= 128.0
    return t.reshape(len(thumbs), -1)


def thumb_distance(a: bytes | np.ndarray, b: bytes | np.ndarray) -> float:
    """RMS distance of two ``thumb`` values after luma normalisation (0 = same; 10 is the default threshold)."""
    x = normalise_thumbs(np.stack([np.frombuffer(bytes(a), np.uint8), np.frombuffer(bytes(b), np.uint8)]))
    return float(np.sqrt(np.mean((x[0] - x[1]) ** 2)))
