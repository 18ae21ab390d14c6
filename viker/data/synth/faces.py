"""Procedural fictitious faces (and distractor images) for the embedded benchmark.

Every identity is a :class:`FaceSpec`: a handful of categorical visual attributes
(head shape, skin tone, hair, glasses, ...).  :func:`render_face` draws the spec as a
cartoon portrait that a person reads as a face, while keeping every attribute
bold, large and colour-coded so that a tiny vision model that sees the picture at
32x32 or 48x48 pixels can still tell ~150 identities apart.

A :class:`View` describes how the face is "photographed" (pose, tilt, light,
crop), so the same identity can be shown at a training view and at a different
test view.

Everything is deterministic: randomness only comes from a ``random.Random``
passed in by the caller, and drawing uses Pillow only (no global random state,
no fonts other than Pillow's built-in default).
"""

from __future__ import annotations

import io
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

__all__ = [
    "HEAD_SHAPES",
    "SKIN_TONES",
    "HAIR_STYLES",
    "HAIR_COLORS",
    "EYE_COLORS",
    "HATS",
    "BACKGROUNDS",
    "FaceSpec",
    "View",
    "spec_distance",
    "sample_face_specs",
    "random_test_view",
    "render_face",
    "render_pattern",
    "render_scene",
    "render_pet",
    "contact_sheet",
    "png_bytes",
]

RGB = tuple[int, int, int]

# --------------------------------------------------------------------------- palettes
# Colours are chosen to be far apart from each other so they survive downscaling.

HEAD_SHAPES: tuple[str, ...] = ("oval", "round", "square", "long")

SKIN_TONES: dict[str, RGB] = {
    "pale": (255, 226, 212),
    "light": (240, 192, 152),
    "tan": (212, 158, 108),
    "olive": (178, 146, 88),
    "brown": (142, 94, 60),
    "dark": (88, 56, 38),
}

HAIR_STYLES: tuple[str, ...] = ("short", "long", "bald", "curly", "ponytail", "mohawk")

HAIR_COLORS: dict[str, RGB] = {
    "black": (28, 26, 30),
    "brown": (110, 64, 28),
    "blonde": (240, 204, 92),
    "red": (206, 58, 22),
    "grey": (150, 150, 154),
    "white": (246, 246, 240),
    "blue": (36, 96, 230),
    "green": (36, 168, 60),
}

EYE_COLORS: dict[str, RGB] = {
    "brown": (120, 66, 24),
    "blue": (40, 120, 230),
    "green": (40, 160, 70),
    "grey": (128, 136, 150),
}

HATS: tuple[str, ...] = ("none", "cap", "beanie")

BACKGROUNDS: dict[str, RGB] = {
    # Saturated mid-tones: a 1.3x brighter light must not wash them out to white.
    "blue": (90, 150, 235),
    "pink": (232, 110, 170),
    "yellow": (240, 210, 50),
    "green": (100, 195, 100),
    "purple": (150, 100, 205),
    "orange": (230, 110, 25),
    "grey": (165, 165, 165),
    "teal": (30, 140, 140),
}

# Hats and shirts get a colour derived from the spec (not a spec field of their own).
_HAT_COLORS: dict[str, RGB] = {
    "red": (220, 30, 40),
    "navy": (20, 30, 110),
    "yellow": (255, 210, 0),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "magenta": (220, 30, 200),
    "orange": (255, 120, 0),
}

_SHIRT_COLORS: tuple[RGB, ...] = (
    (200, 40, 40),
    (30, 60, 160),
    (240, 240, 240),
    (40, 40, 40),
    (240, 180, 0),
    (30, 140, 70),
    (130, 50, 160),
    (0, 170, 200),
    (240, 100, 150),
    (120, 80, 40),
)

# (half width, half height) of the head, in units of the frame size.
_HEAD_DIMS: dict[str, tuple[float, float]] = {
    "oval": (0.205, 0.265),
    "round": (0.245, 0.235),
    "square": (0.225, 0.245),
    "long": (0.175, 0.295),
}


# --------------------------------------------------------------------------- colour helpers
def _shade(c: RGB, f: float) -> RGB:
    """Scale a colour (f < 1 darkens), clipped to [0, 255]."""
    return tuple(max(0, min(255, round(v * f))) for v in c)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend: t=0 gives a, t=1 gives b."""
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _dist2(a: RGB, b: RGB) -> int:
    return sum((x - y) ** 2 for x, y in zip(a, b))


# --------------------------------------------------------------------------- identities
@dataclass(frozen=True)
class FaceSpec:
    """One fictitious identity, as a set of categorical visual attributes."""

    head_shape: str
    skin_tone: str
    hair_style: str
    hair_color: str
    eye_color: str
    glasses: bool
    beard: bool
    hat: str
    background: str

    def __post_init__(self) -> None:
        # Fail early on typos rather than deep inside the renderer.
        choices = {
            "head_shape": HEAD_SHAPES,
            "skin_tone": SKIN_TONES,
            "hair_style": HAIR_STYLES,
            "hair_color": HAIR_COLORS,
            "eye_color": EYE_COLORS,
            "hat": HATS,
            "background": BACKGROUNDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"FaceSpec.{name}={getattr(self, name)!r} not in {list(allowed)}")

    @property
    def hat_color(self) -> str:
        """Name of the hat colour: the palette entry most unlike both hair and background."""
        hair, bg = HAIR_COLORS[self.hair_color], BACKGROUNDS[self.background]
        return max(_HAT_COLORS, key=lambda n: min(_dist2(_HAT_COLORS[n], hair), _dist2(_HAT_COLORS[n], bg)))

    @property
    def shirt_rgb(self) -> RGB:
        """Shirt colour, a stable function of the spec (crc32, not the salted hash())."""
        i = zlib.crc32("|".join(map(str, astuple(self))).encode())
        bg = BACKGROUNDS[self.background]
        for k in range(len(_SHIRT_COLORS)):
            c = _SHIRT_COLORS[(i + k) % len(_SHIRT_COLORS)]
            if _dist2(c, bg) > 60**2:  # keep the shoulders visible against the backdrop
                return c
        return _SHIRT_COLORS[i % len(_SHIRT_COLORS)]

    def describe(self) -> str:
        """Short English description, e.g. 'round face, tan skin, red curly hair, glasses'."""
        if self.hair_style == "bald":
            hair = f"bald with {self.hair_color} side hair"
        else:
            hair = f"{self.hair_color} {self.hair_style} hair"
        parts = [f"{self.head_shape} face", f"{self.skin_tone} skin", hair, f"{self.eye_color} eyes"]
        if self.glasses:
            parts.append("glasses")
        if self.beard:
            parts.append(f"{self.hair_color} beard")
        if self.hat != "none":
            parts.append(f"{self.hat_color} {self.hat}")
        parts.append(f"{self.background} background")
        return ", ".join(parts)


_FIELD_CHOICES: tuple[tuple[str, tuple], ...] = (
    ("head_shape", HEAD_SHAPES),
    ("skin_tone", tuple(SKIN_TONES)),
    ("hair_style", HAIR_STYLES),
    ("hair_color", tuple(HAIR_COLORS)),
    ("eye_color", tuple(EYE_COLORS)),
    ("glasses", (False, True)),
    ("beard", (False, True)),
    ("hat", HATS),
    ("background", tuple(BACKGROUNDS)),
)
assert [n for n, _ in _FIELD_CHOICES] == [f.name for f in fields(FaceSpec)]


def spec_distance(a: FaceSpec, b: FaceSpec) -> int:
    """Hamming distance: the number of attributes in which two specs differ."""
    return sum(x != y for x, y in zip(astuple(a), astuple(b)))


def sample_face_specs(
    n: int,
    rng: random.Random,
    min_distance: int = 3,
    exclude: Sequence[FaceSpec] = (),
) -> list[FaceSpec]:
    """Sample ``n`` distinct specs, pairwise (and to ``exclude``) at Hamming distance >= min_distance.

    Greedy rejection sampling; raises ValueError when it cannot place all ``n``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    min_distance = max(1, min_distance)  # distinct specs at the very least
    if min_distance > len(_FIELD_CHOICES) and (n > 1 or (n == 1 and exclude)):
        raise ValueError(f"min_distance={min_distance} exceeds the number of attributes")
    chosen: list[FaceSpec] = []
    blockers = list(exclude)
    max_tries = 2000 + 500 * n
    for _ in range(max_tries):
        if len(chosen) == n:
            break
        cand = FaceSpec(*(rng.choice(opts) for _, opts in _FIELD_CHOICES))
        if all(spec_distance(cand, other) >= min_distance for other in blockers):
            chosen.append(cand)
            blockers.append(cand)
    if len(chosen) < n:
        raise ValueError(
            f"could only place {len(chosen)} of {n} specs at min_distance={min_distance} "
            f"(with {len(exclude)} excluded) after {max_tries} tries"
        )
    return chosen


# --------------------------------------------------------------------------- views
@dataclass(frozen=True)
class View:
    """How a face is photographed.

    pose: [-1, 1], head turned/shifted to the viewer's left (-) or right (+).
    tilt: degrees of in-plane rotation (positive = counter-clockwise), about [-12, 12].
    light: brightness multiplier, about [0.7, 1.3].
    crop: zoom factor in [1.0, 1.25] (closer crop around the face).
    side_light: extra left-to-right brightness gradient (the multiplier goes from
        light*(1-side_light) at the left edge to light*(1+side_light) at the right).
    """

    pose: float = 0.0
    tilt: float = 0.0
    light: float = 1.0
    crop: float = 1.0
    side_light: float = 0.0


def random_test_view(rng: random.Random) -> View:
    """A view clearly different from ``View()`` (pose, tilt, lighting and crop all change)
    but still recognisable: every parameter stays inside its documented range."""
    def sign() -> float:
        return rng.choice((-1.0, 1.0))

    return View(
        pose=round(sign() * rng.uniform(0.3, 0.6), 3),
        tilt=round(sign() * rng.uniform(4.0, 10.0), 2),
        light=round(rng.choice((rng.uniform(0.78, 0.9), rng.uniform(1.1, 1.22))), 3),
        crop=round(rng.uniform(1.06, 1.2), 3),
        side_light=round(rng.uniform(-0.15, 0.15), 3),
    )


# --------------------------------------------------------------------------- drawing helpers
def _supersample(size: int) -> int:
    """Drawing scale factor: 4x for small images, less for big ones to bound the cost."""
    return max(2, min(4, 512 // max(1, size)))


class _Pen:
    """ImageDraw wrapper that takes coordinates in frame units (0..1).

    ``off`` is the pixel offset of the frame inside a (possibly padded) layer, so
    shapes may extend past the frame and still exist after a rotation or shift.
    """

    def __init__(self, im: Image.Image, scale: float, off: float = 0.0):
        self.im, self.s, self.off = im, scale, off
        self.d = ImageDraw.Draw(im)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.off + x * self.s, self.off + y * self.s)

    def box(self, cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        return (*self.p(cx - rx, cy - ry), *self.p(cx + rx, cy + ry))

    def w(self, width: float) -> int:
        return max(1, round(width * self.s))

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=0.0):
        self.d.ellipse(self.box(cx, cy, rx, ry), fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def rect(self, x0, y0, x1, y1, fill=None, radius=0.0, outline=None, width=0.0):
        self.d.rounded_rectangle(
            (*self.p(x0, y0), *self.p(x1, y1)), radius=radius * self.s, fill=fill,
            outline=outline, width=self.w(width) if outline else 0,
        )

    def poly(self, pts, fill=None, outline=None, width=0.0):
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill, outline=outline,
                       width=self.w(width) if outline else 0)

    def line(self, pts, fill, width, curve=True):
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=self.w(width),
                    joint="curve" if curve else None)

    def chord(self, cx, cy, rx, ry, start, end, fill):
        self.d.chord(self.box(cx, cy, rx, ry), start, end, fill=fill)

    def arc(self, cx, cy, rx, ry, start, end, fill, width):
        self.d.arc(self.box(cx, cy, rx, ry), start, end, fill=fill, width=self.w(width))


def _paint(layer: Image.Image, mask: Image.Image, color: RGB) -> None:
    """Fill the region selected by an L-mode mask with a solid colour."""
    layer.paste(color + (255,) if layer.mode == "RGBA" else color, (0, 0), mask)


class _Head:
    """Geometry of one drawn head; all values in frame units."""

    def __init__(self, spec: FaceSpec, pose: float):
        hw, hh = _HEAD_DIMS[spec.head_shape]
        self.shape = spec.head_shape
        self.hw = hw * (1.0 - 0.12 * abs(pose))  # a turned head looks narrower
        self.hh = hh
        self.cx, self.cy = 0.5, 0.46
        # Facial features slide towards the side the head is turned to.
        self.fx = self.cx + pose * 0.28 * self.hw
        self.pose = pose

    def fill(self, pen: _Pen, fill, grow: float = 0.0, grow_down: float = 0.0) -> None:
        """Draw the head silhouette, optionally enlarged (for hair/beard masks)."""
        rx, ry = self.hw * (1 + grow), self.hh * (1 + grow)
        top, bottom = self.cy - ry, self.cy + ry + self.hh * grow_down
        if self.shape == "square":
            pen.rect(self.cx - rx, top, self.cx + rx, bottom, fill=fill, radius=0.42 * rx)
        else:
            pen.d.ellipse((*pen.p(self.cx - rx, top), *pen.p(self.cx + rx, bottom)), fill=fill)

    def mask(self, pen: _Pen, grow: float = 0.0, grow_down: float = 0.0) -> tuple[Image.Image, _Pen]:
        m = Image.new("L", pen.im.size, 0)
        mp = _Pen(m, pen.s, pen.off)
        self.fill(mp, 255, grow, grow_down)
        return m, mp


# --------------------------------------------------------------------------- face parts
def _draw_hair_back(pen: _Pen, h: _Head, style: str, hair: RGB) -> None:
    """Hair that sits behind the head (drawn before the skin)."""
    hw, hh, cx, cy = h.hw, h.hh, h.cx, h.cy
    if style == "long":
        # A curtain from the crown down past the shoulders line.
        pen.rect(cx - hw * 1.3, cy - hh * 1.08, cx + hw * 1.3, cy + hh * 1.45, fill=hair, radius=hw * 0.8)
    elif style == "curly":
        # Big bumpy volume: a ring of overlapping blobs around the top and sides.
        for i in range(13):
            t = math.radians(150 + 240 * i / 12)
            pen.ellipse(cx + hw * 1.08 * math.cos(t), cy + hh * 0.98 * math.sin(t), hw * 0.36, hw * 0.36, fill=hair)
        pen.ellipse(cx, cy - hh * 0.15, hw * 1.15, hh * 0.95, fill=hair)
    elif style == "ponytail":
        # Tail hanging on the viewer's right, tied near the crown.
        pen.ellipse(cx + hw * 1.02, cy + hh * 0.05, hw * 0.32, hh * 0.62, fill=hair)
        pen.ellipse(cx + hw * 0.82, cy - hh * 0.55, hw * 0.2, hw * 0.2, fill=_shade(hair, 0.6))


def _draw_hair_front(pen: _Pen, layer: Image.Image, h: _Head, style: str, hair: RGB, hat: str) -> None:
    """Hair over the head: a cap of hair minus a 'face opening' ellipse."""
    hw, hh, cx, cy, fx = h.hw, h.hh, h.cx, h.cy, h.fx
    if style == "mohawk":
        if hat != "none":
            return  # a crest poking through a hat looks wrong; the brows still carry the colour
        # A tall spiky crest on an otherwise bare scalp.
        spikes = [(cx - hw * 0.2, cy - hh * 0.45)]
        for i in range(5):
            y = cy - hh * (0.55 + 0.12 * i)
            spikes += [(cx - hw * (0.28 - 0.03 * i), y - hh * 0.3), (cx - hw * (0.1 - 0.03 * i), y)]
        spikes.append((cx, cy - hh * 1.45))
        right = [(2 * cx - x, y) for x, y in reversed(spikes[:-1])]
        pen.poly(spikes + right, fill=hair)
        pen.rect(cx - hw * 0.2, cy - hh * 1.05, cx + hw * 0.2, cy - hh * 0.45, fill=hair, radius=hw * 0.15)
        return
    m, mp = h.mask(pen, grow=0.05)
    # (centre-y offset, rx, ry) of the face opening, and how far down the sides the hair reaches.
    opening, reach = {
        "bald": ((0.1, 0.86, 1.0), 0.15),
        "short": ((0.16, 0.9, 0.88), 0.05),
        "long": ((0.22, 0.74, 0.9), None),  # long hair frames the face down to the jaw
        "ponytail": ((0.1, 0.9, 0.8), -0.05),  # pulled back: high, smooth hairline
        "curly": ((0.25, 0.82, 0.86), 0.1),
    }[style]
    oy, orx, ory = opening
    mp.ellipse(fx, cy + hh * oy, hw * orx, hh * ory, fill=0)
    if reach is not None:
        mp.rect(-0.5, cy + hh * reach, 1.5, 1.5, fill=0)  # sideburns stop around ear level
    if style == "bald":
        mp.rect(-0.5, -0.5, 1.5, cy - hh * 0.35, fill=0)  # only tufts above the ears
    elif style == "long":
        # Side-swept fringe, lower on one side, reads as 'hairstyle' even at 32 px.
        mp.ellipse(fx + hw * 0.1, cy + hh * 0.25, hw * 0.8, hh * 0.75, fill=0)
    _paint(layer, m, hair)
    if style == "curly":
        # Bumps along the hairline so the front also looks curly.
        for i in range(7):
            t = math.radians(200 + 140 * i / 6)
            pen.ellipse(fx + hw * 0.8 * math.cos(t), cy + hh * 0.72 * math.sin(t), hw * 0.2, hw * 0.2, fill=hair)


def _draw_ears(pen: _Pen, h: _Head, skin: RGB) -> None:
    for side in (-1, 1):
        x = h.cx + side * h.hw * 0.97
        pen.ellipse(x, h.cy + h.hh * 0.02, h.hw * 0.16, h.hh * 0.17, fill=skin, outline=_shade(skin, 0.78), width=0.004)
        pen.ellipse(x, h.cy + h.hh * 0.02, h.hw * 0.07, h.hh * 0.09, fill=_shade(skin, 0.85))


def _draw_body(pen: _Pen, h: _Head, skin: RGB, shirt: RGB) -> None:
    """Neck and shoulders; the shirt runs off the bottom of the layer."""
    cx, cy, hw, hh = h.cx, h.cy, h.hw, h.hh
    neck_w = max(0.07, hw * 0.42)
    pen.rect(cx - neck_w, cy + hh * 0.6, cx + neck_w, 0.9, fill=_shade(skin, 0.86))
    pen.rect(cx - 0.38, 0.8, cx + 0.38, 1.5, fill=shirt, radius=0.14)
    # Round collar opening showing the neck.
    pen.chord(cx, 0.8, neck_w * 1.15, 0.05, 0, 180, fill=_shade(skin, 0.86))
    pen.arc(cx, 0.8, neck_w * 1.15, 0.05, 0, 180, fill=_shade(shirt, 0.7), width=0.012)


def _draw_features(pen: _Pen, h: _Head, spec: FaceSpec, skin: RGB, hair: RGB) -> None:
    """Eyes, eyebrows, nose, mouth: big and high-contrast so they survive downscaling."""
    hw, hh, cy, fx = h.hw, h.hh, h.cy, h.fx
    ey = cy - hh * 0.05
    erx, ery = hw * 0.2, hw * 0.13
    gaze = h.pose * erx * 0.3
    brow = _shade(hair, 0.75)  # a touch darker than the hair so pale brows still show
    for side in (-1, 1):
        ex = fx + side * hw * 0.42
        # Turned head: the eye on the far side (the turning side) looks a little narrower.
        k = 1.0 - 0.12 * h.pose * side
        pen.ellipse(ex, ey, erx * k, ery, fill=(250, 250, 250), outline=_shade(skin, 0.5), width=0.004)
        pen.ellipse(ex + gaze, ey, ery * 0.95, ery * 0.95, fill=EYE_COLORS[spec.eye_color])
        pen.ellipse(ex + gaze, ey, ery * 0.45, ery * 0.45, fill=(10, 10, 12))
        pen.ellipse(ex + gaze + ery * 0.3, ey - ery * 0.35, ery * 0.17, ery * 0.17, fill=(255, 255, 255))
        # Eyebrow: a thick slightly arched stroke.
        by = ey - ery * 2.1
        inner, outer = (ex - side * erx, by + ery * 0.35), (ex + side * erx * 1.05, by + ery * 0.2)
        pen.line([inner, (ex, by - ery * 0.2), outer], fill=brow, width=hh * 0.055)
    # Nose: shaded wedge plus nostrils.
    nose = _shade(skin, 0.8)
    ny = cy + hh * 0.28
    pen.poly([(fx, ey + ery * 0.6), (fx - hw * 0.12, ny), (fx + hw * 0.12, ny)], fill=_shade(skin, 0.9))
    pen.line([(fx + hw * 0.03, ey + ery * 0.6), (fx + hw * 0.07, ny - hh * 0.03)], fill=nose, width=0.006)
    pen.ellipse(fx - hw * 0.07, ny, hw * 0.045, hh * 0.025, fill=_shade(skin, 0.55))
    pen.ellipse(fx + hw * 0.07, ny, hw * 0.045, hh * 0.025, fill=_shade(skin, 0.55))
    # Cheeks: a soft blush makes the face read as human.
    for side in (-1, 1):
        pen.ellipse(fx + side * hw * 0.55, cy + hh * 0.3, hw * 0.15, hh * 0.08, fill=_mix(skin, (235, 90, 100), 0.25))
    # Mouth: open smile with teeth and lips.
    my = cy + hh * 0.52
    mrx, mry = hw * 0.3, hh * 0.13
    pen.chord(fx, my - mry * 0.6, mrx, mry * 1.3, 0, 180, fill=(120, 20, 35))
    pen.chord(fx, my - mry * 0.6, mrx * 0.85, mry * 0.8, 20, 160, fill=(245, 245, 245))
    pen.arc(fx, my - mry * 0.6, mrx, mry * 1.3, 0, 180, fill=(190, 70, 80), width=hh * 0.03)


def _draw_beard(pen: _Pen, layer: Image.Image, h: _Head, hair: RGB) -> None:
    """Full beard: the jaw below the nose (a 'face opening' ellipse cut out), plus moustache."""
    hw, hh, cy, fx = h.hw, h.hh, h.cy, h.fx
    m, mp = h.mask(pen, grow=0.04, grow_down=0.12)
    mp.rect(-0.5, -0.5, 1.5, cy - hh * 0.05, fill=0)
    mp.ellipse(fx, cy - hh * 0.22, hw * 0.8, hh * 0.6, fill=0)
    _paint(layer, m, hair)
    pen.ellipse(fx, cy + hh * 0.4, hw * 0.38, hh * 0.1, fill=hair)


def _draw_glasses(pen: _Pen, h: _Head) -> None:
    hw, hh, cy, fx = h.hw, h.hh, h.cy, h.fx
    ey = cy - hh * 0.05
    frame, w = (15, 15, 20), hw * 0.075
    rx, ry = hw * 0.3, hw * 0.24
    for side in (-1, 1):
        ex = fx + side * hw * 0.42
        pen.rect(ex - rx, ey - ry, ex + rx, ey + ry, outline=frame, width=w, radius=ry * 0.6)
        # Temple arm running back towards the ear.
        ear = (h.cx + side * h.hw * 0.98, ey - ry * 0.2)
        pen.line([(ex + side * rx, ey - ry * 0.4), ear], fill=frame, width=w * 0.8)
    pen.arc(fx, ey - ry * 0.1, hw * 0.14, ry * 0.5, 200, 340, fill=frame, width=w * 0.8)


def _draw_hat(pen: _Pen, h: _Head, kind: str, color: RGB) -> None:
    hw, hh, cx, cy, fx = h.hw, h.hh, h.cx, h.cy, h.fx
    dark = _shade(color, 0.72) if color != (20, 20, 20) else (70, 70, 70)
    if kind == "cap":
        base = cy - hh * 0.45
        pen.chord(cx, base, hw * 1.1, hh * 0.72, 180, 360, fill=color)
        pen.line([(cx, base - hh * 0.7), (cx, base)], fill=dark, width=hw * 0.04)
        pen.ellipse(cx, base - hh * 0.72, hw * 0.09, hw * 0.06, fill=dark)
        # Visor pointing at the camera, shifted with the pose.
        pen.chord(fx + h.pose * hw * 0.15, base, hw * 1.12, hh * 0.24, 0, 180, fill=dark)
        pen.rect(cx - hw * 1.1, base - hh * 0.02, cx + hw * 1.1, base + hh * 0.03, fill=dark)
    elif kind == "beanie":
        base = cy - hh * 0.38
        pen.chord(cx, base, hw * 1.1, hh * 0.82, 180, 360, fill=color)
        pen.rect(cx - hw * 1.13, base - hh * 0.2, cx + hw * 1.13, base + hh * 0.06, fill=dark, radius=hh * 0.06)
        for i in range(-4, 5):  # knitted ribs on the fold
            x = cx + i * hw * 0.24
            pen.line([(x, base - hh * 0.17), (x, base + hh * 0.03)], fill=_shade(dark, 0.8), width=hw * 0.04)
        pen.ellipse(cx, base - hh * 0.86, hw * 0.22, hw * 0.22, fill=dark)


def _draw_face_layer(spec: FaceSpec, pose: float, frame_px: int) -> tuple[Image.Image, float]:
    """Draw the person (no background) on a transparent layer 1.5x the frame size."""
    pad = round(frame_px * 0.25)
    layer = Image.new("RGBA", (frame_px + 2 * pad,) * 2, (0, 0, 0, 0))
    pen = _Pen(layer, frame_px, pad)
    h = _Head(spec, pose)
    skin, hair = SKIN_TONES[spec.skin_tone], HAIR_COLORS[spec.hair_color]

    _draw_body(pen, h, skin, spec.shirt_rgb)
    _draw_hair_back(pen, h, spec.hair_style, hair)
    _draw_ears(pen, h, skin)
    h.fill(pen, _shade(skin, 0.72), grow=0.025)  # outline gives the head a crisp edge
    h.fill(pen, skin)
    if spec.hair_style in ("bald", "mohawk"):
        shine = _mix(skin, (255, 255, 255), 0.35)  # scalp highlight says 'no hair here'
        pen.ellipse(h.cx - h.hw * 0.3, h.cy - h.hh * 0.72, h.hw * 0.2, h.hh * 0.1, fill=shine)
    _draw_hair_front(pen, layer, h, spec.hair_style, hair, spec.hat)
    if spec.beard:
        _draw_beard(pen, layer, h, hair)
    _draw_features(pen, h, spec, skin, hair)
    if spec.glasses:
        _draw_glasses(pen, h)
    if spec.hat != "none":
        _draw_hat(pen, h, spec.hat, _HAT_COLORS[spec.hat_color])
    return layer, pad


def _place_layer(layer: Image.Image, pad: float, frame_px: int, view: View) -> Image.Image:
    """Shift, rotate and zoom the person layer into the frame (one affine resample)."""
    k = max(0.1, view.crop)
    t = math.radians(view.tilt)
    c, s = math.cos(t), math.sin(t)
    px, py = frame_px * 0.5, frame_px * 0.45  # pivot near the face centre so zoom keeps the face in frame
    tx, ty = view.pose * 0.09 * frame_px, 0.0
    # Inverse map (output pixel -> layer pixel) as Image.transform expects.
    a, b, d, e = c / k, -s / k, s / k, c / k
    ox, oy = px + tx, py + ty
    data = (a, b, px + pad - (a * ox + b * oy), d, e, py + pad - (d * ox + e * oy))
    # Premultiplied alpha avoids dark fringes where the resampler mixes in transparent pixels.
    out = layer.convert("RGBa").transform((frame_px, frame_px), Image.Transform.AFFINE, data,
                                          resample=Image.Resampling.BICUBIC)
    return out.convert("RGBA")


def _apply_light(img: Image.Image, light: float, side: float) -> Image.Image:
    """Multiply brightness by light*(1 + side*(2x/W - 1)): a global level plus a side gradient."""
    if side == 0.0:
        return img if light == 1.0 else ImageEnhance.Brightness(img).enhance(light)
    w, hgt = img.size
    left = ImageEnhance.Brightness(img).enhance(light * (1 - side))
    right = ImageEnhance.Brightness(img).enhance(light * (1 + side))
    ramp = Image.new("L", (w, 1))
    ramp.putdata([round(255 * x / max(1, w - 1)) for x in range(w)])
    # Brightness is linear in the factor, so blending the two extremes is an exact ramp.
    return Image.composite(right, left, ramp.resize((w, hgt), Image.Resampling.NEAREST))


def render_face(spec: FaceSpec, view: View = View(), size: int = 128) -> Image.Image:
    """Render ``spec`` photographed under ``view`` as an RGB ``size`` x ``size`` image."""
    ss = _supersample(size)
    frame_px = size * ss
    layer, pad = _draw_face_layer(spec, view.pose, frame_px)
    person = _place_layer(layer, pad, frame_px, view)
    canvas = Image.new("RGB", (frame_px, frame_px), BACKGROUNDS[spec.background])
    canvas.paste(person, (0, 0), person)
    img = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return _apply_light(img, view.light, view.side_light)


# --------------------------------------------------------------------------- distractor images
_BRIGHT: tuple[RGB, ...] = (
    (230, 60, 60), (60, 110, 220), (250, 210, 50), (60, 180, 90), (150, 80, 200),
    (250, 140, 40), (240, 240, 240), (40, 40, 50), (60, 200, 210), (240, 120, 180),
)


def _two_colors(rng: random.Random) -> tuple[RGB, RGB]:
    a, b = rng.sample(_BRIGHT, 2)
    return a, b


def render_pattern(rng: random.Random, size: int = 128) -> Image.Image:
    """A flat texture: stripes, checks, dots or waves in two random colours."""
    ss = 2
    big = size * ss
    fg, bg = _two_colors(rng)
    kind = rng.choice(("stripes", "checks", "dots", "waves"))
    im = Image.new("RGB", (big, big), bg)
    pen = _Pen(im, big)
    if kind == "stripes":
        n = rng.randint(3, 9)
        ang = math.radians(rng.choice((0, 45, 90, 135)) + rng.uniform(-10, 10))
        ux, uy = math.cos(ang), math.sin(ang)  # across the stripes
        vx, vy = -uy, ux  # along the stripes
        half = 0.25 / n  # stripe half-width: stripes cover half the area
        for i in range(-2 * n, 2 * n + 1):
            cx, cy = 0.5 + ux * i / n, 0.5 + uy * i / n
            corners = ((-1, -2), (1, -2), (1, 2), (-1, 2))  # (across, along) multipliers
            pen.poly([(cx + ux * half * a + vx * b, cy + uy * half * a + vy * b) for a, b in corners], fill=fg)
    elif kind == "checks":
        n = rng.randint(2, 8)
        for i in range(n):
            for j in range(n):
                if (i + j) % 2 == 0:
                    pen.rect(i / n, j / n, (i + 1) / n, (j + 1) / n, fill=fg)
    elif kind == "dots":
        n = rng.randint(3, 7)
        r = rng.uniform(0.2, 0.4) / n
        stagger = rng.random() < 0.5  # offset every other row (hexagonal layout)
        for i in range(n):
            for j in range(n):
                shift = 0.5 if (stagger and j % 2) else 0.0
                pen.ellipse((i + 0.5 + shift) / n, (j + 0.5) / n, r, r, fill=fg)
    else:
        n = rng.randint(3, 7)
        amp, freq = rng.uniform(0.02, 0.06), rng.uniform(1.5, 4.0)
        for j in range(n + 1):
            y0 = (j + 0.25) / n
            pts = [(x / 40, y0 + amp * math.sin(2 * math.pi * freq * x / 40)) for x in range(-1, 42)]
            pen.line(pts, fill=fg, width=0.35 / n)
    return im.resize((size, size), Image.Resampling.LANCZOS)


def render_scene(rng: random.Random, size: int = 128) -> Image.Image:
    """A simple landscape: sky, ground, sun or moon, hills, houses and trees."""
    ss = 2
    big = size * ss
    sky_top, sky_low, ground = rng.choice((
        ((70, 130, 230), (170, 210, 250), (90, 170, 70)),     # day, grass
        ((250, 120, 60), (255, 200, 120), (120, 140, 60)),    # sunset
        ((30, 30, 90), (90, 70, 140), (40, 70, 50)),          # night
        ((110, 170, 240), (200, 230, 255), (235, 240, 245)),  # snow
        ((90, 160, 240), (190, 220, 250), (230, 200, 130)),   # desert
    ))
    horizon = rng.uniform(0.55, 0.72)
    im = Image.new("RGB", (big, big))
    pen = _Pen(im, big)
    steps = 24  # banded vertical gradient for the sky
    for i in range(steps):
        band = _mix(sky_top, sky_low, i / (steps - 1))
        pen.rect(0, horizon * i / steps, 1, horizon * (i + 1) / steps + 0.01, fill=band)
    night = sky_top == (30, 30, 90)
    orb = (245, 245, 220) if night else (255, 220, 60)
    pen.ellipse(rng.uniform(0.15, 0.85), rng.uniform(0.1, horizon - 0.25), 0.07, 0.07, fill=orb)
    for _ in range(rng.randint(0, 3)):  # hills in a darker ground tone
        pen.ellipse(rng.uniform(0, 1), horizon + 0.05, rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.2),
                    fill=_shade(ground, rng.uniform(0.7, 0.9)))
    pen.rect(0, horizon, 1, 1, fill=ground)
    for _ in range(rng.randint(0, 3)):
        x, w = rng.uniform(0.05, 0.8), rng.uniform(0.12, 0.2)
        top = horizon - rng.uniform(0.1, 0.2)
        wall, roof = rng.choice(_BRIGHT), _shade(rng.choice(_BRIGHT), 0.6)
        base = horizon + 0.06
        pen.rect(x, top, x + w, base, fill=wall)
        pen.poly([(x - 0.02, top), (x + w / 2, top - w * 0.6), (x + w + 0.02, top)], fill=roof)
        pen.rect(x + w * 0.4, base - 0.07, x + w * 0.6, base, fill=(80, 50, 30))
        pen.rect(x + w * 0.12, top + 0.03, x + w * 0.32, top + 0.06, fill=(200, 230, 250))
    for _ in range(rng.randint(1, 4)):
        x, base = rng.uniform(0.05, 0.95), horizon + rng.uniform(0.05, 0.25)
        hgt = rng.uniform(0.12, 0.22)
        pen.rect(x - 0.012, base - hgt * 0.5, x + 0.012, base, fill=(100, 65, 35))
        leaf = (40, rng.randint(110, 160), 50)
        if rng.random() < 0.5:
            pen.ellipse(x, base - hgt * 0.7, hgt * 0.35, hgt * 0.35, fill=leaf)
        else:
            low = base - hgt * 0.35
            pen.poly([(x - hgt * 0.3, low), (x, base - hgt * 1.2), (x + hgt * 0.3, low)], fill=leaf)
    return im.resize((size, size), Image.Resampling.LANCZOS)


def render_pet(rng: random.Random, size: int = 128) -> Image.Image:
    """A cat- or dog-like animal face (pointy/floppy ears, snout, whiskers): clearly not human."""
    ss = 4 if size <= 128 else 2
    big = size * ss
    fur = rng.choice(((230, 140, 50), (120, 120, 125), (40, 38, 40), (245, 240, 230), (140, 90, 50), (225, 200, 150)))
    light = _mix(fur, (255, 250, 240), 0.6)
    dark = _shade(fur, 0.6) if sum(fur) > 200 else (90, 85, 90)
    bg = rng.choice([c for c in BACKGROUNDS.values() if _dist2(c, fur) > 70**2])  # fur must stand out
    im = Image.new("RGB", (big, big), bg)
    pen = _Pen(im, big)
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.55
    if rng.random() < 0.5:  # ---- cat
        rx, ry = 0.3, 0.25
        pen.ellipse(cx, 1.0, 0.3, 0.2, fill=fur)  # chest
        for side in (-1, 1):
            ex = cx + side * rx * 0.65
            # Pointy ear with a pink inner triangle.
            pen.poly([(ex - side * 0.12, cy - ry * 0.5), (ex + side * 0.05, cy - ry * 1.6),
                      (ex + side * 0.12, cy - ry * 0.4)], fill=fur)
            pen.poly([(ex - side * 0.06, cy - ry * 0.7), (ex + side * 0.04, cy - ry * 1.35),
                      (ex + side * 0.07, cy - ry * 0.7)], fill=(240, 160, 170))
        pen.ellipse(cx, cy, rx, ry, fill=fur)
        if rng.random() < 0.5:  # tabby stripes on the forehead
            for i in (-1, 0, 1):
                pen.line([(cx + i * 0.05, cy - ry * 0.95), (cx + i * 0.04, cy - ry * 0.55)], fill=dark, width=0.02)
        iris = rng.choice(((120, 200, 60), (240, 200, 40), (80, 160, 230)))
        for side in (-1, 1):
            ex, ey = cx + side * 0.11, cy - 0.03
            pen.ellipse(ex, ey, 0.06, 0.05, fill=iris, outline=(20, 20, 20), width=0.006)
            pen.ellipse(ex, ey, 0.013, 0.045, fill=(10, 10, 10))  # slit pupil
        pen.ellipse(cx - 0.035, cy + 0.11, 0.045, 0.035, fill=light)
        pen.ellipse(cx + 0.035, cy + 0.11, 0.045, 0.035, fill=light)
        pen.poly([(cx - 0.03, cy + 0.06), (cx + 0.03, cy + 0.06), (cx, cy + 0.095)], fill=(240, 120, 140))
        whisker = (250, 250, 250) if sum(fur) < 500 else (60, 60, 60)
        for side in (-1, 1):
            for k in (-1, 0, 1):
                pen.line([(cx + side * 0.07, cy + 0.1 + k * 0.015), (cx + side * 0.33, cy + 0.07 + k * 0.05)],
                         fill=whisker, width=0.005)
    else:  # ---- dog
        rx, ry = 0.26, 0.29
        pen.ellipse(cx, 1.02, 0.32, 0.2, fill=fur)
        ear = dark
        for side in (-1, 1):
            pen.ellipse(cx + side * rx * 1.0, cy - 0.02, 0.09, 0.2, fill=ear)  # floppy ears
        pen.ellipse(cx, cy, rx, ry, fill=fur)
        if rng.random() < 0.5:  # patch around one eye
            pen.ellipse(cx + rng.choice((-1, 1)) * 0.1, cy - 0.07, 0.08, 0.07, fill=dark)
        for side in (-1, 1):
            ex, ey = cx + side * 0.1, cy - 0.07
            pen.ellipse(ex, ey, 0.04, 0.04, fill=(40, 25, 15))
            pen.ellipse(ex + 0.012, ey - 0.012, 0.012, 0.012, fill=(255, 255, 255))
        pen.ellipse(cx, cy + 0.13, 0.15, 0.11, fill=light)  # snout
        pen.ellipse(cx, cy + 0.07, 0.06, 0.04, fill=(20, 20, 20))  # big nose
        pen.line([(cx, cy + 0.1), (cx, cy + 0.16)], fill=(20, 20, 20), width=0.008)
        pen.arc(cx - 0.04, cy + 0.16, 0.04, 0.03, 0, 180, fill=(20, 20, 20), width=0.008)
        pen.arc(cx + 0.04, cy + 0.16, 0.04, 0.03, 0, 180, fill=(20, 20, 20), width=0.008)
        if rng.random() < 0.5:
            pen.ellipse(cx, cy + 0.22, 0.035, 0.04, fill=(240, 110, 130))  # tongue
        for side in (-1, 1):  # whisker dots
            for k in range(3):
                pen.ellipse(cx + side * (0.06 + 0.03 * k), cy + 0.12 + 0.01 * (k % 2), 0.006, 0.006, fill=dark)
    return im.resize((size, size), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------- output helpers
_PAD = 4  # pixels around each thumbnail in a contact sheet


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line is cut with '...' if needed."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "...") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines


def contact_sheet(
    items: Sequence[tuple[Image.Image, str]],
    columns: int = 8,
    title: str = "",
    thumb: int = 96,
) -> Image.Image:
    """Grid of thumbnails with wrapped captions underneath and an optional title row.

    Each cell is ``thumb + 2*4`` pixels wide; the grid is ``min(columns, len(items))``
    cells wide.  The caption area holds as many lines as the longest caption needs
    (at most 4), so every cell in one sheet has the same height.
    """
    font = ImageFont.load_default()
    line_h = font.getbbox("Ag")[3] + 3
    cols = max(1, min(columns, len(items))) if items else 1
    rows = math.ceil(len(items) / cols) if items else 0
    wrapped = [_wrap(cap, font, thumb, 4) for _, cap in items]
    n_lines = max((len(w) for w in wrapped), default=0)
    cell_w, cell_h = thumb + 2 * _PAD, thumb + 2 * _PAD + n_lines * line_h
    title_h = line_h + 2 * _PAD if title else 0
    sheet = Image.new("RGB", (cols * cell_w, title_h + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, _PAD), title, fill=(0, 0, 0), font=font)
    for i, ((img, _), lines) in enumerate(zip(items, wrapped)):
        x, y = (i % cols) * cell_w + _PAD, title_h + (i // cols) * cell_h + _PAD
        t = ImageOps.contain(img.convert("RGB"), (thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(t, (x + (thumb - t.width) // 2, y + (thumb - t.height) // 2))
        for j, line in enumerate(lines):
            draw.text((x, y + thumb + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


def png_bytes(img: Image.Image) -> bytes:
    """Deterministic PNG: pixel data only (no text/ICC/dpi chunks), fixed zlib settings."""
    mode = img.mode if img.mode in ("RGB", "RGBA", "L") else "RGB"
    clean = Image.frombytes(mode, img.size, img.convert(mode).tobytes())  # drops img.info
    buf = io.BytesIO()
    clean.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
