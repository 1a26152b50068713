"""Background removal scored against the sample photos' ground-truth masks, plus edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw

from rpq.local.removebg import foreground_mask, remove_background, upright

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
MASKS = Path(__file__).resolve().parent / "data" / "masks"

# Plain and gradient backgrounds must reach 0.9 (measured: 0.95-1.00). Textured ones are
# best effort; measured: box_noise 0.97, kettle_fabric 0.96, vase_checker 0.99,
# plant_wood 0.90 (the terracotta pot shares colours with the wood), so the bar is 0.85.
PLAIN_OR_GRADIENT = [
    "mug_plain.jpg",
    "ball_plain.png",
    "watch_plain_exif6.jpg",
    "bottle_gradient.png",
    "sneaker_gradient.jpg",
    "can_gradient_gray.png",
    "backpack_gradient_large.jpg",
]
TEXTURED = ["box_noise.jpg", "plant_wood.png", "vase_checker.png", "kettle_fabric.jpg"]
TEXTURED_BAR = 0.85

_cache: dict[str, tuple[Image.Image, Image.Image]] = {}


def cut(name: str) -> tuple[Image.Image, Image.Image]:
    """(upright input, cut-out) for a sample, computed once per session."""
    if name not in _cache:
        with Image.open(SAMPLES / name) as opened:
            image = upright(opened)
            image.load()
        _cache[name] = (image, remove_background(image))
    return _cache[name]


def mask_for(name: str) -> Image.Image:
    with Image.open(MASKS / f"{Path(name).stem}.png") as m:
        return m.convert("L")


def iou(alpha: Image.Image, mask: Image.Image) -> float:
    """Intersection over union of (alpha > 128) and the ground-truth mask."""
    solid = alpha.point(lambda v: 255 if v > 128 else 0)
    if solid.size != mask.size:
        solid = solid.resize(mask.size, Image.Resampling.NEAREST)
    inter = ImageChops.multiply(solid, mask).histogram()[255]
    union = ImageChops.lighter(solid, mask).histogram()[255]
    return inter / union if union else 1.0


def scene(size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A red disc with a dark outline on a light grey studio background."""
    im = Image.new("RGB", size, (228, 226, 222))
    w, h = size
    ImageDraw.Draw(im).ellipse((w * 0.3, h * 0.25, w * 0.7, h * 0.75), fill=(190, 40, 44),
                               outline=(60, 20, 20), width=2)
    return im


def test_every_sample_has_a_mask() -> None:
    names = sorted(p.name for p in SAMPLES.iterdir())
    assert sorted(PLAIN_OR_GRADIENT + TEXTURED) == names


@pytest.mark.parametrize("name", PLAIN_OR_GRADIENT)
def test_plain_and_gradient_backgrounds_are_cut_cleanly(name: str) -> None:
    image, out = cut(name)
    assert out.mode == "RGBA"
    assert out.size == image.size
    assert iou(out.getchannel("A"), mask_for(name)) >= 0.9


@pytest.mark.parametrize("name", TEXTURED)
def test_textured_backgrounds_reach_the_stated_bar(name: str) -> None:
    image, out = cut(name)
    assert out.mode == "RGBA"
    assert out.size == image.size
    assert iou(out.getchannel("A"), mask_for(name)) >= TEXTURED_BAR


def test_exif_orientation_is_applied_before_cutting() -> None:
    with Image.open(SAMPLES / "watch_plain_exif6.jpg") as raw:
        stored_size = raw.size
    image, out = cut("watch_plain_exif6.jpg")
    assert image.size == stored_size[::-1]
    assert out.size == mask_for("watch_plain_exif6.jpg").size


def test_large_image_keeps_its_size() -> None:
    # Its speed is a figure in `make bench` (scenario 6), not an assert here.
    image, out = cut("backpack_gradient_large.jpg")
    assert max(image.size) >= 3800
    assert out.size == image.size


def test_edge_is_soft_but_narrow() -> None:
    _, out = cut("mug_plain.jpg")
    hist = out.getchannel("A").histogram()
    partial = sum(hist[1:255])
    assert partial > 200  # anti-aliased, not a hard cut
    assert partial < 0.05 * (out.width * out.height)


def test_subject_touching_the_border_is_kept() -> None:
    image, _ = cut("mug_plain.jpg")
    box = (150, 100, 700, 420)  # the mug runs off the bottom edge
    out = remove_background(image.crop(box))
    assert iou(out.getchannel("A"), mask_for("mug_plain.jpg").crop(box)) >= 0.9


@pytest.mark.parametrize(
    "mode", ["L", "LA", "La", "P", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "1",
             "I;16", "I;16B", "I", "F"])
def test_any_mode_gives_rgba_of_the_same_size(mode: str) -> None:
    base = scene()
    if mode.startswith("I") or mode == "F":
        image = base.convert("L").convert(mode)
    elif mode in ("La", "PA", "LAB", "HSV"):
        image = Image.new(mode, base.size)
    else:
        image = base.convert(mode)
    out = remove_background(image)
    assert out.mode == "RGBA"
    assert out.size == base.size


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_simple_scene_is_cut_in_common_modes(mode: str) -> None:
    base = scene((200, 150))
    alpha = remove_background(base.convert(mode)).getchannel("A")
    assert alpha.getpixel((100, 75)) == 255  # the disc
    assert alpha.getpixel((5, 5)) == 0  # the background
    assert alpha.getpixel((195, 145)) == 0


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 7), (7, 1), (3, 5), (7, 7), (1, 300)])
def test_tiny_images_come_back_opaque(size: tuple[int, int]) -> None:
    out = remove_background(Image.new("RGB", size, (10, 200, 30)))
    assert out.mode == "RGBA"
    assert out.size == size
    assert out.getchannel("A").getextrema() == (255, 255)


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (12, 200, 40)])
def test_one_colour_images_come_back_fully_opaque(colour: tuple[int, int, int]) -> None:
    # Nothing can be told apart from the background: keep the pixels rather than blank them.
    image = Image.new("RGB", (64, 48), colour)
    assert foreground_mask(image) is None
    out = remove_background(image)
    assert out.getchannel("A").getextrema() == (255, 255)
    assert out.convert("RGB").tobytes() == image.tobytes()


def test_already_cut_out_image_is_returned_unchanged() -> None:
    image = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((30, 20, 70, 60), fill=(200, 30, 30, 255))
    assert remove_background(image).tobytes() == image.tobytes()


def test_existing_transparency_is_kept() -> None:
    image = scene((200, 150)).convert("RGBA")
    ImageDraw.Draw(image).rectangle((90, 65, 110, 85), fill=(0, 0, 0, 0))  # hole in the disc
    alpha = remove_background(image).getchannel("A")
    assert alpha.getpixel((100, 75)) == 0  # the existing hole
    assert alpha.getpixel((75, 75)) == 255  # the disc around it
    assert alpha.getpixel((5, 5)) == 0  # the background


def test_palette_transparency_is_kept() -> None:
    image = scene((200, 150)).quantize(16)
    hole = image.getpixel((5, 5))  # make the background's palette entry transparent
    image.info["transparency"] = hole
    alpha = remove_background(image).getchannel("A")
    assert alpha.getpixel((5, 5)) == 0
    assert alpha.getpixel((100, 75)) == 255


def test_input_is_not_modified_and_output_is_repeatable() -> None:
    image = scene()
    before = image.tobytes()
    first = remove_background(image)
    assert image.tobytes() == before
    assert remove_background(image).tobytes() == first.tobytes()
    # Colour is left alone: only the alpha channel is new.
    assert first.convert("RGB").tobytes() == before


@settings(max_examples=40, deadline=None)
@given(
    size=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P"]),
    seed=st.binary(min_size=1, max_size=64),
)
def test_arbitrary_small_images_never_fail(size: tuple[int, int], mode: str, seed: bytes) -> None:
    w, h = size
    channels = 4 if mode == "RGBA" else 3
    pixels = (seed * (w * h * channels // len(seed) + 1))[: w * h * channels]
    image = Image.frombytes("RGBA" if mode == "RGBA" else "RGB", size, pixels)
    if mode in ("L", "P"):
        image = image.convert(mode)
    out = remove_background(image)
    assert out.mode == "RGBA"
    assert out.size == size
