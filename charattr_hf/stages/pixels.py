"""What a model reads of an image: a :class:`PixelSpec`, declared by each source that runs a model.

The decode stage reads and decodes each image once and writes one working column of uint8 RGB pixels
(``height x width x 3``, C order) per distinct *geometry* of the running sources' specs: size, resize mode,
interpolation, padding colour and crop (:meth:`PixelSpec.geometry`). Two sources whose models take the same
geometry share one column. The rest of a spec (the channel order and the mean/std of normalisation) is applied
by the source's model stage on the device, on uint8 pixels (4x less host-to-device traffic than floats).

Resize modes:

- ``shortest``, ``longest``, ``squash``: open_clip's eval transform (``resize_mode``): the shorter side to the
  size then a centre crop; the longer side to the size then padding with ``fill``; both sides to the size;
- ``pad_square``: the WD taggers' preprocessing: pad to a square of the longer side with ``fill`` (the image at
  ``((side - w) // 2, (side - h) // 2)``), then resize to the size; with ``crop_pct`` < 1, resize to
  ``floor(size / crop_pct)`` and centre-crop, as timm's eval transform does.

This module imports nothing heavy: the sources declare their specs while the options are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import stable_hash

__all__ = ["PixelSpec", "RESIZE_MODES", "INTERPOLATIONS"]

RESIZE_MODES = ("shortest", "longest", "squash", "pad_square")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0)}


@dataclass(frozen=True)
class PixelSpec:
    """The pixels one model reads (see the module docstring).

    Args:
        size: ``(height, width)``, or an int for a square.
        resize: a mode of :data:`RESIZE_MODES`.
        interpolation: a filter of :data:`INTERPOLATIONS` (``random``, open_clip's training setting, is bicubic).
        fill: padding colour of ``longest`` and ``pad_square``: a gray level, an ``(r, g, b)`` tuple, or
            ``"white"``/``"black"``.
        crop_pct: ``pad_square`` only: resize to ``size / crop_pct``, then centre-crop to ``size``.
        order: the channel order the model takes, ``RGB`` or ``BGR`` (the column is always RGB).
        mean, std: normalisation of ``[0, 1]`` values, per channel in RGB order.
    """

    size: Any
    resize: str = "shortest"
    interpolation: str = "bicubic"
    fill: Any = 0
    crop_pct: float = 1.0
    order: str = "RGB"
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)

    def __post_init__(self):
        size = self.size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        elif isinstance(size, (tuple, list)) and len(size) in (1, 2):
            size = (int(size[0]), int(size[-1]))
        else:
            raise ValueError(f"PixelSpec size must be an int or (height, width), got {self.size!r}")
        if min(size) < 1:
            raise ValueError(f"PixelSpec size must be positive, got {self.size!r}")
        interpolation = "bicubic" if self.interpolation == "random" else self.interpolation
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"PixelSpec resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"PixelSpec interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.order not in ("RGB", "BGR"):
            raise ValueError(f"PixelSpec order must be RGB or BGR, got {self.order!r}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"PixelSpec crop_pct must be in (0, 1], got {self.crop_pct!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "interpolation", interpolation)
        object.__setattr__(self, "fill", _colour(self.fill))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def geometry(self) -> dict:
        """What the decode stage makes of an image for this spec (one column per distinct geometry)."""
        return {"size": list(self.size), "resize": self.resize, "interpolation": self.interpolation,
                "fill": list(self.fill), "crop_pct": self.crop_pct}

    @property
    def column(self) -> str:
        """The working column that holds these pixels (dropped before writing)."""
        return "_pixels_" + stable_hash(self.geometry())[:10]


def _colour(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str) and value in _NAMED_COLOURS:
        return _NAMED_COLOURS[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return (value, value, value)
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(0 <= int(v) <= 255 for v in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"PixelSpec fill must be a gray level, an (r, g, b) tuple of 0..255, 'white' or 'black', "
                     f"got {value!r}")
