"""Decode and normalise images: content hash, the pixels every model reads, quality and flags.

This is the first stage of a run and the only one that touches image files: it reads each image once and decodes
it once, for every source (:class:`~charattr_hf.stages.pixels.PixelSpec`). It is CPU-bound and runs with
``num_proc`` in the forkserver workers of :mod:`charattr_hf.workers`, so it uses PIL, numpy and hashlib only: no
torch, no torchvision (importing them there is slow, and the workers must stay light).

What a row gets (see :meth:`DecodeStage.features`):

``sha256``
    hex SHA-256 of the image file's bytes, so identical files share a hash whatever their name. When the
    cell holds only a decoded ``PIL.Image`` (a dataset with ``Image(decode=True)``), the file bytes are
    gone; the hash is then ``sha256(b"pil:<mode>:<width>x<height>:" + raw pixel bytes)``, stable for the
    same pixels but different from the file's hash.
``error``
    ``None``, or a short message (``"unreadable image: cannot identify image file"``,
    ``"image too large: 30000x30000 > max_pixels (100000000)"``, ``"truncated image: ..."``, ...). A row
    with an error has every other output null (``flags`` empty) except ``sha256``, which is kept when the
    file's bytes could be read (to find, count and group broken files). A bad file never raises.
``flags``
    a list of names from :data:`FLAGS`, in that order.
``width``, ``height``
    the full image size after EXIF orientation (not the draft-decoded size).
``quality``
    float32 struct (:data:`~charattr_hf.schema.QUALITY_FIELDS`), measured on a small thumbnail of the
    RGB image (longest side ``thumbnail_size``, never upscaled) so it costs little and does not depend on
    the model's input size:

    - ``brightness``: mean luma (ITU-R 601 weights, as PIL's ``L``) in [0, 1];
    - ``contrast``: standard deviation of luma, in [0, 0.5];
    - ``saturation``: mean HSV saturation ``(max - min) / max``, in [0, 1];
    - ``colorfulness``: Hasler & Suesstrunk (2003) ``sigma_rgyb + 0.3 * mu_rgyb`` on [0, 1] channels
      (their 0..255 scale divided by 255), clipped to [0, 1]; their "slightly / moderately / averagely /
      quite / highly / extremely colourful" steps sit at 0.06, 0.13, 0.18, 0.23, 0.32, 0.43;
    - ``sharpness``: variance ``v`` of the 4-neighbour Laplacian of luma on the thumbnail, mapped to
      [0, 1) by ``v / (v + SHARPNESS_SCALE)`` (0.5 means ``v == SHARPNESS_SCALE``). On a fixed-size
      thumbnail it measures blur relative to the image's size, the scale a 224-px model sees.
``signature``
    near-duplicate signatures of the decoded image and its file's encoding (struct of strings and numbers;
    see :mod:`charattr_hf.stages.signatures`), for ``recipes/curate.py``. ``signatures=False`` leaves it null.
``_prompt``, ``_prompt_kind``
    only with ``prompts=True`` (the tags source asks for them): the positive prompt the image file carries and
    the tool that wrote it (``a1111``, ``novelai``, ``comfyui``...), read by :func:`charattr_hf.prompts.
    embedded_prompt` from the metadata of the same open file; null when it has none.
the pixel columns of ``pixels``
    one working column per :class:`~charattr_hf.stages.pixels.PixelSpec`: ``uint8`` RGB, ``height x width x 3``,
    C order. ``shortest``/``longest``/``squash`` are resized and cropped exactly as open_clip's eval transform
    would (``open_clip.transform.image_transform(size, is_train=False, resize_mode=..., interpolation=...,
    fill_color=...)`` before ``ToTensor``/``Normalize``); ``pad_square`` as the WD taggers' reference code
    (padded to a square with the fill colour, then resized). Every model sees the image from the same decode:
    the same size limit, EXIF orientation, 16-bit handling, transparency and remote-file reading.

Colour handling, before any resizing:

- alpha (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``transparency`` key) is composited over
  ``background`` (white by default). open_clip's own preprocess resizes the RGBA image and then drops
  alpha, which leaves whatever colour hides under transparent pixels (often black); compositing first is
  deliberate. The pixels equal open_clip's transform applied to the composited image.
- ``I;16`` is scaled by its value range (``/ 257``: 0..65535 -> 0..255), not clipped at 255 as PIL's
  ``convert("L")`` does. ``I`` (32-bit) and ``F`` have no fixed range: values already in 0..255 (``I``)
  or 0..1 (``F``) are used as such, 0..65535 (``I``) is scaled like ``I;16``, anything else is stretched
  from its min..max. Non-finite floats become 0.
- ``CMYK`` and ``YCbCr`` use PIL's conversion (no ICC colour management); ``1``, ``L``, ``P`` likewise.
- EXIF orientation is applied (flag ``exif_rotated``); geometry is computed on the oriented image.

Draft decoding (``draft=True``, the default) trades exactness for speed on images much larger than
needed, never going below twice the size that the final resize produces:

- a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling) when the file is at least 4 times
  the needed size on both sides; the resize then uses the exact sub-pixel box of the full-size frame, so
  the geometry does not change;
- any image at least 4 times the resized size along a side is first shrunk by a whole factor (PIL's
  ``reducing_gap=2``: a box average) before the bicubic/bilinear resize.

Either step changes the pixels by about half a level of 255 on average and a few levels at most on sharp
edges (photos at 224: mean 0.2-0.5, max 9), less than JPEG compression itself, and makes large images
4-6 times faster (a 4000x3000 JPEG: 5x). Images under 4 times the resized size (a 1024x768 photo for a
224 model) are not affected. ``draft=False`` reproduces open_clip exactly (the same PIL calls on the same
pixels, for ``pad_square`` the reference's). With ``draft``, quality is also measured on the reduced decode;
without pixel columns, JPEGs are decoded just large enough for the thumbnail.

Decompression bombs: an image with more than ``max_pixels`` pixels (from its header, before decoding)
becomes an error row. PIL's own process-wide limit (``PIL.Image.MAX_IMAGE_PIXELS``; it refuses images
over twice that) is left untouched and also yields an error row.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from datasets import Image as ImageFeature
from datasets import List, Value
from PIL import Image, ImageColor, UnidentifiedImageError

from ..constants import IMAGE_SUFFIXES
from ..image_access import ANY, MAX_FILE_BYTES, ImageAccess, ImageAccessError, read_local
from ..prompts import PROMPT_COLUMN, PROMPT_KIND_COLUMN, PROMPTS_VERSION, embedded_prompt
from ..schema import QUALITY_FEATURES, QUALITY_FIELDS, SIGNATURE_FEATURES
from .base import ERROR, Stage
from .pixels import RESIZE_MODES, PixelSpec
from .signatures import SIGNATURE_VERSION, compute_signature

__all__ = ["DecodeStage", "FlagThresholds", "FLAGS", "resize_plan", "SHARPNESS_SCALE"]

#: Flags the stage can set, in the order they appear in a row's ``flags``.
FLAGS = (
    "exif_rotated",  # EXIF orientation was not "normal" and has been applied
    "transparent",  # the image has alpha that is actually used (some pixel not opaque); composited
    "palette",  # stored as a palette image (P / PA)
    "cmyk",  # stored as CMYK (converted with PIL's formula, no ICC profile)
    "high_bit_depth",  # 16-bit or float samples, reduced to 8 bits
    "grayscale",  # no chroma: gray modes, or colour modes whose channels are (nearly) equal
    "animated",  # several frames (GIF, APNG, WebP, multi-page TIFF, MPO); the first one is used
    "low_resolution",  # shorter side below ``FlagThresholds.min_side``
    "dark",  # brightness below ``FlagThresholds.dark``
    "overexposed",  # brightness above ``FlagThresholds.overexposed`` (almost all near-white)
    "low_contrast",  # contrast below ``FlagThresholds.low_contrast``
    "blurry",  # sharpness below ``FlagThresholds.blurry``
)
_FLAG_ORDER = {name: i for i, name in enumerate(FLAGS)}

#: Laplacian variance that maps to sharpness 0.5 (luma in [0, 1], thumbnail of ``thumbnail_size``).
SHARPNESS_SCALE = 0.01

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# EXIF orientation -> (transpose method, which output axes run backwards relative to the file).
_ORIENT: dict[int, tuple[Image.Transpose, bool, bool]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, True, False),
    3: (Image.Transpose.ROTATE_180, True, True),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, False, True),
    5: (Image.Transpose.TRANSPOSE, False, False),
    6: (Image.Transpose.ROTATE_270, True, False),
    7: (Image.Transpose.TRANSVERSE, True, True),
    8: (Image.Transpose.ROTATE_90, False, True),
}
#: Transpositions that swap width and height.
_SWAPS = frozenset(
    {Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270}
)
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
#: With ``draft``, resizing first shrinks by whole factors while keeping this many times the output size.
_REDUCING_GAP = 2.0


@dataclass(frozen=True)
class FlagThresholds:
    """Where the quality flags switch on. Quality values are those of the ``quality`` column."""

    #: ``low_resolution`` when the shorter side (pixels) is below this. A fixed size, not the models' input size: the
    #: fusion policies read the flag (the shipped demo policy was trained with it on every 64 px synthetic image),
    #: so its meaning must not change with the models of a run.
    min_side: int = 128
    #: ``dark`` when brightness is below this.
    dark: float = 0.15
    #: ``overexposed`` when brightness is above this.
    overexposed: float = 0.93
    #: ``low_contrast`` when contrast (std of luma) is below this.
    low_contrast: float = 0.05
    #: ``blurry`` when sharpness is below this. Photos and drawings score about 0.6-0.8 when sharp, 0.15-0.2
    #: after a Gaussian blur of sigma = 1/160 of the width, about 0.03 at 1/80.
    blurry: float = 0.1
    #: ``grayscale`` when no thumbnail pixel has max - min channel above this (in [0, 1]).
    grayscale_tolerance: float = 0.02


class DecodeError(Exception):
    """A row that cannot be decoded; the message goes to the ``error`` column as is."""


# ------------------------------------------------------------------------------------------------ geometry
def resize_plan(
    width: int, height: int, image_size: tuple[int, int], resize_mode: str, crop_pct: float = 1.0
) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """Resized size and placement of open_clip's eval transform, computed as open_clip/torchvision do.

    Returns ``((rw, rh), (left, top), force_bicubic)``: resize the image to ``rw x rh``, then the output
    ``image_size`` window starts at ``(left, top)`` in the resized image; a negative offset means padding
    on that side (``CenterCropOrPad``), a positive one cropping (``CenterCrop``). ``force_bicubic`` is True
    where open_clip ignores the configured interpolation (``shortest`` with a non-square size uses
    ``ResizeKeepRatio`` with its bicubic default). For ``pad_square`` (padded before it is resized, see
    :meth:`DecodeStage._pad_square`) the size the image itself is resized to, and the offset of the output window
    in the resized square.
    """
    th, tw = image_size
    force_bicubic = False
    if resize_mode == "pad_square":
        side = max(width, height)
        sh, sw = (math.floor(th / crop_pct), math.floor(tw / crop_pct)) if crop_pct < 1.0 else (th, tw)
        rw, rh = max(1, round(width * sw / side)), max(1, round(height * sh / side))
        return (rw, rh), (int(round((sw - tw) / 2.0)), int(round((sh - th) / 2.0))), False
    if resize_mode == "squash":
        rw, rh = tw, th
    elif resize_mode == "shortest" and th == tw:
        # torchvision Resize(int): shorter side to size, longer side truncated (int), not rounded
        short, long_ = (width, height) if width <= height else (height, width)
        new_long = int(th * long_ / short)
        rw, rh = (th, new_long) if width <= height else (new_long, th)
    elif resize_mode in ("shortest", "longest"):
        # open_clip ResizeKeepRatio: ratio from the shorter (longest=0) or longer (longest=1) side, round()
        ratio_h, ratio_w = height / th, width / tw
        ratio = max(ratio_h, ratio_w) if resize_mode == "longest" else min(ratio_h, ratio_w)
        rh, rw = round(height / ratio), round(width / ratio)
        force_bicubic = resize_mode == "shortest"
    else:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    # an extreme aspect ratio can round a side to 0, where open_clip itself fails; keep one pixel
    rw, rh = max(1, rw), max(1, rh)
    # torchvision center_crop / open_clip center_crop_or_pad: pad (split floor/ceil), then round() crop
    pad_l = (tw - rw) // 2 if tw > rw else 0
    pad_t = (th - rh) // 2 if th > rh else 0
    left = int(round((max(rw, tw) - tw) / 2.0)) - pad_l
    top = int(round((max(rh, th) - th) / 2.0)) - pad_t
    return (rw, rh), (left, top), force_bicubic


def _as_color(value: Any, what: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        rgb = ImageColor.getrgb(value)
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * 3  # type: ignore[return-value]
    if isinstance(value, Sequence) and len(value) == 3:
        rgb = tuple(int(v) for v in value)
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise ValueError(f"{what} must be a colour name, a gray level or an (r, g, b) tuple of 0..255, got {value!r}")


# ------------------------------------------------------------------------------------------------ stage
class DecodeStage(Stage):
    """Decode image cells into hash, size, flags, quality and the pixels each model reads.

    Args:
        pixels: ``{column: PixelSpec}``: the working columns of model-ready RGB pixels to write (names start with
            ``_``: dropped before writing); see :mod:`charattr_hf.stages.pixels`. Like open_clip, ``"shortest"``
            with a non-square size always uses bicubic (its ``ResizeKeepRatio`` default).
        background: colour under transparent pixels (name, gray level or RGB tuple).
        max_pixels: images with more pixels become error rows (``None``: only PIL's own limit).
        draft: decode large JPEGs at reduced scale and shrink large images by whole factors before
            resizing, never below twice the resized size (about 0.5/255 mean difference; the module
            docstring has the details). ``False`` matches open_clip (and the WD taggers' reference) exactly.
        thumbnail_size: longest side of the thumbnail on which quality is measured.
        thresholds: :class:`FlagThresholds` or a mapping of its fields.
        column: the input column holding the images.
        signatures: compute the near-duplicate ``signature`` column (cheap: two small resizes of the image).
        access: where the files that cells name by path may be read from (:class:`~charattr_hf.image_access.
            ImageAccess`; a path outside it is an error row, never read). Default: anywhere.
        keep_image: also write the ``image`` column: the bytes this stage read and decoded, named by the file's
            base name; null for a row it could not decode. What ``--keep_images`` stores: an output never holds
            bytes that were not decoded as an image here, nor any file the row had no right to name.
        prompts: also write ``_prompt`` and ``_prompt_kind``: the prompt embedded in the image's metadata.
    """

    name = "decode"
    quarantine = True  # a row decoding cannot handle is a bad image
    cpu_bound: ClassVar[bool] = True
    #: Bumped when the stage's output for the same parameters changes (part of the fingerprint).
    VERSION: ClassVar[int] = 1

    def __init__(
        self,
        pixels: Mapping[str, PixelSpec] | None = None,
        *,
        background: Any = "white",
        max_pixels: int | None = 100_000_000,
        draft: bool = True,
        thumbnail_size: int = 128,
        thresholds: FlagThresholds | Mapping[str, Any] | None = None,
        column: str = "image",
        signatures: bool = True,
        access: ImageAccess = ANY,
        keep_image: bool = False,
        prompts: bool = False,
    ):
        self.pixels: dict[str, PixelSpec] = {}
        for name, spec in (pixels or {}).items():
            if not name.startswith("_") or not isinstance(spec, PixelSpec):
                raise ValueError(f"pixels: a working column name (starting with '_') -> PixelSpec; got {name!r}: "
                                 f"{spec!r}")
            self.pixels[name] = spec
        self.background = _as_color(background, "background")
        if max_pixels is not None and int(max_pixels) < 1:
            raise ValueError(f"max_pixels must be positive or None, got {max_pixels!r}")
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.draft = bool(draft)
        if int(thumbnail_size) < 8:
            raise ValueError(f"thumbnail_size must be at least 8, got {thumbnail_size!r}")
        self.thumbnail_size = int(thumbnail_size)
        if thresholds is None:
            thresholds = FlagThresholds()
        elif isinstance(thresholds, Mapping):
            known = {f.name for f in fields(FlagThresholds)}
            unknown = set(thresholds) - known
            if unknown:
                raise ValueError(f"unknown flag thresholds {sorted(unknown)}; known: {sorted(known)}")
            thresholds = FlagThresholds(**thresholds)
        self.thresholds: FlagThresholds = thresholds
        self.column = column
        self.signatures = bool(signatures)
        self.access = access
        self.keep_image = bool(keep_image)
        self.prompts = bool(prompts)

    # -- description --------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "version": self.VERSION,
            "pixels": {name: spec.geometry() for name, spec in sorted(self.pixels.items())},
            "background": list(self.background),
            "max_pixels": self.max_pixels,
            "draft": self.draft,
            "thumbnail_size": self.thumbnail_size,
            "thresholds": asdict(self.thresholds),
            "column": self.column,
            # near-duplicate signatures (curation, #11)
            "signatures": SIGNATURE_VERSION if self.signatures else None,
            # which rows' files may be read, and whether their bytes are kept (#17); only when not the default,
            # so that a stage without them keeps its fingerprint
            **({"access": self.access.params()} if self.access != ANY else {}),
            **({"keep_image": True} if self.keep_image else {}),
            # the prompt embedded in the image (#17); only when asked, so that other stages keep their fingerprint
            **({"prompts": PROMPTS_VERSION} if self.prompts else {}),
        }

    def configured(self, *, access: ImageAccess | None = None, keep_image: bool | None = None) -> "DecodeStage":
        """A copy with another file access and/or ``keep_image``."""
        import copy

        other = copy.copy(self)
        if access is not None:
            other.access = access
        if keep_image is not None:
            other.keep_image = bool(keep_image)
        return other

    def features(self) -> dict:
        """Columns added (``error`` is handled by the base class and typed by the runner, as for all stages)."""
        feats: dict[str, Any] = {
            "sha256": Value("string"),
            "flags": List(Value("string")),
            "width": Value("int32"),
            "height": Value("int32"),
            "quality": dict(QUALITY_FEATURES),
            "signature": dict(SIGNATURE_FEATURES),  # curation (#11)
        }
        for name in self.pixels:
            feats[name] = Value("binary")
        if self.keep_image:
            feats[self.column] = ImageFeature(decode=False)
        if self.prompts:
            feats[PROMPT_COLUMN] = Value("string")
            feats[PROMPT_KIND_COLUMN] = Value("string")
        return feats

    def input_columns(self) -> list[str]:
        return [self.column]

    def null_row(self) -> dict[str, Any]:
        row = super().null_row()
        row["flags"] = []
        return row

    # -- execution ----------------------------------------------------------------------------
    def process(self, batch: dict[str, list]) -> dict[str, list]:
        cells = batch[self.column]
        upstream = batch.get(ERROR) or [None] * len(cells)
        out: dict[str, list] = {col: [] for col in self.features()}
        out[ERROR] = []
        with warnings.catch_warnings():
            # DecompressionBombWarning, "palette images with transparency ...", EXIF noise: the outcome of
            # each row is in its columns, not in the log
            warnings.simplefilter("ignore")
            for cell, prior in zip(cells, upstream):
                if prior is not None:
                    row, error = self.null_row(), prior
                else:
                    sha = None
                    try:
                        source, sha = self._read(cell)
                        row, error = self._decode(source, sha), None
                        if self.keep_image:
                            row[self.column] = _kept_image(cell, source)
                    except DecodeError as exc:
                        error = str(exc)
                        if error.startswith(_NOT_AN_IMAGE) and _names_other_file(cell):
                            # a file a row names that is no image, not even by its name, keeps no hash: the output
                            # must not confirm what another file of the input's folder holds (a key, a document)
                            sha = None
                        row = self._error_row(sha)
                    except Exception as exc:  # noqa: BLE001 - any failure of one file is that row's error
                        row, error = self._error_row(sha), _describe(exc)
                for col, values in out.items():
                    if col != ERROR:
                        values.append(row[col])
                out[ERROR].append(error)
        return out

    def _error_row(self, sha: str | None) -> dict[str, Any]:
        """Null outputs; the file's hash stays when its bytes could be read, to find and group bad files."""
        row = self.null_row()
        row["sha256"] = sha
        return row

    def _decode(self, source: "bytes | Image.Image", sha: str | None) -> dict[str, Any]:
        im, sha = self._open(source, sha)
        fw, fh = im.size  # as stored in the file
        if fw < 1 or fh < 1:
            raise DecodeError(f"empty image: {fw}x{fh}")
        if self.max_pixels is not None and fw * fh > self.max_pixels:
            raise DecodeError(f"image too large: {fw}x{fh} > max_pixels ({self.max_pixels})")

        # what the header tells, before decoding (loading drops the tile that shows 16-bit PNGs)
        flags: set[str] = set()
        if _is_animated(im):
            flags.add("animated")
        if _is_high_bit_depth(im):
            flags.add("high_bit_depth")
        if im.mode in ("P", "PA"):
            flags.add("palette")
        elif im.mode == "CMYK":
            flags.add("cmyk")

        draftable = self.draft and im.format in _DRAFT_FORMATS and getattr(im, "decoderconfig", None) == ()
        if not draftable:
            # decode now, so that a damaged file fails here and not half-way through reading its EXIF
            # (PNG keeps EXIF after the image data); JPEG EXIF is in the header and must be read before
            # choosing the draft scale
            im.load()
        orientation = _orientation(im)
        method = _ORIENT.get(orientation)
        swapped = bool(method) and method[0] in _SWAPS  # type: ignore[index]
        width, height = (fh, fw) if swapped else (fw, fh)
        if method:
            flags.add("exif_rotated")

        plans = {name: resize_plan(width, height, spec.size, spec.resize, spec.crop_pct)
                 for name, spec in self.pixels.items()}

        # draft decoding: reduced DCT scale, at least twice what the resize and the thumbnail need
        scale = 1.0
        if draftable:
            need_w, need_h = _thumb_size(width, height, self.thumbnail_size)
            for p in plans.values():
                need_w, need_h = max(need_w, p[0][0]), max(need_h, p[0][1])
            if swapped:
                need_w, need_h = need_h, need_w
            if fw >= 4 * need_w and fh >= 4 * need_h:
                res = im.draft(im.mode, (2 * need_w, 2 * need_h))
                if res is not None:
                    scale = fw / res[1][2]

        rgb = self._to_rgb(im, flags)  # decodes; truncated data raises here
        # the prompt in the file's metadata (PNG text after the pixel data is read by the decoding above)
        prompt = embedded_prompt(im) if self.prompts else None
        if method:
            rgb = rgb.transpose(method[0])

        row: dict[str, Any] = {"sha256": sha, "width": width, "height": height}
        if self.prompts:
            row[PROMPT_COLUMN], row[PROMPT_KIND_COLUMN] = prompt or (None, None)
        for name, spec in self.pixels.items():
            row[name] = self._pixels(rgb, spec, plans[name], scale, width, height, method)

        quality, gray, sharpness_measured = self._quality(rgb)
        row["quality"] = quality
        row["signature"] = compute_signature(rgb, im, source, (width, height)) if self.signatures else None  # curation
        if gray:
            flags.add("grayscale")
        th = self.thresholds
        if min(width, height) < th.min_side:
            flags.add("low_resolution")
        if quality["brightness"] < th.dark:
            flags.add("dark")
        if quality["brightness"] > th.overexposed:
            flags.add("overexposed")
        if quality["contrast"] < th.low_contrast:
            flags.add("low_contrast")
        if quality["sharpness"] < th.blurry and sharpness_measured:
            flags.add("blurry")
        row["flags"] = sorted(flags, key=_FLAG_ORDER.__getitem__)
        return row

    # -- steps ---------------------------------------------------------------------------------
    def _read(self, cell: Any) -> tuple["bytes | Image.Image", str | None]:
        """File bytes and their hash, or an image object (hashed later, from its pixels)."""
        if isinstance(cell, Image.Image):
            return cell, None
        data = _read_bytes(cell, self.access)
        return data, hashlib.sha256(data).hexdigest()  # an empty file too: its row keeps the hash of b""

    def _open(self, source: "bytes | Image.Image", sha: str | None) -> tuple[Image.Image, str]:
        """The (lazily decoded) image and its hash."""
        if isinstance(source, Image.Image):
            im = source
            if im.width * im.height == 0:
                raise DecodeError(f"empty image: {im.width}x{im.height}")
            if self.max_pixels is not None and im.width * im.height > self.max_pixels:
                raise DecodeError(f"image too large: {im.width}x{im.height} > max_pixels ({self.max_pixels})")
            digest = hashlib.sha256(f"pil:{im.mode}:{im.width}x{im.height}:".encode())
            digest.update(im.tobytes())
            return im, digest.hexdigest()
        assert sha is not None
        if not source:
            raise DecodeError("empty file: no image bytes")
        try:
            im = Image.open(io.BytesIO(source))
        except UnidentifiedImageError:
            raise DecodeError(f"{_NOT_AN_IMAGE} image file") from None
        except Image.DecompressionBombError:
            raise DecodeError(self._too_large(source)) from None
        return im, sha

    def _too_large(self, data: bytes) -> str:
        """Message for a file PIL refused to open as a decompression bomb (over its process-wide limit)."""
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        size = _header_size(data)
        if size is None:
            return f"image too large: over PIL's limit of {limit} pixels"
        w, h = size
        if self.max_pixels is not None and w * h > self.max_pixels:
            return f"image too large: {w}x{h} > max_pixels ({self.max_pixels})"
        return f"image too large: {w}x{h} > PIL's limit ({limit} pixels)"

    def _to_rgb(self, im: Image.Image, flags: set[str]) -> Image.Image:
        """8-bit RGB, alpha composited over the background. Decodes the image (``load``)."""
        im.load()
        mode = im.mode
        if mode == "RGB":
            return im
        if mode.startswith("I;16") or mode in ("I", "F"):
            return _high_range_to_l(im).convert("RGB")
        if mode in _ALPHA_MODES or (mode in ("P", "L", "1", "RGB") and "transparency" in im.info):
            rgba = im.convert("RGBA")
            alpha = rgba.getchannel("A")
            if alpha.getextrema()[0] == 255:  # alpha present but unused: no compositing, no flag
                return rgba.convert("RGB")
            flags.add("transparent")
            canvas = Image.new("RGB", rgba.size, self.background)
            canvas.paste(rgba, (0, 0), alpha)
            return canvas
        try:
            return im.convert("RGB")
        except (ValueError, OSError) as exc:
            raise DecodeError(f"unsupported image mode: {mode} ({exc})") from None

    def _pixels(
        self,
        rgb: Image.Image,
        spec: PixelSpec,
        plan: tuple[tuple[int, int], tuple[int, int], bool],
        scale: float,
        width: int,
        height: int,
        method: tuple[Image.Transpose, bool, bool] | None,
    ) -> bytes:
        """``spec``'s pixels of the decoded image, uint8 RGB bytes: resize + centre crop/pad as open_clip's eval
        transform, or :meth:`_pad_square`."""
        (rw, rh), (left, top), force_bicubic = plan
        th, tw = spec.size
        resample = Image.Resampling.BICUBIC if force_bicubic else _RESAMPLING[spec.interpolation]
        # draft: shrink by an integer factor first (box average, PIL's reduce), keeping at least twice
        # the output size for the final resampling
        gap = _REDUCING_GAP if self.draft else None
        # the full-resolution frame in the (possibly draft-decoded) image. libjpeg rounds the reduced size up, so
        # the extra fraction of a pixel sits at the right/bottom of the file, which is at the left/top of an axis
        # that the EXIF orientation reverses.
        ex_w, ex_h = width / scale, height / scale
        off_x = (rgb.width - ex_w) if method and method[1] else 0.0
        off_y = (rgb.height - ex_h) if method and method[2] else 0.0
        if spec.resize == "pad_square":
            return self._pad_square(rgb, spec, (off_x, off_y), scale, width, height, resample, gap)
        if scale != 1.0:
            # draft-decoded: map the full-resolution frame onto the reduced image exactly
            box = (off_x, off_y, min(off_x + ex_w, rgb.width), min(off_y + ex_h, rgb.height))
            resized = rgb.resize((rw, rh), resample, box=box, reducing_gap=gap)
        elif (rw, rh) != rgb.size:
            # the whole image, then crop, as open_clip does: a box-limited resize can make PIL pick the
            # other pass order and round differently
            resized = rgb.resize((rw, rh), resample, reducing_gap=gap)
        else:
            resized = rgb
        if left < 0 or top < 0:
            canvas = Image.new("RGB", (tw, th), spec.fill if spec.resize == "longest" else (0, 0, 0))
            canvas.paste(resized, (-left, -top))  # pads one axis; a positive offset on the other crops it
            return canvas.tobytes()
        if (rw, rh) != (tw, th):
            resized = resized.crop((left, top, left + tw, top + th))
        return resized.tobytes()

    @staticmethod
    def _pad_square(rgb: Image.Image, spec: PixelSpec, frame: tuple[float, float], scale: float,
                    width: int, height: int, resample, gap) -> bytes:
        """``pad_square`` pixels as the WD taggers' reference code makes them (wd-tagger Space ``prepare_image``,
        wdv3-timm ``pil_pad_square`` + timm's eval transform): the image pasted on a square of its longer side
        filled with ``spec.fill``, at ``((side - w) // 2, (side - h) // 2)``, the square resized to the size (to
        ``size / crop_pct`` then centre-cropped when ``crop_pct`` < 1). On a draft-decoded image the square is laid
        out in the reduced image's pixels (offsets rounded to its grid) and resized from its exact sub-pixel box."""
        th, tw = spec.size
        sh, sw = (math.floor(th / spec.crop_pct), math.floor(tw / spec.crop_pct)) if spec.crop_pct < 1.0 else (th, tw)
        side = max(width, height)
        off_x, off_y = frame
        pad_x, pad_y = (side - width) // 2, (side - height) // 2
        if scale == 1.0:
            square = rgb
            if rgb.size != (side, side):
                square = Image.new("RGB", (side, side), spec.fill)
                square.paste(rgb, (pad_x, pad_y))
            resized = square if (side, side) == (sw, sh) else square.resize((sw, sh), resample, reducing_gap=gap)
        else:
            reduced = side / scale
            at = (round(pad_x / scale - off_x), round(pad_y / scale - off_y))
            square = Image.new("RGB", (math.ceil(reduced), math.ceil(reduced)), spec.fill)
            square.paste(rgb, at)  # the reduced image's fraction of a pixel past the frame lies in the padding
            resized = square.resize((sw, sh), resample, box=(0.0, 0.0, reduced, reduced), reducing_gap=gap)
        if (sw, sh) != (tw, th):
            left, top = int(round((sw - tw) / 2.0)), int(round((sh - th) / 2.0))
            resized = resized.crop((left, top, left + tw, top + th))
        return resized.tobytes()

    def _quality(self, rgb: Image.Image) -> tuple[dict[str, float], bool, bool]:
        """Quality measurements on a thumbnail, whether the image has no chroma, and whether sharpness could
        be measured (a thumbnail under 3 pixels on a side has no Laplacian; sharpness is then 0)."""
        tw, th = _thumb_size(rgb.width, rgb.height, self.thumbnail_size)
        thumb = rgb if (tw, th) == rgb.size else rgb.resize((tw, th), Image.Resampling.BOX, reducing_gap=1.0)
        # planar float32 in 0..255 (contiguous channels make the reductions several times faster)
        p = np.asarray(thumb).transpose(2, 0, 1).astype(np.float32)
        r, g, b = p[0], p[1], p[2]
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        mx = np.maximum(np.maximum(r, g), b)
        chroma = mx - np.minimum(np.minimum(r, g), b)
        sat = np.divide(chroma, mx, out=np.zeros_like(mx), where=mx > 0)
        rg = r - g
        yb = 0.5 * (r + g) - b
        colorfulness = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(
            float(rg.mean()), float(yb.mean())
        )
        measured = luma.shape[0] >= 3 and luma.shape[1] >= 3
        if measured:
            lap = 4.0 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
            var = float(lap.var()) / (255.0 * 255.0)
            sharpness = var / (var + SHARPNESS_SCALE)
        else:
            sharpness = 0.0
        values = {
            "brightness": float(luma.mean()) / 255.0,
            "contrast": float(luma.std()) / 255.0,
            "saturation": float(sat.mean()),
            "colorfulness": min(1.0, colorfulness / 255.0),
            "sharpness": sharpness,
        }
        quality = {name: values[name] for name in QUALITY_FIELDS}
        gray = float(chroma.max()) <= 255.0 * self.thresholds.grayscale_tolerance
        return quality, gray, measured


# ------------------------------------------------------------------------------------------------ helpers
def _thumb_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Fit within ``size x size`` keeping the aspect ratio; never upscale."""
    longest = max(width, height)
    if longest <= size:
        return width, height
    return max(1, round(width * size / longest)), max(1, round(height * size / longest))


#: How the error of a file PIL cannot identify as an image starts (see ``DecodeStage._open``).
_NOT_AN_IMAGE = "unreadable image: cannot identify"


def _names_other_file(cell: Any) -> bool:
    """Whether the cell names a file by path (rather than carrying the bytes) whose name is not an image's."""
    path = cell if isinstance(cell, (str, os.PathLike)) else \
        cell.get("path") if isinstance(cell, Mapping) and cell.get("bytes") is None else None
    if path is None:
        return False
    name = os.fspath(path).split("::")[0].rsplit("/", 1)[-1]
    return os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES


def _read_bytes(cell: Any, access: ImageAccess = ANY) -> bytes:
    """File bytes of a cell: ``{"bytes", "path"}``, raw bytes, or a path (read only when ``access`` allows it)."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, Mapping):
        data = cell.get("bytes")
        if data is not None:
            return bytes(data)
        path = cell.get("path")
        if path is None:
            raise DecodeError("no image: the cell has neither bytes nor a path")
        return _read_path(path, access)
    if isinstance(cell, (str, os.PathLike)):
        return _read_path(cell, access)
    if cell is None:
        raise DecodeError("no image: the cell is empty")
    raise DecodeError(f"no image: unsupported cell type {type(cell).__name__}")


def _read_path(path: str | os.PathLike, access: ImageAccess = ANY) -> bytes:
    path = os.fspath(path)
    try:
        path = access.resolve(path)
    except ImageAccessError as exc:
        raise DecodeError(str(exc)) from None
    if "://" in path or "::" in path:
        # remote or archive member (streaming datasets: "zip://member::hf://datasets/..."): fsspec, as datasets opens
        # them
        import fsspec

        try:
            with fsspec.open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise DecodeError(f"file not found: {path}") from None
        if len(data) > MAX_FILE_BYTES:
            raise DecodeError(f"file too large, not read: {path} (over {MAX_FILE_BYTES} bytes)")
        return data
    try:
        return read_local(path)
    except ImageAccessError as exc:
        raise DecodeError(str(exc)) from None
    except FileNotFoundError:
        raise DecodeError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DecodeError(f"not a file: {path}") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file: {path}: {exc.strerror or exc}") from None


def _kept_image(cell: Any, source: "bytes | Image.Image") -> dict[str, Any]:
    """The ``image`` cell an output keeps: the bytes that were decoded, named by the file's base name (as
    ``datasets`` names embedded files), never a local path."""
    path = cell.get("path") if isinstance(cell, Mapping) else os.fspath(cell) if isinstance(cell, (str, os.PathLike)) \
        else None
    if isinstance(source, Image.Image):  # an in-memory image: stored losslessly
        buf = io.BytesIO()
        try:
            source.save(buf, "PNG")
        except (OSError, ValueError):  # a mode PNG cannot hold (CMYK...)
            buf = io.BytesIO()
            source.convert("RGBA").save(buf, "PNG")
        source, path = buf.getvalue(), None
    name = None
    if path:
        name = os.path.basename(str(path).split("::", 1)[0].split("://", 1)[-1].rstrip("/")) or None
    return {"bytes": bytes(source), "path": name}


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Size from the file header, read by the format plugin without PIL's bomb check (for the message)."""
    prefix = data[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and not accept(prefix):
                continue
            return factory(io.BytesIO(data)).size  # type: ignore[call-arg]
        except Exception:  # noqa: BLE001 - not this format
            continue
    return None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if value in _ORIENT else 1
    except Exception:  # noqa: BLE001 - corrupt EXIF: keep the image as stored
        return 1


def _is_animated(im: Image.Image) -> bool:
    try:
        return bool(getattr(im, "is_animated", False))
    except Exception:  # noqa: BLE001 - a damaged second frame does not make the first unusable
        return False


def _is_high_bit_depth(im: Image.Image) -> bool:
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return True
    # 16-bit colour PNGs open as 8-bit modes; the raw mode of the undecoded tile tells
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and (";16" in rawmode or ";32" in rawmode or rawmode.startswith("F")):
            return True
    return False


def _high_range_to_l(im: Image.Image) -> Image.Image:
    """8-bit ``L`` from ``I;16*``, ``I`` or ``F``, scaled by value range rather than clipped."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        amin, amax = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode == "F" and amin >= 0.0 and amax <= 1.0:
            lo, hi = 0.0, 1.0
        elif amin >= 0.0 and amax <= 255.0:
            lo, hi = 0.0, 255.0
        elif im.mode == "I" and amin >= 0.0 and amax <= 65535.0:
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = amin, amax if amax > amin else amin + 1.0
    out = np.rint((a.astype(np.float64) - lo) * (255.0 / (hi - lo)))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


def _describe(exc: BaseException) -> str:
    """A short, clear message for a decoding failure."""
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large: {text}"
    if isinstance(exc, EOFError) or "truncated" in low or "premature end" in low:
        return f"truncated image: {text}"
    if isinstance(exc, MemoryError):
        return "image too large: out of memory while decoding"
    return f"corrupt image: {type(exc).__name__}: {text}"
