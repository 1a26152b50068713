"""Small real images for tests, made with Pillow."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def png_bytes(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    img = Image.new("RGB", size, (240, 240 - seed % 200, 230))
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 6, 8 + 10 + seed % 20, 26), fill=(30 + seed % 200, 60, 120))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 40)) -> bytes:
    img = Image.open(io.BytesIO(png_bytes(seed, size))).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_images(folder: Path, n: int, *, start: int = 0, sub: str | None = None) -> list[Path]:
    """n distinct PNGs in folder (or folder/sub)."""
    target = folder / sub if sub else folder
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = target / f"img_{i:03d}.png"
        path.write_bytes(png_bytes(i))
        paths.append(path)
    return paths


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False
