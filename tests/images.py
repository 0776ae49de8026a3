"""Builders of image bytes for tests: ordinary, odd (modes, EXIF, 16-bit, animation) and broken ones.

Everything is generated in memory with PIL, numpy and zlib; nothing is read from disk or the network.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    """``im`` saved to bytes in ``fmt`` (PIL format name)."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ content
def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A colourful RGB test picture with smooth gradients, hard edges and fine texture (not symmetric,
    so crops, flips and rotations are distinguishable)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    r = 255 * u
    g = 255 * v
    b = 127.5 + 127.5 * np.sin(9 * u + 5 * v * v)
    img = np.stack([r, g, b], axis=-1)
    # hard-edged shapes: a disc and a bar, off centre
    disc = (u - 0.3) ** 2 + ((v - 0.35) * height / max(width, 1)) ** 2 < 0.02
    img[disc] = (250, 40, 30)
    img[(u > 0.6) & (u < 0.7)] = (20, 20, 200)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def checkerboard(width: int, height: int, cell: int = 2, dark: int = 0, light: int = 255) -> Image.Image:
    """A sharp gray checkerboard (maximal Laplacian)."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.where(((x // cell) + (y // cell)) % 2 == 0, light, dark).astype(np.uint8)
    return Image.fromarray(a, "L").convert("RGB")


def smooth(width: int, height: int) -> Image.Image:
    """A gentle, colourful gradient with no edges at all (blurry by any measure)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    img = np.stack([80 + 100 * u, 90 + 60 * v, 160 - 60 * u], axis=-1)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def solid(width: int, height: int, color=(128, 128, 128), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (width, height), color)


# ------------------------------------------------------------------------------------------ odd files
def with_orientation(im: Image.Image, orientation: int, fmt: str = "JPEG", **kwargs) -> bytes:
    """``im`` stored as is, with an EXIF orientation tag telling viewers how to turn it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), **kwargs)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(
    width: int, height: int, bit_depth: int, color_type: int, pixels: bytes | None = None, idat: bytes | None = None
) -> bytes:
    """A PNG written by hand, for what PIL will not write: 16-bit colour, absurd or zero sizes.

    ``pixels`` are the unfiltered scanlines (big-endian samples); filter bytes are added here. Pass
    ``idat`` instead to store arbitrary compressed data (e.g. a header-only "bomb").
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
        stride = width * channels * bit_depth // 8
        assert pixels is not None and len(pixels) == stride * height
        raw = b"".join(b"\x00" + pixels[i * stride : (i + 1) * stride] for i in range(height))
        idat = zlib.compress(raw)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_rgb16(width: int, height: int) -> tuple[bytes, np.ndarray]:
    """A 16-bit-per-channel RGB PNG and its uint16 pixels."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 65535 // max(width - 1, 1), y * 65535 // max(height - 1, 1), np.full_like(x, 30000)], -1)
    a = a.astype(">u2")
    return raw_png(width, height, 16, 2, a.tobytes()), a.astype(np.uint16)


def png_gray16_gradient(width: int = 256, height: int = 8, lo: int = 0, hi: int = 65535) -> bytes:
    """A 16-bit grayscale PNG (opens as ``I;16``), a horizontal ramp from ``lo`` to ``hi``."""
    ramp = np.linspace(lo, hi, width).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (height, 1))), "PNG")


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` with almost no data (a decompression-bomb stand-in)."""
    return raw_png(width, height, 8, 2, idat=zlib.compress(b"\x00" * 64))


def animated_gif(width: int = 32, height: int = 24, frames: int = 3) -> bytes:
    ims = [solid(width, height, (255 * (i % 2), 80, 255 * ((i + 1) % 2))) for i in range(frames)]
    return encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=50, loop=0)


def palette_with_transparency(width: int = 40, height: int = 30) -> bytes:
    """A P-mode PNG: left half transparent (index 0), right half opaque red (index 1)."""
    im = Image.new("P", (width, height), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (width // 2, 0, width, height))
    return encode(im, "PNG", transparency=0)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``data``."""
    return data[: max(1, int(len(data) * keep))]
