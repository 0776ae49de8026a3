"""Near-duplicate signatures of one image: cheap (no learned model), computed in the decode map, stored per row.

Everything is measured on the picture's *content box*: the image without the flat lines along its edges
(:func:`content_box`: lines of one colour each, whatever the colour, up to 45 % of a side), so a border, a
letterbox or a white frame around a white-background illustration changes nothing. A row's ``signature`` struct
holds (all strings, so that a printed row stays readable; see :func:`decode_hex`):

``phash``
    64-bit perceptual hash of luma, 16 hex digits, then the same of the mirror image (32 in all): the lowest 8x8
    DCT coefficients of the content's centre (:data:`MARGIN` of each side left out) box-resized to 32x32, each
    compared with their median (the usual pHash).
``thumb``
    a 16x16 colour thumbnail of the same centre in YCbCr, 768 bytes as hex (row-major, Y Cb Cr interleaved;
    chroma offset by 128, as JPEG's). Compared by :func:`thumb_distance`: RMS difference after luma is normalised
    by its mean and spread (brightness and contrast cancel), chroma kept as is, so colour tells look-alikes apart;
    the smaller of the distances to the other thumbnail and to its mirror image, so a mirrored copy matches.
``keypoints``
    up to :data:`KEYPOINTS` local features of the content, for crops, zooms and re-framing that move the whole
    picture: ORB keypoints (OpenCV) on the content resized to :data:`KEYPOINT_SIDE` px on its longer side, each
    ``x, y`` (1 byte each, in 1/255 of the content's width and height) + the first 128 bits of its ORB descriptor
    (16 bytes), as hex. Verified by a shift-and-scale fit and the thumbnails compared where the fit puts them
    (:func:`charattr_hf.curation.dedup.keypoint_fit`). Null when
    OpenCV is not installed (``pip install "charattr-hf[dedup]"``): then crops of one side and zooms of more than
    a few percent are not found (see benchmarks/README.md).
``content_width``, ``content_height``
    the size of the content box in the full image's pixels: a letterboxed or framed copy has more pixels, not more
    picture, so the best copy of a group is chosen by this size.
``format``, ``lossless``, ``jpeg_quality``, ``bits_per_pixel``
    the file's encoding, for keeping the best copy of a group: PIL's format name, whether it is stored without
    loss (PNG, BMP, TIFF without JPEG compression, lossless WebP, ...), the JPEG quality estimated from its
    luminance quantisation table (libjpeg's scaling of the standard table, 1-100; null for other formats) and
    the file's bits per decoded pixel (null when the cell held a decoded image, not file bytes).
"""

from __future__ import annotations

import functools
import importlib.util
import io
from typing import Any

import numpy as np
from PIL import Image

from ..schema import SIGNATURE_FEATURES  # the column's type, declared with the row's other columns

__all__ = [
    "SIGNATURE_VERSION",
    "SIGNATURE_FEATURES",
    "MARGIN",
    "THUMB_SIDE",
    "KEYPOINTS",
    "KEYPOINT_SIDE",
    "HAS_KEYPOINTS",
    "compute_signature",
    "content_box",
    "decode_hex",
    "decode_keypoints",
    "phash_distance",
    "thumb_distance",
    "normalise_thumbs",
    "mirror_thumbs",
    "estimate_jpeg_quality",
]

#: Whether local features are computed (OpenCV is installed).
HAS_KEYPOINTS = importlib.util.find_spec("cv2") is not None
#: Part of the decode stage's fingerprint: changes when the signatures of the same image change (chunks written
#: with and without local features are not mixed).
SIGNATURE_VERSION = "2+orb" if HAS_KEYPOINTS else "2"
#: Fraction of the content's side left out on each edge for ``phash`` and ``thumb``.
MARGIN = 0.08
#: Side of the colour thumbnail.
THUMB_SIDE = 16
THUMB_BYTES = THUMB_SIDE * THUMB_SIDE * 3
HASH_SIDE = 32
#: Most local features kept per image (the strongest).
KEYPOINTS = 48
#: Longer side of the content when local features are detected.
KEYPOINT_SIDE = 256
#: Bytes of one local feature: x, y, 16 descriptor bytes.
KEYPOINT_BYTES = 18


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

# ------------------------------------------------------------------------------------------ content box
#: Most of a side that flat edge lines may take (what is left is the content).
MAX_TRIM = 0.45
_TRIM_SIDE = 64
_TRIM_FLAT = 12.0  # a flat line: every pixel within this of the line's mean colour (0..255 per channel)


def _flat_lines(lines: np.ndarray, limit: int) -> int:
    """How many lines (outermost first, ``(n, length, 3)``) are flat, up to ``limit`` of them. Two pixels at each
    end of a line do not count: there the line meets the other sides' frame, blended by the downscaling."""
    part = lines[:limit, 2:-2] if lines.shape[1] > 8 else lines[:limit]
    dev = np.abs(part - part.mean(axis=1, keepdims=True)).max(axis=(1, 2))
    rough = np.flatnonzero(dev > _TRIM_FLAT)
    return int(rough[0]) if len(rough) else min(limit, len(lines))


def content_box(rgb: Image.Image) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the picture without the flat lines along its edges.

    A line is flat when all its pixels are close to its own mean colour (of any colour, so a frame, a letterbox
    and a plain background are all cut, which makes an original and its framed copy agree: a white frame around a
    white-background illustration only widens the white that is cut anyway). The sides are peeled in turn, each
    line judged between the sides cut so far, until nothing changes: the rows just inside a frame then count
    without the frame's columns. Measured on a box-downscaled copy (at most 64 px a side), which averages JPEG
    noise away."""
    w, h = rgb.size
    sw, sh = min(w, _TRIM_SIDE), min(h, _TRIM_SIDE)
    if sw < 8 or sh < 8:
        return (0.0, 0.0, float(w), float(h))
    a = np.asarray(rgb.resize((sw, sh), Image.Resampling.BOX) if (sw, sh) != (w, h) else rgb, dtype=np.float32)
    cut = [0, 0, 0, 0]  # top, bottom, left, right
    limit = [int(MAX_TRIM * sh), int(MAX_TRIM * sh), int(MAX_TRIM * sw), int(MAX_TRIM * sw)]
    changed = True
    while changed:
        changed = False
        inner = a[cut[0] : sh - cut[1], cut[2] : sw - cut[3]]
        views = (inner, inner[::-1], inner.transpose(1, 0, 2), inner.transpose(1, 0, 2)[::-1])
        for side, view in enumerate(views):
            more = _flat_lines(view, limit[side] - cut[side])
            if more:
                cut[side] += more
                changed = True
                break  # the other sides are judged again within the new box
    top, bottom, left, right = cut
    return (left * w / sw, top * h / sh, w - right * w / sw, h - bottom * h / sh)


# ------------------------------------------------------------------------------------------ local features
@functools.lru_cache(maxsize=1)
def _orb():
    import cv2

    cv2.setNumThreads(1)  # one image at a time in each decode worker
    return cv2.ORB_create(nfeatures=KEYPOINTS, scaleFactor=1.2, nlevels=4, edgeThreshold=15, patchSize=15,
                          fastThreshold=10)


def _keypoints(rgb: Image.Image, box: tuple[float, float, float, float]) -> str:
    w, h = box[2] - box[0], box[3] - box[1]
    scale = KEYPOINT_SIDE / max(w, h)
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    grey = np.asarray(rgb.convert("L").resize(size, Image.Resampling.BOX, box=box))
    kp, des = _orb().detectAndCompute(grey, None)
    if des is None or not len(kp):
        return ""
    xy = np.array([k.pt for k in kp], np.float32) / np.array(size, np.float32) * 255.0
    packed = np.concatenate([np.clip(np.rint(xy), 0, 255).astype(np.uint8), des[:, :16]], axis=1)
    return packed.tobytes().hex()


# ------------------------------------------------------------------------------------------ file encoding
@functools.lru_cache(maxsize=1)
def _jpeg_tables() -> np.ndarray:
    """libjpeg's luminance quantisation table at each quality 1..100 (as PIL reports them), ``(100, 64)``."""
    tiny = Image.new("L", (8, 8))
    out = np.zeros((100, 64), np.float32)
    for q in range(1, 101):
        buf = io.BytesIO()
        tiny.save(buf, "JPEG", quality=q)
        out[q - 1] = np.asarray(Image.open(buf).quantization[0], np.float32)
    return out


def estimate_jpeg_quality(im: Image.Image) -> int | None:
    """The libjpeg quality (1-100) whose luminance table is nearest to the file's, or None (not a JPEG)."""
    tables = getattr(im, "quantization", None)
    if im.format not in ("JPEG", "MPO") or not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    t = np.asarray(tables[0], np.float32)
    return int(np.argmin(np.abs(np.log(_jpeg_tables()) - np.log(np.maximum(t, 1))).sum(axis=1))) + 1


def _lossless(im: Image.Image, data: bytes | None) -> bool:
    fmt = im.format
    if fmt in ("PNG", "BMP", "PPM", "QOI", "TGA", "ICO", "GIF", "DIB", "PCX", "SGI"):
        return True
    if fmt == "TIFF":
        return im.info.get("compression") not in ("jpeg", "tiff_jpeg", "webp")
    if fmt == "WEBP" and data is not None:
        return b"VP8L" in data[12:40]  # the lossless bitstream's chunk (a lossy one is VP8 )
    return False


def _encoding(im: Image.Image | None, data: bytes | None, pixels: int) -> dict[str, Any]:
    if im is None:
        return {"format": None, "lossless": None, "jpeg_quality": None, "bits_per_pixel": None}
    return {"format": im.format, "lossless": _lossless(im, data), "jpeg_quality": estimate_jpeg_quality(im),
            "bits_per_pixel": (8.0 * len(data) / pixels) if data is not None and pixels else None}


# ------------------------------------------------------------------------------------------ signature
def compute_signature(rgb: Image.Image, source: Image.Image | None = None, data: Any = None,
                      size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The ``signature`` of a decoded RGB image (any size >= 1x1). ``source`` is the image as opened from the
    file (for its format and JPEG tables), ``data`` the file's bytes (anything else counts as none) and ``size``
    its full width and height (the decoded ``rgb`` may be a draft-reduced one); without ``source`` the encoding
    fields are null."""
    data = data if isinstance(data, (bytes, bytearray)) else None
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    x0, y0, x1, y1 = content_box(rgb)
    w, h = x1 - x0, y1 - y0
    box = (x0 + MARGIN * w, y0 + MARGIN * h, x1 - MARGIN * w, y1 - MARGIN * h)
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        x0, y0, x1, y1 = box = (0.0, 0.0, float(rgb.width), float(rgb.height))
    small = rgb.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, box=box)
    luma = np.asarray(small, dtype=np.float32) @ _YCC[0]
    phash = "".join(np.packbits(low > np.median(low)).tobytes().hex()
                    for low in ((_DCT @ y @ _DCT.T).ravel() for y in (luma, luma[:, ::-1])))
    thumb_img = rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, box=box)
    t = np.asarray(thumb_img, dtype=np.float32) @ _YCC.T
    t[..., 1:] += 128.0
    thumb = np.clip(np.rint(t), 0, 255).astype(np.uint8).tobytes().hex()
    keypoints = _keypoints(rgb, (x0, y0, x1, y1)) if HAS_KEYPOINTS else None
    full = size or rgb.size
    content = (round((x1 - x0) * full[0] / rgb.width), round((y1 - y0) * full[1] / rgb.height))
    return {"phash": phash, "thumb": thumb, "keypoints": keypoints, "content_width": content[0],
            "content_height": content[1], **_encoding(source, data, full[0] * full[1])}


# ------------------------------------------------------------------------------------------ comparing
def decode_hex(values, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(valid rows, (m, width) uint8)`` from hex strings (None or another length: not valid)."""
    valid = [k for k, v in enumerate(values) if isinstance(v, str) and len(v) == 2 * width]
    out = np.frombuffer(bytes.fromhex("".join(values[k] for k in valid)), np.uint8).reshape(len(valid), width)
    return np.asarray(valid, np.int64), out


def decode_keypoints(values) -> tuple[np.ndarray, np.ndarray]:
    """``((n, KEYPOINTS, 18) uint8, (n,) counts)`` from ``keypoints`` hex strings (None or malformed: none)."""
    width = 2 * KEYPOINT_BYTES
    counts = np.array([len(v) // width if isinstance(v, str) and len(v) % width == 0 else 0 for v in values],
                      np.int64)
    counts = np.minimum(counts, KEYPOINTS)
    out = np.zeros((len(values), KEYPOINTS, KEYPOINT_BYTES), np.uint8)
    have = np.flatnonzero(counts)
    if len(have):
        flat = np.frombuffer(bytes.fromhex("".join(values[k][: width * counts[k]] for k in have)), np.uint8)
        slot = np.arange(KEYPOINTS)[None, :] < counts[have, None]
        out[have] = 0
        target = out[have]
        target[slot] = flat.reshape(-1, KEYPOINT_BYTES)
        out[have] = target
    return out, counts


def phash_distance(a: str, b: str) -> int:
    """Hamming distance of two ``phash`` values: the smaller of picture to picture and picture to mirror."""
    return min(bin(int(a[:16], 16) ^ int(b[k : k + 16], 16)).count("1") for k in (0, 16))


def normalise_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """``(n, 768) uint8`` thumbnails -> ``(n, 768) float32`` with luma normalised (see the module docstring)."""
    t = thumbs.reshape(len(thumbs), -1, 3).astype(np.float32)
    y = t[:, :, 0]
    mean = y.mean(axis=1, keepdims=True)
    spread = y.std(axis=1, keepdims=True) + 8.0
    t[:, :, 0] = (y - mean) / spread * 48.0
    t[:, :, 1:] -= 128.0
    return t.reshape(len(thumbs), -1)


def mirror_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """The thumbnails of the mirror images (left and right swapped), same shape."""
    t = thumbs.reshape(len(thumbs), THUMB_SIDE, THUMB_SIDE, -1)[:, :, ::-1]
    return np.ascontiguousarray(t).reshape(thumbs.shape)


def thumb_distance(a: str, b: str) -> float:
    """RMS distance of two ``thumb`` values after luma normalisation, the smaller of the direct and the mirrored
    comparison (0 = same)."""
    x = np.frombuffer(bytes.fromhex(a + b), np.uint8).reshape(2, -1)
    n = normalise_thumbs(np.concatenate([x, mirror_thumbs(x[1:])]))
    return float(min(np.sqrt(np.mean((n[0] - n[1]) ** 2)), np.sqrt(np.mean((n[0] - n[2]) ** 2))))
