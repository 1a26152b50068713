"""Small real images for tests, made with Pillow."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw


def png_bytes(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small PNG drawn from `seed`; its corner pixel encodes the seed, so no two collide."""
    img = Image.new("RGB", size, (240, 240 - seed % 200, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 6, 8 + 10 + seed % 20, 26), fill=(30 + seed % 200, 60, 120))
    img.putpixel((0, 0), (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 40)) -> bytes:
    img = Image.open(io.BytesIO(png_bytes(seed, size))).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_images(folder: Path, count: int | Sequence[str], *, start: int = 0,
                sub: str | None = None, size: tuple[int, int] = (48, 32)) -> list[Path]:
    """A folder of distinct PNGs: `count` of them named img_000.png, img_001.png, ... (numbered
    from `start`), or one per stem in `count`; in folder/sub if given.

    Returns the paths, in order.
    """
    target = folder / sub if sub else folder
    target.mkdir(parents=True, exist_ok=True)
    if isinstance(count, int):
        stems = [f"img_{i:03d}" for i in range(start, start + count)]
    else:
        stems = list(count)
    paths = []
    for seed, stem in enumerate(stems, start=start):
        path = target / f"{stem}.png"
        path.write_bytes(png_bytes(seed, size))
        paths.append(path)
    return paths


def decodes(image: Path | bytes) -> bool:
    """Whether Pillow reads the whole image (a file, or its bytes) without an error."""
    try:
        with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as im:
            im.load()
        return True
    except Exception:
        return False
