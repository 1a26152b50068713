"""Model-free background removal for product photos, built on Pillow alone."""

from __future__ import annotations

import math
import re
import statistics

from PIL import Image, ImageChops, ImageFilter, ImageOps

# The mask is computed at this long side at most; edges are then upscaled smoothly.
WORK_SIDE = 640
# Below this short side there is no border to learn a background from.
MIN_SIDE = 8
# Median fine-detail level of the border (0..255) above which the background is treated as
# a texture rather than a plain colour or gradient; sensor noise on plain studio shots is
# about 1-3.
TEXTURE_LEVEL = 4

# Width (px, odd) of the outline band where the edge is re-placed at half the local contrast.
RIM = 7
# Luminance range (0..255) in a 3x3 window above which a pixel is an edge, not a soft shadow.
EDGE = 12
_RUN = re.compile(rb"\xff+")
# Natural log scaled so 0..255 maps onto 0..255: differences of logs are brightness ratios.
_LOG_SCALE = 255 / math.log(256)
_LOG = [min(255, round(_LOG_SCALE * math.log(v + 1))) for v in range(256)]
# Edge alpha from a log-ratio (128 = distance equals the local peak): a linear ramp from a
# quarter of the peak (transparent) to three quarters (opaque).
_RATIO_TO_ALPHA = [
    max(0, min(255, round((math.exp((v - 128) / _LOG_SCALE) - 0.25) * 2 * 255)))
    for v in range(256)
]
# Smallest local subject/background contrast (0..255) worth matting an edge from.
MIN_PEAK = 24
# Samples per border strip for the background fit; smooth backgrounds need few.
STRIP_SAMPLES = 128


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, so pixels are stored the way the photo is viewed."""
    return ImageOps.exif_transpose(image)


def remove_background(image: Image.Image) -> Image.Image:
    """Return an RGBA copy of `image` with the background transparent and a feathered edge.

    Meant for product shots: a subject in front of a plain, gradient or (less reliably)
    textured background that makes up most of the image border; the subject may run off
    one side. Any mode and size; pixels keep their colours, only alpha is new. Neutral
    cast shadows count as background. Existing transparency is kept, and an image whose
    border is already transparent comes back unchanged. When no subject can be told apart
    (one flat colour, images under 8 px, a subject filling the frame) the image comes back
    fully opaque rather than blank. Not handled: fine hair or fur, glass, subjects sharing
    the background's colour along their outline, busy scenes without a dominant background.
    """
    rgb, alpha = _split(image)
    if alpha is not None and _border_transparent(alpha):
        return _join(rgb, alpha)
    if alpha is not None:
        # Paint see-through areas with the border colour so they read as background.
        rgb = Image.composite(rgb, Image.new("RGB", rgb.size, _border_colour(rgb, alpha)), alpha)
    w, h = rgb.size
    if min(w, h) < MIN_SIDE:
        return _join(rgb, alpha)
    scale = min(1.0, WORK_SIDE / max(w, h))
    work = rgb
    if scale < 1.0:
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        work = rgb.resize(size, Image.Resampling.BOX)
    mask, model = _cut(work)
    if mask is None:
        return _join(rgb, alpha)
    soft = _feather(mask, (w, h))
    if model is not None:
        soft = _matte_edge(rgb, work, soft, mask, model)
    return _join(rgb, soft if alpha is None else ImageChops.darker(soft, alpha))


# ---------------------------------------------------------------- image plumbing


def _split(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB pixels and the existing alpha channel (None when the image has none)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts premultiplied La to nothing else
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit, 32-bit and float greyscale: scale into 0..255 rather than clip.
        floats = image.mode == "F"
        image = image.convert("F")
        hi = image.getextrema()[1]
        if isinstance(hi, (int, float)):
            if floats and 0 < hi <= 1:
                gain = 255.0
            elif hi > 65535:
                gain = 255 / hi
            else:
                gain = 1 / 257 if hi > 255 else 1.0
            image = image.point(lambda v: v * gain)
        image = image.convert("L")
    if not has_alpha:
        return image.convert("RGB"), None
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    return rgba.convert("RGB"), (None if alpha.getextrema() == (255, 255) else alpha)


def _join(rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    out = rgb.convert("RGBA")
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _band_mask(size: tuple[int, int], band: int) -> Image.Image:
    """White frame `band` px wide around a black interior."""
    w, h = size
    m = Image.new("L", size, 255)
    if w > 2 * band and h > 2 * band:
        m.paste(0, (band, band, w - band, h - band))
    return m


def _border_transparent(alpha: Image.Image) -> bool:
    band = _band_mask(alpha.size, 1)
    hist = alpha.histogram(mask=band)
    total = sum(hist)
    return total > 0 and sum(hist[:16]) >= 0.9 * total


def _border_colour(rgb: Image.Image, alpha: Image.Image) -> tuple[int, int, int]:
    """Median colour of the opaque border pixels (grey if there are none)."""
    opaque = alpha.point(lambda v: 255 if v > 200 else 0)
    band = ImageChops.multiply(_band_mask(rgb.size, 1), opaque)
    if band.getbbox() is None:
        return (128, 128, 128)
    r, g, b = (_percentile(ch.histogram(mask=band), 0.5) for ch in rgb.split())
    return (r, g, b)


# ---------------------------------------------------------------- morphology


def _shift(img: Image.Image, dx: int, dy: int) -> Image.Image:
    """`img` moved by (dx, dy), uncovered pixels 0."""
    return img.crop((-dx, -dy, img.width - dx, img.height - dy))


def _max(img: Image.Image, size: int) -> Image.Image:
    """Square max filter of an L image, as two 1-D passes of shifted copies.

    Much faster than ImageFilter.MaxFilter, whose rank filter sorts every window.
    Pixels beyond the border count as 0.
    """
    r = size // 2
    out = img
    for d in range(1, r + 1):
        out = ImageChops.lighter(out, ImageChops.lighter(_shift(img, d, 0), _shift(img, -d, 0)))
    rows = out
    for d in range(1, r + 1):
        out = ImageChops.lighter(out, ImageChops.lighter(_shift(rows, 0, d), _shift(rows, 0, -d)))
    return out


def _min(img: Image.Image, size: int) -> Image.Image:
    """Square min filter of an L image; pixels beyond the border count as 255."""
    return ImageChops.invert(_max(ImageChops.invert(img), size))


# ---------------------------------------------------------------- statistics


def _rgb_pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    """Pixels of a small RGB image as tuples (getdata is deprecated in newer Pillow)."""
    data = img.tobytes()
    return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def _percentile(hist: list[int], q: float) -> int:
    total = sum(hist)
    if total == 0:
        return 0
    target = q * total
    acc = 0
    for value, count in enumerate(hist):
        acc += count
        if acc >= target:
            return value
    return len(hist) - 1


def _otsu(hist: list[int]) -> int:
    """Threshold maximising the between-class variance of a 256-bin histogram."""
    total = sum(hist)
    if total == 0:
        return 128
    sum_all = sum(i * c for i, c in enumerate(hist))
    best, best_t = -1.0, 128
    w0 = 0
    sum0 = 0
    for t, c in enumerate(hist):
        w0 += c
        if w0 == 0:
            continue
        w1 = total - w0
        if w1 == 0:
            break
        sum0 += t * c
        m0 = sum0 / w0
        m1 = (sum_all - sum0) / w1
        between = w0 * w1 * (m0 - m1) ** 2
        if between > best:
            best, best_t = between, t
    return best_t


# ---------------------------------------------------------------- background model


def _smooth_strip(pixels: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Running median along a border strip: rejects short intrusions and noise."""
    n = len(pixels)
    k = max(1, n // 16)
    out = []
    for i in range(n):
        window = pixels[max(0, i - k): i + k + 1]
        r, g, b = (int(statistics.median(p[c] for p in window)) for c in range(3))
        out.append((r, g, b))
    return out


def _fit_quadratic(ts: list[float], ys: list[int], keep: list[int]) -> tuple[float, float, float]:
    """Least-squares y = a + b t + c t^2 over the `keep` indices (a constant if too few)."""
    m = [[0.0] * 4 for _ in range(3)]  # augmented normal equations
    for i in keep:
        t = ts[i]
        basis = (1.0, t, t * t)
        for r in range(3):
            for c in range(3):
                m[r][c] += basis[r] * basis[c]
            m[r][3] += basis[r] * ys[i]
    for col in range(3):  # Gauss-Jordan with partial pivoting
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-9:
            mean = sum(ys[i] for i in keep) / len(keep) if keep else 0.0
            return (mean, 0.0, 0.0)
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(3):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, 4):
                    m[r][c] -= f * m[col][c]
    return (m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2])


def _robust_strip(pixels: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Replace the part of a border strip that a subject covers by a fit through the rest.

    A quadratic per channel (enough for gradients and light falloff) is fitted to the
    best-matching 60 % of the samples, repeatedly; samples far from the final fit are the
    subject (or its shadow) reaching the border and take the fitted value.
    """
    n = len(pixels)
    if n < 8:
        return pixels
    ts = [2 * i / (n - 1) - 1 for i in range(n)]
    chans = [[p[c] for p in pixels] for c in range(3)]
    # Start from the samples nearest the median colour, which is background as long as
    # the subject covers less than half of this side.
    med = [statistics.median(ys) for ys in chans]
    res: list[float] = [max(abs(p[c] - med[c]) for c in range(3)) for p in pixels]
    cut = max(sorted(res)[int(0.6 * n)], 8)
    keep = [i for i in range(n) if res[i] <= cut]
    fitted: list[tuple[int, int, int]] = []
    for _ in range(4):
        coef = [_fit_quadratic(ts, ys, keep) for ys in chans]
        fitted = [(_clip(coef[0][0] + coef[0][1] * t + coef[0][2] * t * t),
                   _clip(coef[1][0] + coef[1][1] * t + coef[1][2] * t * t),
                   _clip(coef[2][0] + coef[2][1] * t + coef[2][2] * t * t)) for t in ts]
        res = [max(abs(a - b) for a, b in zip(p, f, strict=True))
               for p, f in zip(pixels, fitted, strict=True)]
        cut = max(sorted(res)[int(0.6 * n)], 8)
        keep = [i for i in range(n) if res[i] <= cut]
    limit = max(10.0, 3 * statistics.median(res))
    return [p if r <= limit else f for p, f, r in zip(pixels, fitted, res, strict=True)]


def _strip(img: Image.Image, box: tuple[int, int, int, int], length: int,
           vertical: bool) -> Image.Image:
    """Border band `box` averaged across its thickness, robustly smoothed along its length."""
    n = min(length, STRIP_SAMPLES)
    size = (1, n) if vertical else (n, 1)
    line = img.crop(box).resize(size, Image.Resampling.BOX)
    out = Image.new("RGB", size)
    out.putdata(_smooth_strip(_robust_strip(_rgb_pixels(line))))
    return out.resize((1, length) if vertical else (length, 1), Image.Resampling.BILINEAR)


def _signed_add(a: Image.Image, b: Image.Image, c: Image.Image) -> Image.Image:
    """a + b - c, clipped to 0..255, without 8-bit overflow in between."""
    up = ImageChops.subtract(b, c)
    down = ImageChops.subtract(c, b)
    return ImageChops.subtract(ImageChops.add(a, up), down)


def background_model(img: Image.Image, band: int) -> Image.Image:
    """Coons patch through the four border strips: exact for linear gradients, smooth otherwise."""
    w, h = img.size
    left = _strip(img, (0, 0, band, h), h, True).resize((w, h), Image.Resampling.BILINEAR)
    right = _strip(img, (w - band, 0, w, h), h, True).resize((w, h), Image.Resampling.BILINEAR)
    top = _strip(img, (0, 0, w, band), w, False).resize((w, h), Image.Resampling.BILINEAR)
    bottom = _strip(img, (0, h - band, w, h), w, False).resize((w, h), Image.Resampling.BILINEAR)
    ramp = Image.linear_gradient("L")
    v = ramp.resize((w, h), Image.Resampling.BILINEAR)
    u = ramp.transpose(Image.Transpose.TRANSPOSE).resize((w, h), Image.Resampling.BILINEAR)
    lr = Image.composite(right, left, u)
    tb = Image.composite(bottom, top, v)

    def corner(x: int, y: int) -> Image.Image:
        return Image.new("RGB", (w, h), (left if x == 0 else right).getpixel((x, y)))

    corners = Image.composite(
        Image.composite(corner(w - 1, h - 1), corner(0, h - 1), u),
        Image.composite(corner(w - 1, 0), corner(0, 0), u),
        v,
    )
    return _signed_add(lr, tb, corners)


def _distance(a: Image.Image, b: Image.Image) -> Image.Image:
    """Per-pixel max-channel colour difference as an L image."""
    r, g, bl = ImageChops.difference(a, b).split()
    return ImageChops.lighter(ImageChops.lighter(r, g), bl)


def _shadow_like(img: Image.Image, model: Image.Image, smooth_only: bool) -> Image.Image:
    """255 where `img` is the background model darkened evenly in all channels (a shadow).

    In log space a shadow shifts every channel by the same amount, so the spread of the
    per-channel log ratios is small while their level is below zero. With `smooth_only`
    pixels on sharp luminance edges are excluded, since shadows fade in softly and object
    outlines do not; a dark subject of the background's hue then keeps its outline, and the
    hole filling restores its inside.
    """
    diff = ImageChops.subtract(img.point(_LOG * 3), model.point(_LOG * 3), 1.0, 128)
    r, g, b = diff.split()
    hi = ImageChops.lighter(ImageChops.lighter(r, g), b)
    lo = ImageChops.darker(ImageChops.darker(r, g), b)
    even = ImageChops.subtract(hi, lo).point(lambda v: 255 if v <= 5 else 0)
    # Darker than the background, but not by more than a factor of about 3.
    darker = hi.point(lambda v: 255 if v <= 127 else 0)
    floor = 128 + round(_LOG_SCALE * math.log(0.33))
    not_black = lo.point(lambda v: 255 if v >= floor else 0)
    out = ImageChops.multiply(ImageChops.multiply(even, darker), not_black)
    if smooth_only:
        # Extra smoothing keeps sensor noise from reading as edges inside the shadow.
        luma = img.convert("L").filter(ImageFilter.GaussianBlur(1))
        edge = ImageChops.subtract(_max(luma, 3), _min(luma, 3))
        out = ImageChops.multiply(out, edge.point(lambda v: 255 if v <= EDGE else 0))
    # Majority vote: isolated misses inside a shadow would otherwise stay as specks.
    out = out.filter(ImageFilter.BoxBlur(1)).point(lambda v: 255 if v >= 128 else 0)
    return out


def _colour_background(img: Image.Image, known: Image.Image, reach: int) -> Image.Image:
    """255 where a pixel's colour is close to one that is common in the `known` background.

    The image is quantised to a small adaptive palette. An entry that is not rare among the
    known background pixels (and not much rarer there than in the whole picture, which
    would make it the subject's) is a background colour, and so is any entry within `reach`
    (max channel difference) of one: that absorbs shading and blotches of the texture.
    """
    q = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    idx = Image.frombytes("L", q.size, q.tobytes())
    palette = q.getpalette() or []
    colours = [tuple(palette[3 * i: 3 * i + 3]) for i in range(len(palette) // 3)]
    h_border = idx.histogram(mask=known)
    h_all = idx.histogram()
    n_border, n_all = sum(h_border), sum(h_all)
    core = [i for i in range(min(256, len(colours)))
            if h_border[i] >= 0.002 * n_border
            and h_border[i] / n_border >= 0.25 * h_all[i] / n_all]
    lut = []
    for i in range(256):
        near = i < len(colours) and any(
            max(abs(a - b) for a, b in zip(colours[i], colours[j], strict=True)) <= reach
            for j in core)
        lut.append(255 if near else 0)
    return idx.point(lut)


# ---------------------------------------------------------------- connected components


class _Components:
    """4-connected components of the 255-pixels of an L image, labelled run by run."""

    def __init__(self, mask: Image.Image) -> None:
        w, h = mask.size
        self.size = (w, h)
        data = mask.tobytes()
        parent: list[int] = []
        runs: list[tuple[int, int, int]] = []

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        prev: list[tuple[int, int, int]] = []
        for y in range(h):
            cur = []
            for m in _RUN.finditer(data, y * w, (y + 1) * w):
                x0, x1 = m.start() - y * w, m.end() - y * w
                i = len(runs)
                parent.append(i)
                runs.append((y, x0, x1))
                cur.append((x0, x1, i))
            a = b = 0
            while a < len(prev) and b < len(cur):
                px0, px1, pi = prev[a]
                cx0, cx1, ci = cur[b]
                if px0 < cx1 and cx0 < px1:
                    ra, rb = find(pi), find(ci)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
                if px1 < cx1:
                    a += 1
                else:
                    b += 1
            prev = cur
        self.runs = runs
        self.label = [find(i) for i in range(len(runs))]
        self.area: dict[int, int] = {}
        self.touches_border: dict[int, bool] = {}
        for (y, x0, x1), lab in zip(runs, self.label, strict=True):
            self.area[lab] = self.area.get(lab, 0) + x1 - x0
            edge = y == 0 or y == h - 1 or x0 == 0 or x1 == w
            self.touches_border[lab] = self.touches_border.get(lab, False) or edge

    def count_in(self, other: Image.Image) -> dict[int, int]:
        """Per component, how many of its pixels are 255 in `other`."""
        w = self.size[0]
        data = other.tobytes()
        counts: dict[int, int] = {}
        for (y, x0, x1), lab in zip(self.runs, self.label, strict=True):
            counts[lab] = counts.get(lab, 0) + data.count(b"\xff", y * w + x0, y * w + x1)
        return counts

    def render(self, keep: set[int]) -> Image.Image:
        w, h = self.size
        out = bytearray(w * h)
        for (y, x0, x1), lab in zip(self.runs, self.label, strict=True):
            if lab in keep:
                out[y * w + x0: y * w + x1] = b"\xff" * (x1 - x0)
        return Image.frombytes("L", self.size, bytes(out))


# ---------------------------------------------------------------- the mask


def _binary(img: Image.Image, threshold: int) -> Image.Image:
    return img.point(lambda v: 255 if v > threshold else 0)


def _open_close(mask: Image.Image) -> Image.Image:
    """Drop 1-px specks, then bridge 1-px gaps in outlines."""
    m = _max(_min(mask, 3), 3)
    return _min(_max(m, 3), 3)


def _dilate(mask: Image.Image, radius: float) -> Image.Image:
    """Grow a 0/255 mask by about `radius` px (blur and a low threshold: cheap at any radius)."""
    return mask.filter(ImageFilter.GaussianBlur(radius / 2)).point(lambda v: 255 if v > 6 else 0)


def filled_model(img: Image.Image, known: Image.Image, cell: int) -> Image.Image | None:
    """Smooth background estimate from the `known` (255) pixels, interpolated under the rest.

    Cells of the grid average their known pixels; cells without enough of them are filled
    from their neighbours and relaxed towards a smooth surface, then the grid is upscaled.
    """
    w, h = img.size
    gw, gh = max(2, round(w / cell)), max(2, round(h / cell))
    weight = known.resize((gw, gh), Image.Resampling.BOX).tobytes()
    premult = ImageChops.multiply(img, Image.merge("RGB", (known, known, known)))
    sums = _rgb_pixels(premult.resize((gw, gh), Image.Resampling.BOX))
    # Cells at least a quarter background get that background's mean colour.
    grid: list[tuple[float, float, float]] = [
        (s[0] * 255 / k, s[1] * 255 / k, s[2] * 255 / k) if k >= 64 else (0.0, 0.0, 0.0)
        for s, k in zip(sums, weight, strict=True)]
    unknown = [i for i, k in enumerate(weight) if k < 64]
    if len(unknown) == len(grid):
        return None

    def neighbours(i: int) -> list[int]:
        x, y = i % gw, i // gw
        return [(y + dy) * gw + x + dx for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= x + dx < gw and 0 <= y + dy < gh]

    def mean(cells: list[int]) -> tuple[float, float, float]:
        n = len(cells)
        return (sum(grid[j][0] for j in cells) / n, sum(grid[j][1] for j in cells) / n,
                sum(grid[j][2] for j in cells) / n)

    todo = set(unknown)
    while todo:  # grow inwards from the known cells
        ready = {}
        for i in todo:
            valued = [j for j in neighbours(i) if j not in todo]
            if valued:
                ready[i] = mean(valued)
        for i, v in ready.items():
            grid[i] = v
        todo -= ready.keys()
    for _ in range(12):  # relax the filled cells into a smooth membrane
        for i in unknown:
            grid[i] = mean(neighbours(i))
    small = Image.new("RGB", (gw, gh))
    small.putdata([(_clip(r), _clip(g), _clip(b)) for r, g, b in grid])
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _clip(v: float) -> int:
    return 0 if v < 0 else 255 if v > 255 else int(v + 0.5)


def _outside(fg: Image.Image) -> Image.Image:
    """Background reachable from the image border through gaps at least 3 px wide.

    Narrower channels do not count: a one-pixel seam of background colour (a highlight
    along a can) must not connect the inside of a subject to the outside.
    """
    bg = ImageChops.invert(fg)
    core = _max(_min(bg, 3), 3)
    comps = _Components(core)
    reach = comps.render({lab for lab, edge in comps.touches_border.items() if edge})
    # The opening shaved the outline by a pixel; give that back.
    return ImageChops.multiply(bg, _max(reach, 3))


def _remove_shadows(fg: Image.Image, shadow: Image.Image) -> Image.Image:
    """Drop the shadow-like parts of `fg`, except those walled in by the subject.

    A cast shadow borders the open background along much of its edge. A shaded part of
    the subject that merely looks like darkened background (a grey sole in a greyscale
    photo) is bordered mostly by the subject itself, so it is kept.
    """
    removed = ImageChops.multiply(fg, shadow)
    if removed.getbbox() is None:
        return fg
    kept = ImageChops.subtract(fg, removed)
    parts = _Components(removed)
    touch_bg = parts.count_in(_max(ImageChops.invert(fg), 3))
    touch_fg = parts.count_in(_max(kept, 3))
    walled = {lab for lab in parts.area if touch_fg[lab] > 2 * touch_bg[lab]}
    return ImageChops.lighter(kept, parts.render(walled)) if walled else kept


def _segment(img: Image.Image, smooth: Image.Image, model: Image.Image, known: Image.Image,
             textured: bool, blurred: Image.Image | None,
             blurred_model: Image.Image | None, mean_cue: bool) -> Image.Image | None:
    """Subject mask given background models and a mask of pixels known to be background.

    `mean_cue` compares the blurred image with `blurred_model`; only worth it once that
    model has been learnt from the whole background, not from the border alone.
    """
    w, h = img.size
    area = w * h
    faint: Image.Image | None = None
    if not textured or blurred is None or blurred_model is None:
        fg, strict_bg, faint = _plain_foreground(smooth, model, known)
    else:
        fg, strict_bg = _textured_foreground(img, known, blurred, blurred_model, mean_cue)
    if fg.getbbox() is None:
        return None
    fg = _open_holes(_main_parts(fg, area), strict_bg, faint)
    fg_area = fg.histogram()[255]
    if fg_area < 0.001 * area or fg_area > 0.98 * area:
        return None
    return fg


def _plain_foreground(smooth: Image.Image, model: Image.Image, known: Image.Image
                      ) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Foreground on a plain background: (mask, strictly background, faint contrast)."""
    dist = _distance(smooth, model)
    noise = _percentile(dist.histogram(mask=known), 0.99)
    # A low threshold finds faint parts of the subject. Shadows are cut after the
    # cleanup, which would otherwise erase the thin outline that separates a dark
    # subject's inside from its shadow.
    threshold = max(2 * noise + 4, min(_otsu(dist.histogram()), 2 * noise + 6))
    fg = _open_close(_binary(dist, threshold))
    fg = _remove_shadows(fg, _shadow_like(smooth, model, smooth_only=True))
    # The edge is placed where the contrast reaches half its local peak, as on an
    # anti-aliased edge; this also trims what is left of a shadow at the outline.
    # Only the outer outline: trimming around inner details would widen them into gaps.
    rim = ImageChops.multiply(fg, _max(_outside(fg), RIM))
    half_peak = _max(dist, RIM).point(lambda v: v // 2)
    faint = ImageChops.subtract(half_peak, dist).point(lambda v: 255 if v > 0 else 0)
    fg = ImageChops.subtract(fg, ImageChops.multiply(rim, faint))
    strict_bg = dist.point(lambda v: 255 if v <= noise + 2 else 0)
    return fg, strict_bg, faint


def _textured_foreground(img: Image.Image, known: Image.Image, blurred: Image.Image,
                         blurred_model: Image.Image, mean_cue: bool
                         ) -> tuple[Image.Image, Image.Image]:
    """Foreground on a textured background: (mask, strictly background)."""
    coarse = img.filter(ImageFilter.GaussianBlur(2))
    novel = ImageChops.invert(_colour_background(coarse, known, 24))
    # The texture averaged out: a subject whose colours all occur somewhere in the
    # texture (terracotta on wood) still differs from the texture's mean colour.
    if mean_cue:
        mean_dist = _distance(blurred, blurred_model)
        mean_noise = _percentile(mean_dist.histogram(mask=known), 0.99)
        far = _binary(mean_dist, mean_noise + 6)
        # The blur spreads a contrasty subject outwards; pull that back.
        far = ImageChops.invert(_dilate(ImageChops.invert(far), 10))
        novel = ImageChops.lighter(novel, far)
    # Shadows are judged on the lightly blurred image: heavy blurring would mix a dark
    # thin part (a handle) with the texture around it into something shadow-like.
    evidence = ImageChops.subtract(novel, _shadow_like(coarse, blurred_model,
                                                       smooth_only=False))
    # A majority vote over a neighbourhood: texture pixels that happen to have an
    # unusual colour are outvoted by the background around them.
    vote = evidence.filter(ImageFilter.BoxBlur(2))
    fg = _open_close(vote.point(lambda v: 255 if v >= 128 else 0))
    strict_bg = vote.point(lambda v: 255 if v < 25 else 0)
    return fg, strict_bg


def _main_parts(fg: Image.Image, area: int) -> Image.Image:
    """Keep the largest part and those not much smaller; specks are dropped."""
    comps = _Components(fg)
    largest = max(comps.area.values())
    keep = {lab for lab, a in comps.area.items()
            if a >= max(0.05 * largest, 0.0005 * area)}
    return comps.render(keep)


def _open_holes(fg: Image.Image, strict_bg: Image.Image, faint: Image.Image | None
                ) -> Image.Image:
    """Fill the mask's enclosed regions, except those that are see-through holes."""
    w, h = fg.size
    area = w * h
    # Enclosed background-coloured regions are see-through holes (a mug handle) if they are
    # sizeable and match the background closely; otherwise they are parts of the subject
    # that happen to resemble the background (a white label) and get filled.
    # Bleed-through next to the outline (a band of background colour across a can) is
    # not a hole: a real one is walled off from the outside by solid subject.
    outside = _outside(fg)
    holes = _Components(ImageChops.subtract(ImageChops.invert(fg), outside))
    near_outside = _dilate(outside, max(2, round(0.012 * min(w, h))))
    strict = holes.count_in(strict_bg)
    near = holes.count_in(near_outside)
    see_through = {lab for lab, a in holes.area.items()
                   if a >= 0.002 * area and strict[lab] >= 0.85 * a and near[lab] <= 0.02 * a}
    see = holes.render(see_through)
    fg = ImageChops.invert(ImageChops.lighter(outside, see))
    if faint is not None and see_through:
        rim = ImageChops.multiply(fg, _max(see, RIM))
        fg = ImageChops.subtract(fg, ImageChops.multiply(rim, faint))
    return fg


def foreground_mask(img: Image.Image) -> Image.Image | None:
    """Binary (0/255) subject mask of an RGB image, or None when there is no clear subject."""
    return _cut(img)[0]


def _cut(img: Image.Image) -> tuple[Image.Image | None, Image.Image | None]:
    """Subject mask and, for plain or gradient backgrounds, the background model.

    A first pass models the background from the image border only; a second pass re-models
    it from every pixel the first pass called background (well clear of the subject), which
    captures radial light falloff and blotchy textures the border alone cannot show.
    """
    w, h = img.size
    bandw = max(2, round(0.02 * min(w, h)))
    band = _band_mask(img.size, bandw)
    smooth = img.filter(ImageFilter.GaussianBlur(1))
    model = background_model(smooth, bandw)
    # Border pixels far off the model are a subject (or shadow) reaching the edge: they
    # must not count as background noise or texture.
    dist = _distance(smooth, model)
    typical = _percentile(dist.histogram(mask=band), 0.5)
    band = ImageChops.multiply(band, dist.point(lambda v: 255 if v <= max(24, 4 * typical) else 0))
    # Texture is fine detail: the typical difference between the border and a slightly
    # blurred copy of it. Light falloff and shadows are smooth and do not count.
    detail = _distance(img, img.filter(ImageFilter.GaussianBlur(2)))
    textured = _percentile(detail.histogram(mask=band), 0.5) > TEXTURE_LEVEL
    blurred = img.filter(ImageFilter.GaussianBlur(6)) if textured else None
    blurred_model = background_model(blurred, bandw) if blurred is not None else None
    first = _segment(img, smooth, model, band, textured, blurred, blurred_model, False)
    if first is None:
        return None, None

    # Close the first silhouette generously before growing it: a part of the subject the
    # first pass missed (the middle of a pot on wood) must not teach the model its colours.
    reach = 0.08 * min(w, h) if textured else 0.02 * min(w, h)
    closed = ImageChops.invert(_dilate(ImageChops.invert(_dilate(first, reach)), reach))
    known = ImageChops.invert(_dilate(closed, 0.04 * min(w, h)))
    cell = max(4, round(max(w, h) / 40))
    model2 = filled_model(smooth, known, cell) if known.histogram()[255] >= 0.1 * w * h else None
    if model2 is None:
        return first, None if textured else model
    blurred_model2 = filled_model(blurred, known, cell) if blurred is not None else None
    second = _segment(img, smooth, model2, known, textured, blurred, blurred_model2, True)
    if second is None:
        return first, None if textured else model
    return second, None if textured else model2


def _matte_edge(rgb: Image.Image, work: Image.Image, soft: Image.Image, mask: Image.Image,
                model: Image.Image) -> Image.Image:
    """Re-derive alpha along the outline at full resolution from colour contrast.

    On a plain background an edge pixel mixing subject and background has a colour distance
    from the background proportional to its coverage, so alpha follows distance / local peak
    (with the bottom quarter cut, which also drops the faint shadow along the outline). This
    restores crisp anti-aliased edges that the work-size mask alone would blur when upscaled.
    """
    work_peak = _max(_distance(work.filter(ImageFilter.GaussianBlur(1)), model), 5)
    band = ImageChops.subtract(_max(mask, 3), _min(mask, 3))
    # Where the subject barely differs from the background the ratio is mostly noise.
    band = ImageChops.multiply(band, work_peak.point(lambda v: 255 if v >= MIN_PEAK else 0))
    bbox = band.getbbox()
    if bbox is None:
        return soft
    # Only the outline's bounding box is worked on at full resolution; `box` makes each
    # work-size map resample exactly as a full-size resize followed by a crop would.
    sx, sy = rgb.width / work.width, rgb.height / work.height
    x0, y0 = max(0, math.floor((bbox[0] - 1) * sx)), max(0, math.floor((bbox[1] - 1) * sy))
    x1 = min(rgb.width, math.ceil((bbox[2] + 1) * sx))
    y1 = min(rgb.height, math.ceil((bbox[3] + 1) * sy))
    box = (x0, y0, x1, y1)
    src = (x0 / sx, y0 / sy, x1 / sx, y1 / sy)
    size = (x1 - x0, y1 - y0)
    full = rgb.crop(box).filter(ImageFilter.GaussianBlur(0.6))
    full_model = model.resize(size, Image.Resampling.BICUBIC, box=src)
    dist = _distance(full, full_model)
    # A soft-edged band, so the switch between the two alphas leaves no steps.
    band = band.resize(size, Image.Resampling.BILINEAR, box=src).point(lambda v: min(255, 2 * v))
    peak = work_peak.resize(size, Image.Resampling.BILINEAR, box=src)
    ratio = ImageChops.subtract(dist.point(_LOG), peak.point(_LOG), 1.0, 128)
    ramp = ImageChops.subtract(ratio.point(_RATIO_TO_ALPHA),
                               _shadow_like(full, full_model, smooth_only=False))
    out = soft.copy()
    out.paste(Image.composite(ramp, soft.crop(box), band), box[:2])
    return out


def _feather(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Upscale a binary work-size mask to `size` with a soft edge."""
    soft = mask.filter(ImageFilter.GaussianBlur(0.6 if mask.size == size else 1.0))
    if soft.size != size:
        soft = soft.resize(size, Image.Resampling.BICUBIC)
    # Steepen the ramp so the feather stays narrow.
    return soft.point(lambda v: max(0, min(255, (v - 128) * 2 + 128)))
