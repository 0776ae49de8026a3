"""Drawing a :class:`~charattr_hf.synthetic.character.Character` in one of the styles: geometry, colours,
backgrounds, the figure, and the style effects (sketch greys, watercolour, pixel grid, coloured light)."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .character import EYE_COLORS, HAIR_COLORS, RGB, TOP_COLORS, Character, _check_style

#: Light casts of the ``lit`` style: per-channel gain and offset.
_LIGHT_CASTS = (((0.30, 0.38, 0.70), (5.0, 8.0, 25.0)), ((1.0, 0.62, 0.35), (40.0, 10.0, 0.0)))

_SKIN_TONES = np.array(
    [(255, 228, 208), (244, 204, 174), (226, 176, 136), (186, 132, 94), (130, 88, 60)], dtype=np.float64
)
_HAT_COLORS: tuple[RGB, ...] = (
    (60, 50, 70), (150, 110, 70), (230, 220, 190), (200, 60, 60), (60, 90, 160), (90, 140, 90), (240, 240, 240)
)
_BOW_COLORS: tuple[RGB, ...] = (
    (230, 40, 70), (250, 130, 180), (250, 250, 250), (40, 60, 160), (30, 30, 30), (250, 210, 60)
)
_SCARF_COLORS: tuple[RGB, ...] = (
    (200, 40, 50), (60, 110, 200), (240, 200, 80), (90, 160, 90), (230, 230, 230), (140, 90, 160)
)
_GLASSES_COLORS: tuple[RGB, ...] = ((30, 28, 34), (90, 50, 30), (110, 20, 30), (30, 40, 100))
_LINE: RGB = (52, 36, 44)
_MOUTH: RGB = (150, 46, 58)
_TEAR: RGB = (150, 205, 250)
_WHITE: RGB = (255, 255, 255)

# Random numbers the renderer draws per image, always the same count so that the image of one character
# depends only on what is drawn (and a sketch of two colourings is identical).
_N_UNIFORM = 32
_NOISE_GRID = 6
_PAPER_GRID = 16


# ---------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where the character is, in fractions of the image side (multiply by the size for pixels).

    ``cx, cy``: head centre; ``r``: head half-width; ``ry``: head half-height; ``y_sh``: shoulder line;
    ``sh_w``/``bot_w``: half-widths of the upper body at the shoulders and the bottom. The ``*_probe``
    methods give pixel positions inside regions that show exactly one attribute's colour, whatever else is
    drawn: tests sample them to check that the picture agrees with the truth.
    """

    cx: float
    cy: float
    r: float
    ry: float
    y_sh: float
    sh_w: float
    bot_w: float
    size: int

    def _px(self, x: float, y: float) -> tuple[int, int]:
        return int(x * self.size), int(y * self.size)

    def hair_probe(self) -> tuple[int, int]:
        """Middle of the left lock of hair beside the face (never covered by hat, bow or glasses)."""
        return self._px(self.cx - 0.89 * self.r, self.cy + 0.1 * self.ry)

    def eye_probes(self) -> list[tuple[int, int]]:
        """Lower middle of each iris (away from the highlight)."""
        ey = self.cy + 0.22 * self.r
        return [self._px(self.cx + s * 0.4 * self.r + 0.02 * self.r, ey + 0.1 * self.r) for s in (-1, 1)]

    def top_probe(self) -> tuple[int, int]:
        """Upper body, left of the middle: below collar and scarf, beside the scarf's tail."""
        return self._px(self.cx - 0.25 * self.r, self.y_sh + 0.6 * self.r)

    def skin_probe(self) -> tuple[int, int]:
        """Cheek, between the eye and the mouth."""
        return self._px(self.cx + 0.42 * self.r, self.cy + 0.62 * self.ry)


def _geometry(style: str, u: Sequence[float], size: int) -> Geometry:
    scale = 0.85 + 0.25 * u[0]
    dx, dy = (u[1] - 0.5) * 0.16, (u[2] - 0.5) * 0.16
    if style == "chibi":
        r = 0.27 * scale
        ry = 1.0 * r
        cy = 0.40 + dy
        return Geometry(0.5 + dx, cy, r, ry, cy + ry + 0.02 * scale, 0.55 * r, 0.7 * r, size)
    r = 0.2 * scale
    ry = 1.08 * r
    cy = 0.40 + dy
    return Geometry(0.5 + dx, cy, r, ry, cy + ry + 0.07 * scale, 1.0 * r, 1.12 * r, size)


# ---------------------------------------------------------------------------------------------- colours
def _mul(c: Sequence[float], k: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * k)))) for v in c)  # type: ignore[return-value]


def _mix(c: Sequence[float], d: Sequence[float], t: float) -> RGB:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c, d))  # type: ignore[return-value]


def _gray(v: float) -> RGB:
    g = int(max(0, min(255, round(v))))
    return (g, g, g)


def _watercolor(c: RGB, hue_shift: float) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in c))
    r, g, b = colorsys.hsv_to_rgb((h + hue_shift) % 1.0, s * 0.92, v)
    return _mix((r * 255, g * 255, b * 255), (252, 250, 244), 0.08)


def _colors(ch: Character, style: str, u: Sequence[float]) -> dict[str, RGB]:
    """Colour of every drawn role for this style. Sketch colours depend on ``u`` only, never on ``ch``."""
    if style == "sketch":
        hair = 150 + 70 * u[10]
        top = 165 + 85 * u[11]
        return {
            "hair": _gray(hair), "hair_shade": _gray(hair * 0.86), "hair_hi": _gray(hair + 30),
            "skin": _gray(252), "skin_shade": _gray(232),
            "iris": _gray(55 + 60 * u[12]), "sclera": _WHITE,
            "top": _gray(top), "top_shade": _gray(top * 0.86),
            "hat": _gray(120 + 120 * u[13]), "hat_band": _gray(80 + 60 * u[14]),
            "bow": _gray(110 + 140 * u[15]), "scarf": _gray(130 + 110 * u[16]),
            "glasses": _gray(45), "mouth": _gray(120), "tear": _gray(235), "line": _gray(55),
        }
    skin_pos = u[5] * (len(_SKIN_TONES) - 1)
    k = min(int(skin_pos), len(_SKIN_TONES) - 2)
    skin = tuple(_SKIN_TONES[k] + (_SKIN_TONES[k + 1] - _SKIN_TONES[k]) * (skin_pos - k))
    hair = HAIR_COLORS[ch.hair_color]
    top = TOP_COLORS[ch.top_color]
    cols: dict[str, RGB] = {
        "hair": hair, "hair_shade": _mul(hair, 0.84), "hair_hi": _mix(hair, _WHITE, 0.45),
        "skin": _mul(skin, 1.0), "skin_shade": _mul(skin, 0.86),
        "iris": EYE_COLORS[ch.eye_color], "sclera": _WHITE,
        "top": top, "top_shade": _mul(top, 0.8) if ch.top_color != "black" else (60, 60, 70),
        "hat": _HAT_COLORS[int(u[6] * len(_HAT_COLORS))],
        "hat_band": _BOW_COLORS[int(u[7] * len(_BOW_COLORS))],
        "bow": _BOW_COLORS[int(u[8] * len(_BOW_COLORS))],
        "scarf": _SCARF_COLORS[int(u[9] * len(_SCARF_COLORS))],
        "glasses": _GLASSES_COLORS[int(u[17] * len(_GLASSES_COLORS))],
        "mouth": _MOUTH, "tear": _TEAR, "line": _LINE,
    }
    if ch.hair_color == "black":
        cols["hair_shade"] = (24, 22, 30)
    if style == "watercolor":
        shift = (u[18] - 0.5) * 0.05
        cols = {k: (_watercolor(v, shift) if k not in ("sclera",) else v) for k, v in cols.items()}
        cols["line"] = (96, 80, 92)
    return cols


def _background(ch: Character, style: str, u: Sequence[float], grid: np.ndarray, side: int) -> Image.Image:
    """White, flat colour, two-colour gradient or blocky noise; gray paper tones for sketches."""
    def pick(a: float, b: float, c: float) -> np.ndarray:
        if style == "sketch":
            return np.full(3, 228.0 + 27.0 * c)
        r, g, bl = colorsys.hsv_to_rgb(a, 0.08 + 0.4 * b, 0.62 + 0.38 * c)
        return np.array([r, g, bl]) * 255.0

    if ch.background == "white":
        return Image.new("RGB", (side, side), (255, 255, 255) if style != "sketch" else (253, 253, 253))
    c1 = pick(u[20], u[21], u[22])
    if ch.background == "simple":
        return Image.new("RGB", (side, side), tuple(int(v) for v in c1))
    if ch.background == "gradient":
        # a linear ramp at low resolution; bilinear upscaling keeps it linear and costs little
        c2 = pick(u[23], u[24], u[25])
        angle = u[26] * math.pi / 2
        ca, sa = math.cos(angle), math.sin(angle)
        ramp = (ca * _RAMP[:, None] + sa * _RAMP[None, :]) / (ca + sa)
        arr = c1[None, None, :] + (c2 - c1)[None, None, :] * ramp[:, :, None]
        small = Image.fromarray(arr.astype(np.uint8), "RGB")
        return small.resize((side, side), Image.Resampling.BILINEAR)
    # blocky noise around the base colour; smooth or hard-edged
    arr = np.clip(c1[None, None, :] + (grid[:, :, None] - 0.5) * 90.0, 0, 255).astype(np.uint8)
    if style == "sketch":
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    small = Image.fromarray(arr, "RGB")
    return small.resize((side, side), Image.Resampling.NEAREST if u[27] < 0.5 else Image.Resampling.BILINEAR)


_RAMP = np.linspace(0.0, 1.0, 16)
_SOFTEN = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1], 16)
_UPPER_HALF_13 = (np.cos(np.linspace(math.pi, 2 * math.pi, 13)), np.sin(np.linspace(math.pi, 2 * math.pi, 13)))
_UPPER_HALF_15 = (np.cos(np.linspace(math.pi, 2 * math.pi, 15)), np.sin(np.linspace(math.pi, 2 * math.pi, 15)))
_HEAD_T = np.linspace(0, 2 * math.pi, 28, endpoint=False)
_HEAD_COS = np.cos(_HEAD_T) * np.where(np.sin(_HEAD_T) > 0, 1.0 - 0.28 * np.sin(_HEAD_T), 1.0)  # narrower chin
_HEAD_SIN = np.sin(_HEAD_T)


# ---------------------------------------------------------------------------------------------- drawing
def _points(
    cx: float, cy: float, rx: float, ry: float, table: tuple[np.ndarray, np.ndarray]
) -> list[tuple[float, float]]:
    return list(zip((cx + rx * table[0]).tolist(), (cy + ry * table[1]).tolist()))


def _zigzag(x0: float, x1: float, y_low: float, y_high: float, teeth: int) -> list[tuple[float, float]]:
    """Points from x0 to x1 alternating between y_low (tips) and y_high (roots)."""
    pts = []
    for i in range(2 * teeth + 1):
        x = x0 + (x1 - x0) * i / (2 * teeth)
        pts.append((x, y_low if i % 2 == 0 else y_high))
    return pts


def _poly(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: RGB | None, line: RGB | None, lw: int) -> None:
    # a filled polygon plus a closed wide line: the same look as polygon(width=lw), about 3x faster
    if fill is not None:
        d.polygon(pts, fill=fill)
    if line is not None:
        d.line(pts + [pts[0]], fill=line, width=lw)


def _draw_character(img: Image.Image, g: Geometry, ch: Character, col: dict[str, RGB], lw: int, detail: bool) -> None:
    """Draw ``ch`` on ``img`` (whose side is the drawing resolution). Order: back to front."""
    side = img.size[0]
    d = ImageDraw.Draw(img)
    cx, cy, R, ry, ysh = g.cx * side, g.cy * side, g.r * side, g.ry * side, g.y_sh * side
    bottom = side * 1.06
    line = col["line"]
    # on a coarse grid, outlines inside the hair would leave no hair colour: outline the silhouette only
    inner_line = line if detail else None
    length = ch.hair_length

    # back hair: a dome behind the head; medium continues to the shoulders, long past the bottom
    dome = _points(cx, cy - 0.1 * ry, 1.19 * R, 1.07 * ry, _UPPER_HALF_13)
    if length == "short":
        back = dome + [(cx + 1.17 * R, cy + 0.35 * ry), (cx - 1.17 * R, cy + 0.35 * ry)]
    else:
        end, spread = (ysh + 0.3 * R, 1.32 * R) if length == "medium" else (bottom, 1.85 * R)
        back = dome + [(cx + spread, end)] + _zigzag(cx + spread, cx - spread, end, end - 0.22 * R, 5)[1:-1]
        back += [(cx - spread, end)]
    _poly(d, back, col["hair_shade"], line, lw)

    # neck and upper body
    neck = (cx - 0.27 * R, cy + 0.5 * ry, cx + 0.27 * R, ysh + 0.15 * R)
    d.rectangle(neck, fill=col["skin_shade"], outline=line, width=lw)
    sw, bw = g.sh_w * side, g.bot_w * side
    body = [(cx - 0.4 * sw, ysh), (cx + 0.4 * sw, ysh), (cx + sw, ysh + 0.28 * R), (cx + bw, bottom),
            (cx - bw, bottom), (cx - sw, ysh + 0.28 * R)]
    d.polygon(body, fill=col["top"])
    d.polygon([(cx + 0.55 * sw, ysh + 0.12 * R), (cx + sw, ysh + 0.28 * R), (cx + bw, bottom), (cx + 0.7 * bw, bottom)],
              fill=col["top_shade"])
    _poly(d, body, None, line, lw)
    collar = 0.3 * sw
    _poly(d, [(cx - collar, ysh), (cx + collar, ysh), (cx, ysh + 0.3 * R)], col["skin"], line, lw)
    if "scarf" in ch.accessories:
        _poly(d, [(cx - 0.62 * R, ysh - 0.14 * R), (cx + 0.62 * R, ysh - 0.14 * R), (cx + 0.62 * R, ysh + 0.2 * R),
                  (cx - 0.62 * R, ysh + 0.2 * R)], col["scarf"], line, lw)
        _poly(d, [(cx + 0.2 * R, ysh + 0.1 * R), (cx + 0.5 * R, ysh + 0.1 * R), (cx + 0.6 * R, ysh + 0.85 * R),
                  (cx + 0.3 * R, ysh + 0.85 * R)], col["scarf"], line, lw)

    # head: round top, narrower chin
    _poly(d, _points(cx, cy, R, ry, (_HEAD_COS, _HEAD_SIN)), col["skin"], line, lw)

    # eyes
    ey = cy + 0.22 * R
    for sgn in (-1, 1):
        ex = cx + sgn * 0.4 * R
        d.ellipse((ex - 0.22 * R, ey - 0.27 * R, ex + 0.22 * R, ey + 0.27 * R), fill=col["sclera"])
        d.ellipse((ex - 0.17 * R, ey - 0.22 * R, ex + 0.17 * R, ey + 0.27 * R), fill=col["iris"])
        if detail:
            d.ellipse((ex - 0.12 * R, ey - 0.16 * R, ex - 0.0 * R, ey - 0.04 * R), fill=_WHITE)
        d.line([(ex - sgn * 0.05 * R - 0.26 * R, ey - 0.25 * R), (ex - sgn * 0.05 * R + 0.26 * R, ey - 0.25 * R)],
               fill=line, width=max(lw, int(0.1 * R)))
    # mouth by expression
    my = cy + 0.66 * ry
    mw = max(lw, int(0.06 * R))
    if ch.expression == "neutral":
        d.line([(cx - 0.14 * R, my), (cx + 0.14 * R, my)], fill=line, width=mw)
    elif ch.expression == "smile":
        box = (cx - 0.24 * R, my - 0.2 * R, cx + 0.24 * R, my + 0.2 * R)
        d.chord(box, 0, 180, fill=col["mouth"], outline=line, width=lw)
    elif ch.expression == "sad":
        d.arc((cx - 0.18 * R, my - 0.02 * R, cx + 0.18 * R, my + 0.26 * R), 200, 340, fill=line, width=mw)
        ex = cx - 0.4 * R
        tear = (ex - 0.08 * R, ey + 0.3 * R, ex + 0.08 * R, ey + 0.54 * R)
        d.ellipse(tear, fill=col["tear"], outline=line, width=max(1, lw // 2))
    else:  # surprised
        box = (cx - 0.13 * R, my - 0.17 * R, cx + 0.13 * R, my + 0.17 * R)
        d.ellipse(box, fill=col["mouth"], outline=line, width=lw)

    # locks beside the face: to the cheek (short), the chin (medium), over the shoulders (long)
    lock_end = {"short": cy + 0.35 * ry, "medium": cy + 1.05 * ry, "long": ysh + 1.1 * R}[length]
    for sgn in (-1, 1):
        lock = [(cx + sgn * 1.17 * R, cy - 0.35 * ry), (cx + sgn * 0.68 * R, cy - 0.35 * ry),
                (cx + sgn * 0.7 * R, lock_end - 0.3 * R), (cx + sgn * 0.9 * R, lock_end),
                (cx + sgn * 1.17 * R, lock_end - 0.35 * R)]
        _poly(d, lock, col["hair"], inner_line, lw)
    # bangs: the top of the head with a zigzag fringe above the eyes
    bangs = _points(cx, cy - 0.12 * ry, 1.17 * R, 0.98 * ry, _UPPER_HALF_15)
    bangs += _zigzag(cx + 1.0 * R, cx - 1.0 * R, cy - 0.08 * ry, cy - 0.42 * ry, 4)
    _poly(d, bangs, col["hair"], inner_line, lw)
    if detail:
        shine = (cx - 0.8 * R, cy - 0.98 * ry, cx + 0.8 * R, cy - 0.2 * ry)
        d.arc(shine, 205, 250, fill=col["hair_hi"], width=max(lw, int(0.1 * R)))
        for sgn in (-1, 1):
            strand = [(cx + sgn * 0.3 * R, cy - 0.8 * ry), (cx + sgn * 0.42 * R, cy - 0.45 * ry)]
            d.line(strand, fill=col["hair_shade"], width=lw)
    # eyebrows (drawn through the fringe, as in anime; too small for the pixel grid)
    for sgn in (-1, 1) if detail else ():
        ex = cx + sgn * 0.4 * R
        inner, outer = ex - sgn * 0.17 * R, ex + sgn * 0.17 * R
        if ch.expression == "sad":
            yi, yo = ey - 0.58 * R, ey - 0.42 * R
        elif ch.expression == "surprised":
            yi, yo = ey - 0.62 * R, ey - 0.6 * R
        else:
            yi, yo = ey - 0.45 * R, ey - 0.47 * R
        d.line([(inner, yi), (outer, yo)], fill=line, width=lw)

    # accessories in front
    if "glasses" in ch.accessories:
        gw = max(lw, int(0.09 * R))
        for sgn in (-1, 1):
            ex = cx + sgn * 0.4 * R
            d.ellipse((ex - 0.3 * R, ey - 0.3 * R, ex + 0.3 * R, ey + 0.3 * R), outline=col["glasses"], width=gw)
        d.line([(cx - 0.1 * R, ey - 0.08 * R), (cx + 0.1 * R, ey - 0.08 * R)], fill=col["glasses"], width=gw)
    if "hat" in ch.accessories:
        crown = _points(cx, cy - 0.62 * ry, 0.82 * R, 0.9 * ry, _UPPER_HALF_13)
        _poly(d, crown, col["hat"], line, lw)
        band = (cx - 0.8 * R, cy - 0.82 * ry, cx + 0.8 * R, cy - 0.64 * ry)
        d.rectangle(band, fill=col["hat_band"], outline=line, width=lw)
        d.ellipse((cx - 1.5 * R, cy - 0.75 * ry, cx + 1.5 * R, cy - 0.45 * ry), fill=col["hat"], outline=line, width=lw)
    if "hair_bow" in ch.accessories:
        bx, by = cx + 0.9 * R, cy - 0.58 * ry
        for sgn in (-1, 1):
            wing = [(bx, by), (bx + sgn * 0.46 * R, by - 0.3 * R), (bx + sgn * 0.46 * R, by + 0.3 * R)]
            _poly(d, wing, col["bow"], line, lw)
        d.ellipse((bx - 0.12 * R, by - 0.12 * R, bx + 0.12 * R, by + 0.12 * R), fill=col["bow"], outline=line, width=lw)


def _draw_params(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # always the same draws, whatever the character and style
    return rng.random(_N_UNIFORM), rng.random((_NOISE_GRID, _NOISE_GRID)), rng.random((_PAPER_GRID, _PAPER_GRID))


def _pixel_grid(size: int) -> int:
    return max(32, size // 4)


def render_with_geometry(
    character: Character, style: str = "flat", rng: np.random.Generator | int | None = None, size: int = 64
) -> tuple[Image.Image, Geometry]:
    """Draw ``character`` in ``style`` as a ``size`` x ``size`` RGB image; also return where it is."""
    _check_style(style)
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    size = int(size)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    u_arr, grid, paper = _draw_params(rng)
    u = u_arr.tolist()  # plain floats: faster to index, and a Geometry of plain floats
    g = _geometry(style, u, size)
    col = _colors(character, style, u)
    if style == "pixel":
        side, detail = _pixel_grid(size), False
    else:
        # draw at 2x and box-downsample: cheap anti-aliasing (at large sizes 1x is smooth enough)
        side, detail = (size * 2 if size <= 160 else size), True
    lw = max(1, round(side / 64))
    img = _background(character, style, u, grid, side)
    _draw_character(img, g, character, col, lw if style != "watercolor" else max(1, lw // 2), detail)
    if side == 2 * size:
        img = img.reduce(2)
    elif side != size:
        img = img.resize((size, size), Image.Resampling.NEAREST)
    if style == "watercolor":
        # soft edges (a 3x3 binomial blur, per 64 px), then paper texture (darkens by up to 6%)
        img = img.filter(_SOFTEN) if size <= 96 else img.filter(ImageFilter.GaussianBlur(radius=size / 128))
        tex = Image.fromarray((240 + 15 * paper).astype(np.uint8), "L").resize((size, size), Image.Resampling.BILINEAR)
        img = ImageChops.multiply(img, Image.merge("RGB", (tex, tex, tex)))
    if style == "sketch":
        img = img.convert("L").convert("RGB")  # exactly gray: no chroma can leak
    if style == "lit":
        gain, offset = _LIGHT_CASTS[int(u[19] * len(_LIGHT_CASTS))]
        strength = 0.85 + 0.15 * u[3]
        gain = [1.0 + (k - 1.0) * strength for k in gain]
        arr = np.asarray(img, dtype=np.float32) * np.array(gain, dtype=np.float32) + np.array(offset, dtype=np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img, g


def render(
    character: Character, style: str = "flat", rng: np.random.Generator | int | None = None, size: int = 64
) -> Image.Image:
    """Draw ``character`` in ``style`` as a ``size`` x ``size`` RGB PIL image (see the module docstring)."""
    return render_with_geometry(character, style, rng, size)[0]
