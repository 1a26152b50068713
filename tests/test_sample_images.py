"""The committed sample_images/ folder: what it must contain, and that the generator rebuilds it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
MASKS = Path(__file__).resolve().parent / "data" / "masks"
GENERATOR = ROOT / "scripts" / "make_sample_images.py"
EXIF_ORIENTATION = 0x0112


def sample_paths() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.is_file())


def test_ten_to_twelve_images_in_jpeg_and_png() -> None:
    paths = sample_paths()
    assert 10 <= len(paths) <= 12
    formats = set()
    for path in paths:
        with Image.open(path) as im:
            formats.add(im.format)
    assert formats == {"JPEG", "PNG"}


def test_one_image_carries_an_exif_rotation() -> None:
    rotated = []
    for path in sample_paths():
        with Image.open(path) as im:
            if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
                rotated.append(path.name)
                # Stored sideways: applying the tag turns it upright (portrait).
                assert ImageOps.exif_transpose(im).size == im.size[::-1]
    assert len(rotated) >= 1


def test_one_large_image_under_two_megabytes() -> None:
    large = []
    for path in sample_paths():
        with Image.open(path) as im:
            if max(im.size) >= 3800:
                large.append(path)
    assert large
    assert all(p.stat().st_size < 2 * 1024 * 1024 for p in large)


def test_folder_under_five_megabytes() -> None:
    assert sum(p.stat().st_size for p in sample_paths()) < 5 * 1024 * 1024


def test_every_sample_has_a_mask_of_its_upright_size() -> None:
    for path in sample_paths():
        with Image.open(path) as im, Image.open(MASKS / f"{path.stem}.png") as mask:
            assert ImageOps.exif_transpose(im).size == mask.size
            assert mask.mode in ("1", "L")
            lo, hi = mask.convert("L").getextrema()
            assert (lo, hi) == (0, 255)  # both subject and background present


@pytest.mark.slow
def test_generator_reproduces_the_committed_files(tmp_path: Path) -> None:
    out, masks = tmp_path / "samples", tmp_path / "masks"
    subprocess.run([sys.executable, str(GENERATOR), str(out), "--masks", str(masks)],
                   check=True, capture_output=True, timeout=120)
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in sample_paths()]
    for path in sample_paths():
        for new, old in ((out / path.name, path),
                         (masks / f"{path.stem}.png", MASKS / f"{path.stem}.png")):
            with Image.open(new) as a, Image.open(old) as b:
                assert a.size == b.size and a.mode == b.mode, new.name
                assert a.tobytes() == b.tobytes(), f"{new.name} pixels differ"
                assert a.getexif().get(EXIF_ORIENTATION) == b.getexif().get(EXIF_ORIENTATION)
