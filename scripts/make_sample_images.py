"""Write the deterministic sample product photos and their ground-truth foreground masks."""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MASK_DIR = REPO / "tests" / "data" / "masks"
EXIF_ORIENTATION = 0x0112
# Subjects are drawn at this multiple of the final size and box-reduced, which gives the
# anti-aliased edges a camera would; the large image is sharp enough at 1x.
SUPERSAMPLE = 3


# ---------------------------------------------------------------- small helpers


def _clamp(v: float) -> int:
    return 0 if v < 0 else 255 if v > 255 else int(v + 0.5)


def _mix(a: Color, b: Color, t: float) -> Color:
    return (
        _clamp(a[0] + (b[0] - a[0]) * t),
        _clamp(a[1] + (b[1] - a[1]) * t),
        _clamp(a[2] + (b[2] - a[2]) * t),
    )


def _scale(c: Color, k: float) -> Color:
    return (_clamp(c[0] * k), _clamp(c[1] * k), _clamp(c[2] * k))


def _noise(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Uniform 0..255 noise from the seeded generator (Image.effect_noise is not seedable)."""
    return Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))


def _smooth_noise(rng: random.Random, size: tuple[int, int], cell: float) -> Image.Image:
    """Low-frequency noise: a coarse random grid blown up with a smooth filter."""
    w, h = size
    small = _noise(rng, (max(2, round(w / cell)), max(2, round(h / cell))))
    return small.resize(size, Image.Resampling.BICUBIC)


def _add_grain(img: Image.Image, rng: random.Random, amount: float) -> Image.Image:
    """Sensor-like grain: the same zero-mean noise on every channel.

    The blurred uniform noise has a standard deviation of about 39 levels, so the grain's
    is about 1.6 x `amount`.
    """
    grain = _noise(rng, img.size).filter(ImageFilter.GaussianBlur(0.6))
    grain = grain.point(lambda v: _clamp(128 + (v - 128) * amount / 25))
    offset = Image.merge("RGB", (grain, grain, grain))
    mid = Image.new("RGB", img.size, (128, 128, 128))
    brighter = ImageChops.subtract(offset, mid)
    darker = ImageChops.subtract(mid, offset)
    return ImageChops.subtract(ImageChops.add(img, brighter), darker)


def _tint(gray: Image.Image, dark: Color, light: Color) -> Image.Image:
    """Map an L image onto the colour ramp dark..light."""
    return Image.merge(
        "RGB",
        [gray.point(lambda v, i=i: _clamp(dark[i] + (light[i] - dark[i]) * v / 255))
         for i in range(3)],
    )


def _linear_gradient(size: tuple[int, int], top: Color, bottom: Color,
                     angle: int = 0) -> Image.Image:
    ramp = Image.linear_gradient("L")
    if angle:
        ramp = ramp.rotate(angle)
    return _tint(ramp.resize(size, Image.Resampling.BILINEAR), top, bottom)


def _radial_gradient(size: tuple[int, int], centre: Color, edge: Color, cx: float = 0.5,
                     cy: float = 0.45) -> Image.Image:
    w, h = size
    ramp = Image.radial_gradient("L")  # 256x256, 0 in the middle, 255 at the rim
    # Stretch so the ramp covers the canvas diagonal and centre it on (cx, cy).
    span = int(2.2 * max(w, h))
    ramp = ramp.resize((span, span), Image.Resampling.BILINEAR)
    left = int(span / 2 - cx * w)
    top = int(span / 2 - cy * h)
    ramp = ramp.crop((left, top, left + w, top + h)).point(lambda v: _clamp(v * 1.6))
    return _tint(ramp, centre, edge)


# ---------------------------------------------------------------- backgrounds


def bg_plain(rng: random.Random, size: tuple[int, int], color: Color) -> Image.Image:
    return _add_grain(Image.new("RGB", size, color), rng, 2.5)


def bg_vertical(rng: random.Random, size: tuple[int, int], top: Color, bottom: Color,
                grain: float = 2.0) -> Image.Image:
    img = _linear_gradient(size, top, bottom)
    return _add_grain(img, rng, grain) if grain else img


def bg_radial(rng: random.Random, size: tuple[int, int], centre: Color, edge: Color) -> Image.Image:
    return _add_grain(_radial_gradient(size, centre, edge), rng, 2.0)


def bg_noise(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Concrete/terrazzo-like surface: noise at three scales plus fine speckle."""
    coarse = _smooth_noise(rng, size, 90)
    mid = _smooth_noise(rng, size, 18)
    fine = _smooth_noise(rng, size, 3)
    gray = ImageChops.add(ImageChops.add(coarse, mid, scale=2), fine, scale=2)
    gray = gray.point(lambda v: _clamp(128 + (v - 128) * 2.4))
    img = _tint(gray, (112, 110, 104), (190, 186, 178))
    return _add_grain(img, rng, 10)


def bg_wood(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Horizontal planks with stretched grain, per-plank tone and dark seams."""
    w, h = size
    grain = _noise(rng, (max(2, w // 40), h)).resize(size, Image.Resampling.BICUBIC)
    grain = grain.filter(ImageFilter.GaussianBlur(1.2)).point(lambda v: _clamp(128 + (v - 128) * 2))
    img = _tint(grain, (128, 82, 48), (196, 146, 98))
    draw = ImageDraw.Draw(img)
    y = 0.0
    plank = h / 7.3
    shade = Image.new("L", size, 128)
    sdraw = ImageDraw.Draw(shade)
    while y < h:
        sdraw.rectangle((0, int(y), w, int(y + plank)), fill=rng.randint(100, 156))
        y += plank
    shade = shade.filter(ImageFilter.GaussianBlur(2))
    lift = shade.point(lambda v: _clamp((v - 128) * 0.6 + 128))
    img = ImageChops.overlay(img, Image.merge("RGB", (lift, lift, lift)))
    y = plank
    while y < h:
        draw.line((0, int(y), w, int(y)), fill=(70, 44, 26), width=max(2, h // 260))
        y += plank
    return _add_grain(img, rng, 4)


def bg_fabric(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Plain-weave linen: alternating over/under threads with slub and mottling."""
    w, h = size
    p = 6  # thread pitch in pixels
    tile = Image.new("L", (2 * p, 2 * p))
    td = ImageDraw.Draw(tile)
    for ty in range(2 * p):
        for tx in range(2 * p):
            over = ((tx // p) + (ty // p)) % 2
            u = (ty % p) / (p - 1) if over else (tx % p) / (p - 1)
            td.point((tx, ty), fill=_clamp(150 + 80 * math.sin(math.pi * u)))
    weave = Image.new("L", size)
    for y in range(0, h, 2 * p):
        for x in range(0, w, 2 * p):
            weave.paste(tile, (x, y))
    slub = _noise(rng, (max(2, w // 30), h)).resize(size, Image.Resampling.BICUBIC)
    weave = ImageChops.multiply(weave, slub.point(lambda v: _clamp(200 + v * 0.22)))
    img = _tint(weave, (70, 84, 104), (176, 190, 206))
    mottle = _smooth_noise(rng, size, 120).point(lambda v: _clamp(128 + (v - 128) * 0.5))
    img = ImageChops.overlay(img, Image.merge("RGB", (mottle, mottle, mottle)))
    return _add_grain(img, rng, 5)


def bg_checker(rng: random.Random, size: tuple[int, int], cell: int) -> Image.Image:
    """Tiled floor: two tile tones, thin grout and a little grain."""
    w, h = size
    img = Image.new("RGB", size, (206, 204, 198))
    draw = ImageDraw.Draw(img)
    for j in range(h // cell + 1):
        for i in range(w // cell + 1):
            if (i + j) % 2:
                tone = _scale((150, 154, 160), 0.95 + 0.1 * rng.random())
                draw.rectangle((i * cell, j * cell, (i + 1) * cell - 1, (j + 1) * cell - 1),
                               fill=tone)
    for k in range(w // cell + 1):
        draw.line((k * cell, 0, k * cell, h), fill=(120, 118, 114), width=2)
    for k in range(h // cell + 1):
        draw.line((0, k * cell, w, k * cell), fill=(120, 118, 114), width=2)
    return _add_grain(img, rng, 4)


# ---------------------------------------------------------------- the drawing canvas


@dataclass
class Canvas:
    """Photo and foreground mask at `ss` times the final size; coordinates are final pixels."""

    img: Image.Image
    mask: Image.Image
    ss: int

    @classmethod
    def over(cls, background: Image.Image, ss: int) -> Canvas:
        w, h = background.size
        img = background
        if ss > 1:
            img = background.resize((w * ss, h * ss), Image.Resampling.BICUBIC)
        return cls(img, Image.new("L", img.size, 0), ss)

    def box(self, b: Box) -> tuple[int, int, int, int]:
        s = self.ss
        return (round(b[0] * s), round(b[1] * s), round(b[2] * s), round(b[3] * s))

    def pts(self, points: list[tuple[float, float]]) -> list[tuple[int, int]]:
        return [(round(x * self.ss), round(y * self.ss)) for x, y in points]

    def shape(self, draw_fn: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
        m = Image.new("L", self.img.size, 0)
        draw_fn(ImageDraw.Draw(m))
        return m

    def paint(self, fill: Image.Image | Color, mask: Image.Image, *, subject: bool = True,
              rim: float = 0.0) -> None:
        """Composite `fill` through `mask`; `rim` darkens a thin inner edge (occlusion/outline)."""
        bbox = mask.getbbox()
        if bbox is None:
            return
        # Work on the mask's bounding box only: full-canvas filters dominate the run time.
        pad = round(6 * self.ss)
        x0, y0 = max(0, bbox[0] - pad), max(0, bbox[1] - pad)
        x1, y1 = min(mask.width, bbox[2] + pad), min(mask.height, bbox[3] + pad)
        m = mask.crop((x0, y0, x1, y1))
        if isinstance(fill, tuple):
            f = Image.new("RGB", m.size, fill)
        else:
            f = fill.crop((x0, y0, x1, y1))
        if rim:
            inner = m.filter(ImageFilter.GaussianBlur(1.6 * self.ss)).point(
                lambda v: 255 if v > 235 else 0)
            edge = ImageChops.subtract(m, inner).point(lambda v: _clamp(v * rim))
            shade = ImageChops.multiply(f, Image.new("RGB", f.size, (90, 90, 90)))
            f = Image.composite(shade, f, edge)
        self.img.paste(f, (x0, y0), m)
        if subject:
            region = self.mask.crop((x0, y0, x1, y1))
            self.mask.paste(ImageChops.lighter(region, m), (x0, y0))

    def shadow(self, b: Box, strength: float, blur: float) -> None:
        """Soft contact shadow on the background; not part of the subject."""
        m = self.shape(lambda d: d.ellipse(self.box(b), fill=255))
        m = m.filter(ImageFilter.GaussianBlur(blur * self.ss)).point(lambda v: _clamp(v * strength))
        dark = ImageChops.multiply(self.img, Image.new("RGB", self.img.size, (60, 60, 66)))
        self.img = Image.composite(dark, self.img, m)

    def patch(self, b: Box, texture: Image.Image) -> Image.Image:
        """A full-canvas image holding `texture` stretched over box `b` (for shaded fills)."""
        x0, y0, x1, y1 = self.box(b)
        full = Image.new("RGB", self.img.size)
        full.paste(texture.resize((max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.BICUBIC),
                   (x0, y0))
        return full

    def finish(self) -> tuple[Image.Image, Image.Image]:
        img, mask = self.img, self.mask
        if self.ss > 1:
            img = img.reduce(self.ss)
            mask = mask.reduce(self.ss)
        return img, mask.point(lambda v: 255 if v >= 128 else 0).convert("1")


def cylinder(base: Color, light: float = -0.55, gloss: float = 0.55,
             width: int = 256) -> Image.Image:
    """One row of cylinder shading, to be stretched over a box: Lambert + Phong highlight."""
    row = Image.new("RGB", (width, 1))
    for x in range(width):
        theta = (x + 0.5) / width * math.pi - math.pi / 2  # surface normal angle
        diffuse = max(0.0, math.cos(theta - light))
        spec = max(0.0, math.cos(theta - light / 2)) ** 60 * gloss
        c = _scale(base, 0.32 + 0.78 * diffuse)
        row.putpixel((x, 0), _mix(c, (255, 255, 255), spec))
    return row


def sphere(base: Color, gloss: float = 0.6, size: int = 96) -> Image.Image:
    """A lit sphere filling its square, light from the upper left."""
    img = Image.new("RGB", (size, size))
    lx, ly, lz = -0.45, -0.55, 0.70
    hx, hy, hz = lx, ly, lz + 1.0  # Blinn half vector towards a viewer on +z
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    for y in range(size):
        for x in range(size):
            nx = (x + 0.5) / size * 2 - 1
            ny = (y + 0.5) / size * 2 - 1
            r2 = nx * nx + ny * ny
            if r2 > 1:
                nx, ny, r2 = nx / math.sqrt(r2), ny / math.sqrt(r2), 1.0
            nz = math.sqrt(max(0.0, 1 - r2))
            diffuse = max(0.0, nx * lx + ny * ly + nz * lz)
            spec = max(0.0, (nx * hx + ny * hy + nz * hz) / hn) ** 50 * gloss
            c = _scale(base, 0.28 + 0.82 * diffuse)
            img.putpixel((x, y), _mix(c, (255, 255, 255), spec))
    return img


def vertical_shade(top: Color, bottom: Color) -> Image.Image:
    return _linear_gradient((64, 64), top, bottom)


# ---------------------------------------------------------------- subjects
# Each subject draws itself into a box (x0, y0, x1, y1) in final-image pixels.


def draw_mug(cv: Canvas, b: Box, body: Color, logo: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    bx1 = x0 + 0.74 * w  # body right edge; the handle sits beyond it
    rim_h = 0.12 * h
    cv.shadow((x0 + 0.02 * w, y1 - 0.06 * h, bx1 + 0.06 * w, y1 + 0.03 * h), 0.35, 0.025 * w)
    handle_outer = (bx1 - 0.14 * w, y0 + 0.22 * h, x1, y0 + 0.78 * h)
    handle_inner = (bx1 - 0.06 * w, y0 + 0.33 * h, x1 - 0.09 * w, y0 + 0.67 * h)
    ring = cv.shape(lambda d: d.ellipse(cv.box(handle_outer), fill=255))
    hole = cv.shape(lambda d: d.ellipse(cv.box(handle_inner), fill=255))
    ring = ImageChops.subtract(ring, hole)
    cv.paint(cv.patch(handle_outer, cylinder(_scale(body, 0.9), light=-1.0)), ring, rim=0.9)

    def body_shape(d: ImageDraw.ImageDraw) -> None:
        d.rectangle(cv.box((x0, y0 + rim_h / 2, bx1, y1 - rim_h / 2)), fill=255)
        d.ellipse(cv.box((x0, y1 - rim_h, bx1, y1)), fill=255)
        d.ellipse(cv.box((x0, y0, bx1, y0 + rim_h)), fill=255)

    cv.paint(cv.patch((x0, y0, bx1, y1), cylinder(body)), cv.shape(body_shape), rim=0.8)
    inside = (x0 + 0.03 * w, y0 + 0.012 * h, bx1 - 0.03 * w, y0 + rim_h - 0.012 * h)
    cv.paint(cv.patch(inside, vertical_shade(_scale(body, 0.35), _scale(body, 0.7))),
             cv.shape(lambda d: d.ellipse(cv.box(inside), fill=255)))
    # A printed roundel, cylinder-shaded like the body so it sits on the surface.
    lc = (x0 + bx1) / 2
    logo_box = (lc - 0.17 * w, y0 + 0.36 * h, lc + 0.17 * w, y0 + 0.36 * h + 0.34 * w)
    cv.paint(cv.patch(logo_box, cylinder(logo, gloss=0.2)),
             cv.shape(lambda d: d.ellipse(cv.box(logo_box), fill=255)))
    star = [(lc + 0.1 * w * math.cos(a * math.pi / 5 - math.pi / 2) * (1 if a % 2 == 0 else 0.45),
             logo_box[1] + 0.17 * w + 0.1 * w * math.sin(a * math.pi / 5 - math.pi / 2)
             * (1 if a % 2 == 0 else 0.45)) for a in range(10)]
    cv.paint(_scale(body, 0.85), cv.shape(lambda d: d.polygon(cv.pts(star), fill=255)))


def draw_bottle(cv: Canvas, b: Box, glass: Color, cap: Color, label: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    cv.shadow((x0 + 0.05 * w, y1 - 0.03 * h, x1 - 0.05 * w, y1 + 0.02 * h), 0.35, 0.05 * w)
    profile = []  # right half outline from cap down to the base
    for i in range(41):
        t = i / 40
        y = y0 + 0.12 * h + t * 0.88 * h
        if t < 0.18:
            r = 0.16
        elif t < 0.42:
            s = (t - 0.18) / 0.24
            r = 0.16 + 0.34 * (0.5 - 0.5 * math.cos(math.pi * s))
        else:
            r = 0.5
        profile.append((cx + r * w, y))
    outline = profile + [(2 * cx - x, y) for x, y in reversed(profile)]

    def body_shape(d: ImageDraw.ImageDraw) -> None:
        d.polygon(cv.pts(outline), fill=255)
        d.ellipse(cv.box((x0, y1 - 0.03 * h, x1, y1 + 0.005 * h)), fill=255)

    cv.paint(cv.patch((x0, y0, x1, y1), cylinder(glass, gloss=0.9)), cv.shape(body_shape), rim=0.9)
    lab = (x0, y0 + 0.55 * h, x1, y0 + 0.82 * h)
    cv.paint(cv.patch(lab, cylinder(label, gloss=0.15)), ImageChops.multiply(
        cv.shape(body_shape), cv.shape(lambda d: d.rectangle(cv.box(lab), fill=255))))
    cv.paint(_scale(glass, 0.5), cv.shape(lambda d: d.rectangle(
        cv.box((cx - 0.3 * w, y0 + 0.64 * h, cx + 0.3 * w, y0 + 0.655 * h)), fill=255)))
    cv.paint(_scale(glass, 0.5), cv.shape(lambda d: d.rectangle(
        cv.box((cx - 0.22 * w, y0 + 0.69 * h, cx + 0.22 * w, y0 + 0.70 * h)), fill=255)))
    capb = (cx - 0.19 * w, y0, cx + 0.19 * w, y0 + 0.13 * h)
    cv.paint(cv.patch(capb, cylinder(cap, gloss=0.3)), cv.shape(
        lambda d: d.rounded_rectangle(cv.box(capb), radius=round(0.04 * w * cv.ss), fill=255)),
        rim=0.8)


def draw_ball(cv: Canvas, b: Box, base: Color, seam: Color) -> None:
    x0, y0, x1, y1 = b
    w = x1 - x0
    cv.shadow((x0 + 0.12 * w, y1 - 0.07 * w, x1 - 0.12 * w, y1 + 0.05 * w), 0.55, 0.05 * w)
    disc = cv.shape(lambda d: d.ellipse(cv.box(b), fill=255))
    cv.paint(cv.patch(b, sphere(base)), disc, rim=0.5)
    seams = cv.shape(lambda d: (
        d.arc(cv.box((x0 - 0.55 * w, y0 + 0.05 * w, x0 + 0.45 * w, y1 - 0.05 * w)), -60, 60,
              fill=255, width=round(0.025 * w * cv.ss)),
        d.arc(cv.box((x1 - 0.45 * w, y0 + 0.05 * w, x1 + 0.55 * w, y1 - 0.05 * w)), 120, 240,
              fill=255, width=round(0.025 * w * cv.ss))))
    cv.paint(cv.patch(b, sphere(seam, gloss=0.2)), ImageChops.multiply(seams, disc))


def draw_sneaker(cv: Canvas, b: Box, upper: Color, sole: Color, accent: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0

    def p(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * w, y0 + v * h)

    cv.shadow((x0 + 0.02 * w, y1 - 0.08 * h, x1, y1 + 0.06 * h), 0.45, 0.02 * w)
    sole_pts = [p(0.0, 0.78), p(0.02, 0.97), p(0.3, 1.0), p(0.75, 1.0), p(0.97, 0.96), p(1.0, 0.84),
                p(0.96, 0.76), p(0.5, 0.78), p(0.1, 0.74)]
    upper_pts = [p(0.03, 0.8), p(0.0, 0.45), p(0.04, 0.12), p(0.16, 0.0), p(0.3, 0.06),
                 p(0.42, 0.3), p(0.62, 0.42), p(0.86, 0.55), p(0.98, 0.7), p(0.96, 0.82),
                 p(0.5, 0.82)]
    upper_mask = cv.shape(lambda d: d.polygon(cv.pts(upper_pts), fill=255))
    cv.paint(cv.patch((x0, y0, x1, y1), vertical_shade(_scale(upper, 1.12), _scale(upper, 0.62))),
             upper_mask, rim=0.9)
    cv.paint(cv.patch((x0, y0 + 0.74 * h, x1, y1), vertical_shade(sole, _scale(sole, 0.7))),
             cv.shape(lambda d: d.polygon(cv.pts(sole_pts), fill=255)), rim=0.7)
    # Swoosh-like side stripe and the collar opening.
    stripe = [p(0.12, 0.66), p(0.45, 0.5), p(0.8, 0.62), p(0.5, 0.58), p(0.16, 0.72)]
    cv.paint(accent, cv.shape(lambda d: d.polygon(cv.pts(stripe), fill=255)))
    cv.paint(_scale(upper, 0.35), cv.shape(lambda d: d.ellipse(
        cv.box((0.06 * w + x0, 0.02 * h + y0, 0.26 * w + x0, 0.14 * h + y0)), fill=255)))
    lace = cv.shape(lambda d: [d.line(cv.pts([p(0.27 + 0.06 * i, 0.14 + 0.07 * i),
                                                 p(0.33 + 0.06 * i, 0.11 + 0.07 * i)]),
                                       fill=255, width=round(0.012 * w * cv.ss))
                               for i in range(4)])
    cv.paint((236, 236, 232), ImageChops.multiply(lace, upper_mask))


def draw_box(cv: Canvas, b: Box, card: Color, tape: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0

    def p(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * w, y0 + v * h)

    cv.shadow((x0 + 0.02 * w, y1 - 0.12 * h, x1, y1 + 0.04 * h), 0.5, 0.03 * w)
    top = [p(0.0, 0.22), p(0.55, 0.0), p(1.0, 0.14), p(0.45, 0.38)]
    left = [p(0.0, 0.22), p(0.45, 0.38), p(0.45, 1.0), p(0.0, 0.8)]
    right = [p(0.45, 0.38), p(1.0, 0.14), p(1.0, 0.74), p(0.45, 1.0)]
    cv.paint(cv.patch(b, vertical_shade(_scale(card, 1.08), _scale(card, 0.95))),
             cv.shape(lambda d: d.polygon(cv.pts(top), fill=255)), rim=0.5)
    cv.paint(cv.patch(b, vertical_shade(_scale(card, 0.82), _scale(card, 0.66))),
             cv.shape(lambda d: d.polygon(cv.pts(left), fill=255)), rim=0.5)
    cv.paint(cv.patch(b, vertical_shade(_scale(card, 0.62), _scale(card, 0.48))),
             cv.shape(lambda d: d.polygon(cv.pts(right), fill=255)), rim=0.5)
    strip = [p(0.245, 0.11), p(0.305, 0.085), p(0.755, 0.275), p(0.695, 0.3)]
    cv.paint(tape, cv.shape(lambda d: d.polygon(cv.pts(strip), fill=255)))
    cv.paint(_scale(tape, 0.8), cv.shape(lambda d: d.polygon(
        cv.pts([p(0.695, 0.3), p(0.755, 0.275), p(0.755, 0.5), p(0.695, 0.53)]), fill=255)))
    # Printed "this way up" arrows on the left face.
    cv.paint(_scale(card, 0.35), cv.shape(lambda d: d.polygon(
        cv.pts([p(0.15, 0.5), p(0.22, 0.42), p(0.29, 0.58), p(0.24, 0.57), p(0.24, 0.7),
                p(0.2, 0.68), p(0.2, 0.55)]), fill=255)))


def draw_plant(cv: Canvas, b: Box, rng: random.Random, pot: Color, leaf: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    cv.shadow((cx - 0.3 * w, y1 - 0.04 * h, cx + 0.3 * w, y1 + 0.02 * h), 0.5, 0.03 * w)
    pot_top = y0 + 0.56 * h
    body = [(cx - 0.26 * w, pot_top + 0.05 * h), (cx + 0.26 * w, pot_top + 0.05 * h),
            (cx + 0.19 * w, y1), (cx - 0.19 * w, y1)]
    rimb = (cx - 0.3 * w, pot_top, cx + 0.3 * w, pot_top + 0.07 * h)
    # Leaves first so the pot rim overlaps their stems.
    for i in range(11):
        ang = -math.pi / 2 + (i - 5) * 0.26 + rng.uniform(-0.08, 0.08)
        length = h * rng.uniform(0.34, 0.5)
        bx, by = cx + rng.uniform(-0.05, 0.05) * w, pot_top + 0.02 * h
        tx, ty = bx + length * math.cos(ang), by + length * math.sin(ang)
        nx, ny = -math.sin(ang), math.cos(ang)
        half = w * rng.uniform(0.055, 0.08)
        pts = []
        for k in range(13):
            t = k / 12
            wdt = half * math.sin(math.pi * t) ** 0.8
            pts.append((bx + (tx - bx) * t + nx * wdt, by + (ty - by) * t + ny * wdt))
        for k in range(12, -1, -1):
            t = k / 12
            wdt = half * math.sin(math.pi * t) ** 0.8
            pts.append((bx + (tx - bx) * t - nx * wdt, by + (ty - by) * t - ny * wdt))
        tone = _scale(leaf, rng.uniform(0.75, 1.2))
        lb = (min(bx, tx) - half, min(by, ty) - half, max(bx, tx) + half, max(by, ty) + half)
        cv.paint(cv.patch(lb, vertical_shade(_scale(tone, 1.15), _scale(tone, 0.7))),
                 cv.shape(lambda d, pts=pts: d.polygon(cv.pts(pts), fill=255)), rim=0.6)
        cv.paint(_scale(tone, 0.6), cv.shape(lambda d, bx=bx, by=by, tx=tx, ty=ty: d.line(
            cv.pts([(bx, by), (bx + (tx - bx) * 0.9, by + (ty - by) * 0.9)]), fill=255,
            width=max(1, round(0.006 * w * cv.ss)))))
    cv.paint(cv.patch((cx - 0.26 * w, pot_top, cx + 0.26 * w, y1), cylinder(pot, gloss=0.1)),
             cv.shape(lambda d: d.polygon(cv.pts(body), fill=255)), rim=0.7)
    cv.paint(cv.patch(rimb, cylinder(_scale(pot, 1.05), gloss=0.1)),
             cv.shape(lambda d: d.rectangle(cv.box(rimb), fill=255)), rim=0.7)


def draw_vase(cv: Canvas, b: Box, glaze: Color, band: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    cv.shadow((x0 + 0.05 * w, y1 - 0.04 * h, x1 - 0.05 * w, y1 + 0.03 * h), 0.45, 0.05 * w)
    right = []
    for i in range(61):
        t = i / 60
        neck = 0.06 * math.exp(-(((t - 0.12) / 0.08) ** 2))
        r = 0.2 + 0.3 * math.sin(math.pi * (0.15 + 0.85 * t)) ** 1.5 - neck
        if t < 0.04:
            r = 0.26
        right.append((cx + r * w, y0 + t * h))
    outline = right + [(2 * cx - x, y) for x, y in reversed(right)]
    shape = cv.shape(lambda d: d.polygon(cv.pts(outline), fill=255))
    cv.paint(cv.patch(b, cylinder(glaze, gloss=0.8)), shape, rim=0.8)
    bandm = ImageChops.multiply(shape, cv.shape(lambda d: d.rectangle(
        cv.box((x0, y0 + 0.58 * h, x1, y0 + 0.66 * h)), fill=255)))
    cv.paint(cv.patch(b, cylinder(band, gloss=0.3)), bandm)
    mouth = (cx - 0.24 * w, y0 - 0.02 * h, cx + 0.24 * w, y0 + 0.04 * h)
    cv.paint(cv.patch(mouth, vertical_shade(_scale(glaze, 0.3), _scale(glaze, 0.55))),
             cv.shape(lambda d: d.ellipse(cv.box(mouth), fill=255)))


def draw_kettle(cv: Canvas, b: Box, metal: Color, handle: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cv.shadow((x0 + 0.15 * w, y1 - 0.06 * h, x1 - 0.15 * w, y1 + 0.04 * h), 0.5, 0.03 * w)
    body = (x0 + 0.18 * w, y0 + 0.28 * h, x1 - 0.18 * w, y1)
    # The dome is the top half of an ellipse whose centre sits on the base ring.
    dome_bottom = 2 * (y1 - 0.07 * h) - body[1]
    spout = [(x0 + 0.3 * w, y0 + 0.62 * h), (x0 + 0.02 * w, y0 + 0.36 * h), (x0, y0 + 0.3 * h),
             (x0 + 0.07 * w, y0 + 0.32 * h), (x0 + 0.32 * w, y0 + 0.5 * h)]
    cv.paint(cv.patch((x0, y0 + 0.3 * h, x0 + 0.32 * w, y0 + 0.62 * h),
                      vertical_shade(_scale(metal, 1.1), _scale(metal, 0.6))),
             cv.shape(lambda d: d.polygon(cv.pts(spout), fill=255)), rim=0.8)
    arc_box = (x0 + 0.3 * w, y0 + 0.02 * h, x1 - 0.3 * w, y0 + 0.62 * h)
    loop = cv.shape(lambda d: d.arc(cv.box(arc_box), 190, 350, fill=255,
                                    width=round(0.05 * w * cv.ss)))
    cv.paint(cv.patch(arc_box, vertical_shade(_scale(handle, 1.3), _scale(handle, 0.7))), loop,
             rim=0.6)
    cv.paint(cv.patch(body, sphere(metal, gloss=0.9)),
             cv.shape(lambda d: d.chord(cv.box((body[0], body[1], body[2], dome_bottom)),
                                        180, 360, fill=255)), rim=0.6)
    base = (body[0], y1 - 0.08 * h, body[2], y1)
    cv.paint(cv.patch(base, cylinder(_scale(metal, 0.8))),
             cv.shape(lambda d: d.rectangle(cv.box(base), fill=255)), rim=0.6)
    knob = (x0 + 0.45 * w, y0 + 0.22 * h, x1 - 0.45 * w, y0 + 0.32 * h)
    cv.paint(cv.patch(knob, sphere(handle, gloss=0.4)),
             cv.shape(lambda d: d.ellipse(cv.box(knob), fill=255)))


def draw_watch(cv: Canvas, b: Box, case: Color, strap: Color, dial: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cv.shadow((x0 + 0.1 * w, y0 + 0.05 * h, x1 + 0.03 * w, y1 + 0.02 * h), 0.3, 0.06 * w)
    strap_box = (cx - 0.26 * w, y0, cx + 0.26 * w, y1)
    cv.paint(cv.patch(strap_box, cylinder(strap, gloss=0.15)), cv.shape(
        lambda d: d.rounded_rectangle(cv.box(strap_box), radius=round(0.1 * w * cv.ss), fill=255)),
        rim=0.8)
    for k in range(5):  # strap holes show the strap's dark inside, not the background
        hy = y1 - 0.07 * h - k * 0.035 * h
        cv.paint(_scale(strap, 0.4), cv.shape(lambda d, hy=hy: d.ellipse(
            cv.box((cx - 0.025 * w, hy - 0.012 * h, cx + 0.025 * w, hy + 0.012 * h)), fill=255)))
    crown = (x1 - 0.08 * w, cy - 0.05 * h, x1, cy + 0.05 * h)
    cv.paint(cv.patch(crown, cylinder(case)), cv.shape(
        lambda d: d.rounded_rectangle(cv.box(crown), radius=round(0.02 * w * cv.ss), fill=255)),
        rim=0.8)
    case_box = (x0 + 0.05 * w, cy - 0.45 * w, x1 - 0.05 * w, cy + 0.45 * w)
    cv.paint(cv.patch(case_box, sphere(case, gloss=0.8)),
             cv.shape(lambda d: d.ellipse(cv.box(case_box), fill=255)), rim=0.6)
    dial_box = (x0 + 0.13 * w, cy - 0.37 * w, x1 - 0.13 * w, cy + 0.37 * w)
    cv.paint(cv.patch(dial_box, vertical_shade(dial, _scale(dial, 0.85))),
             cv.shape(lambda d: d.ellipse(cv.box(dial_box), fill=255)))
    r = 0.3 * w
    ticks = cv.shape(lambda d: [d.line(cv.pts([
        (cx + r * math.cos(a * math.pi / 6), cy + r * math.sin(a * math.pi / 6)),
        (cx + 0.85 * r * math.cos(a * math.pi / 6), cy + 0.85 * r * math.sin(a * math.pi / 6))]),
        fill=255, width=max(1, round(0.015 * w * cv.ss))) for a in range(12)])
    cv.paint((40, 40, 44), ticks)
    hands = cv.shape(lambda d: (
        d.line(cv.pts([(cx, cy), (cx + 0.18 * w, cy - 0.1 * w)]), fill=255,
               width=max(1, round(0.025 * w * cv.ss))),
        d.line(cv.pts([(cx, cy), (cx - 0.05 * w, cy - 0.27 * w)]), fill=255,
               width=max(1, round(0.015 * w * cv.ss)))))
    cv.paint((30, 30, 34), hands)


def draw_can(cv: Canvas, b: Box, metal: Color, print_: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cv.shadow((x0, y1 - 0.04 * h, x1 + 0.1 * w, y1 + 0.03 * h), 0.45, 0.04 * w)
    body = (x0, y0 + 0.04 * h, x1, y1 - 0.04 * h)
    cv.paint(cv.patch(body, cylinder(print_, gloss=0.7)), cv.shape(
        lambda d: (d.rectangle(cv.box(body), fill=255),
                   d.ellipse(cv.box((x0, y1 - 0.08 * h, x1, y1)), fill=255))), rim=0.8)
    for top in (y0, y1 - 0.12 * h):
        band = (x0 + 0.04 * w, top, x1 - 0.04 * w, top + 0.12 * h)
        cv.paint(cv.patch(band, cylinder(metal, gloss=0.9)), cv.shape(
            lambda d, band=band: d.rounded_rectangle(cv.box(band), radius=round(0.06 * w * cv.ss),
                                                     fill=255)), rim=0.6)
    wave = [(x0 + t / 20 * w, y0 + 0.45 * h + 0.06 * h * math.sin(t / 20 * 2 * math.pi))
            for t in range(21)]
    wave += [(x, y + 0.08 * h) for x, y in reversed(wave)]
    cv.paint(_mix(print_, (255, 255, 255), 0.88),
             cv.shape(lambda d: d.polygon(cv.pts(wave), fill=255)))


def draw_backpack(cv: Canvas, b: Box, fabric: Color, trim: Color) -> None:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cv.shadow((x0 + 0.02 * w, y1 - 0.05 * h, x1 - 0.02 * w, y1 + 0.03 * h), 0.45, 0.03 * w)
    loop_box = (x0 + 0.36 * w, y0, x1 - 0.36 * w, y0 + 0.16 * h)
    cv.paint(trim, cv.shape(lambda d: d.arc(cv.box(loop_box), 180, 360, fill=255,
                                            width=round(0.025 * w * cv.ss))), rim=0.6)
    body = (x0, y0 + 0.06 * h, x1, y1)
    cv.paint(cv.patch(body, cylinder(fabric, gloss=0.1)), cv.shape(
        lambda d: d.rounded_rectangle(cv.box(body), radius=round(0.22 * w * cv.ss), fill=255)),
        rim=0.8)
    pocket = (x0 + 0.14 * w, y0 + 0.55 * h, x1 - 0.14 * w, y1 - 0.05 * h)
    cv.paint(cv.patch(pocket, cylinder(_scale(fabric, 0.85), gloss=0.1)), cv.shape(
        lambda d: d.rounded_rectangle(cv.box(pocket), radius=round(0.12 * w * cv.ss), fill=255)),
        rim=0.9)
    zip_ = cv.shape(lambda d: d.arc(cv.box((x0 + 0.08 * w, y0 + 0.1 * h, x1 - 0.08 * w,
                                              y0 + 0.7 * h)), 195, 345, fill=255,
                                    width=max(1, round(0.01 * w * cv.ss))))
    cv.paint(trim, zip_)
    cv.paint(_scale(trim, 1.2), cv.shape(lambda d: d.rounded_rectangle(
        cv.box((x0 + 0.45 * w, y0 + 0.58 * h, x0 + 0.55 * w, y0 + 0.62 * h)),
        radius=round(0.01 * w * cv.ss), fill=255)))


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Sample:
    name: str
    size: tuple[int, int]  # upright width, height
    seed: int
    build: Callable[[random.Random, tuple[int, int], int], Canvas]
    quality: int = 90
    exif_orientation: int = 1
    mode: str = "RGB"
    grain: float = 2.0


def _mug(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_plain(rng, size, (228, 226, 222)), ss)
    draw_mug(cv, (250, 150, 560, 470), (176, 38, 44), (236, 228, 208))
    return cv


def _ball(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_plain(rng, size, (208, 214, 222)), ss)
    draw_ball(cv, (116, 96, 396, 376), (232, 120, 30), (40, 30, 24))
    return cv


def _bottle(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_vertical(rng, size, (214, 226, 238), (120, 138, 160)), ss)
    draw_bottle(cv, (210, 110, 390, 700), (36, 112, 64), (200, 168, 60), (236, 224, 190))
    return cv


def _sneaker(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_radial(rng, size, (250, 238, 220), (196, 160, 128)), ss)
    draw_sneaker(cv, (150, 170, 760, 470), (40, 60, 120), (232, 230, 226), (226, 62, 48))
    return cv


def _can(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(_add_grain(_linear_gradient(size, (200, 200, 200), (120, 120, 120), 90), rng,
                                2.0), ss)
    draw_can(cv, (170, 170, 330, 560), (200, 200, 206), (60, 60, 70))
    return cv


def _box(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_noise(rng, size), ss)
    draw_box(cv, (150, 170, 560, 560), (196, 150, 96), (214, 208, 190))
    return cv


def _plant(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_wood(rng, size), ss)
    draw_plant(cv, (130, 90, 470, 730), rng, (200, 96, 62), (52, 130, 60))
    return cv


def _vase(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_checker(rng, size, 64), ss)
    draw_vase(cv, (200, 120, 440, 560), (38, 92, 150), (224, 186, 72))
    return cv


def _kettle(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_fabric(rng, size), ss)
    draw_kettle(cv, (200, 110, 600, 560), (196, 64, 40), (40, 36, 34))
    return cv


def _watch(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_plain(rng, size, (236, 232, 224)), ss)
    draw_watch(cv, (200, 120, 400, 680), (170, 172, 178), (92, 56, 34), (246, 244, 236))
    return cv


def _backpack(rng: random.Random, size: tuple[int, int], ss: int) -> Canvas:
    cv = Canvas.over(bg_vertical(rng, size, (238, 240, 236), (176, 184, 178), grain=0), ss)
    draw_backpack(cv, (1250, 400, 2750, 2700), (58, 104, 84), (226, 170, 40))
    return cv


SAMPLES: tuple[Sample, ...] = (
    Sample("mug_plain.jpg", (800, 600), 11, _mug),
    Sample("ball_plain.png", (512, 480), 12, _ball),
    Sample("bottle_gradient.png", (600, 800), 13, _bottle),
    Sample("sneaker_gradient.jpg", (900, 600), 14, _sneaker),
    Sample("can_gradient_gray.png", (500, 700), 15, _can, mode="L"),
    Sample("box_noise.jpg", (700, 700), 16, _box),
    Sample("plant_wood.png", (600, 800), 17, _plant),
    Sample("vase_checker.png", (640, 640), 18, _vase),
    Sample("kettle_fabric.jpg", (800, 640), 19, _kettle),
    Sample("watch_plain_exif6.jpg", (600, 800), 20, _watch, exif_orientation=6),
    Sample("backpack_gradient_large.jpg", (4000, 3000), 21, _backpack, quality=82, grain=1.5),
)

# Stored pixels for each EXIF orientation, given the upright picture (the inverse of what
# ImageOps.exif_transpose applies when reading).
_STORE_FOR_ORIENTATION = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
                          3: Image.Transpose.ROTATE_180}


def render(sample: Sample) -> tuple[Image.Image, Image.Image]:
    """The upright photo and its 1-bit foreground mask."""
    ss = 1 if max(sample.size) > 2000 else SUPERSAMPLE
    rng = random.Random(sample.seed)
    cv = sample.build(rng, sample.size, ss)
    img, mask = cv.finish()
    if sample.grain:
        # Sensor noise covers subject and background alike.
        img = _add_grain(img, rng, sample.grain)
    if sample.mode != "RGB":
        img = img.convert(sample.mode)
    return img, mask


def write(sample: Sample, out_dir: Path, mask_dir: Path | None) -> Path:
    img, mask = render(sample)
    path = out_dir / sample.name
    stored = img
    if sample.exif_orientation != 1:
        stored = img.transpose(_STORE_FOR_ORIENTATION[sample.exif_orientation])
    if path.suffix == ".jpg":
        extra = {}
        if sample.exif_orientation != 1:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = sample.exif_orientation
            extra["exif"] = exif.tobytes()
        stored.save(path, "JPEG", quality=sample.quality, optimize=True, **extra)
    else:
        stored.save(path, "PNG", optimize=True)
    if mask_dir is not None:
        mask.save(mask_dir / f"{Path(sample.name).stem}.png", "PNG", optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the sample photos")
    parser.add_argument("--masks", type=Path, default=DEFAULT_MASK_DIR,
                        help="folder for the ground-truth masks (default: tests/data/masks)")
    parser.add_argument("--no-masks", action="store_true", help="write the photos only")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    mask_dir = None if args.no_masks else args.masks
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    for sample in SAMPLES:
        path = write(sample, args.out_dir, mask_dir)
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
