"""Each step decodes only what it needs, frees it at once, and still catches every bad file."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from rpq.errors import InputError
from rpq.extract import OutputError, _b64decode
from rpq.images import JPEG_QUALITY, ImageFile, prepare
from rpq.write import ResultWriter

# Pillow allocates pixels in blocks of this many bytes (at most); its counters are per process.
BLOCK = Image.core.get_block_size()


def photo(size: tuple[int, int], quality: int = 90) -> bytes:
    """A JPEG with detail in every block: seeded noise, scaled up so it compresses like a photo."""
    tile = (size[0] // 16, size[1] // 16)
    noise = bytes((i * 7919 + 13) % 251 for i in range(tile[0] * tile[1] * 3))
    small = Image.frombytes("RGB", tile, noise)
    buf = io.BytesIO()
    small.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return photo((4000, 3000))


class Blocks:
    """Pillow's own count of pixel blocks allocated and freed since this object was made."""

    def __init__(self) -> None:
        self._start = Image.core.get_stats()

    def _delta(self, key: str) -> int:
        return int(Image.core.get_stats()[key] - self._start[key])

    @property
    def allocated(self) -> int:
        return self._delta("allocated_blocks") + self._delta("reused_blocks")

    @property
    def freed(self) -> int:
        return self._delta("freed_blocks") + self._delta("blocks_cached")


def image_file(tmp_path: Path, data: bytes, name: str = "p.jpg") -> ImageFile:
    path = tmp_path / name
    path.write_bytes(data)
    return ImageFile(path, name)


def test_checking_a_jpeg_decodes_a_64th_of_its_pixels_and_frees_them(
    tmp_path: Path, big_jpeg: bytes
) -> None:
    # At full size, 4000 x 3000 RGB is 48 MB of pixels (4 bytes each): three 16 MB blocks.
    assert 2 * BLOCK < 4000 * 3000 * 4
    blocks = Blocks()
    prepared = prepare(image_file(tmp_path, big_jpeg))
    assert prepared.data == big_jpeg
    assert (prepared.width, prepared.height) == (4000, 3000)
    assert blocks.allocated == 1  # 500 x 375 grey
    assert blocks.freed == blocks.allocated


def test_max_side_decodes_near_the_target_and_frees_everything(
    tmp_path: Path, big_jpeg: bytes
) -> None:
    blocks = Blocks()
    prepared = prepare(image_file(tmp_path, big_jpeg), max_side=1000)
    assert (prepared.width, prepared.height) == (1000, 750)
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.size == (1000, 750)
    # Decoded at 1/2 (2000 x 1500, 12 MB) and resized: no block of the full-size decode.
    assert blocks.allocated <= 3
    assert blocks.freed == blocks.allocated


@pytest.fixture
def pillow_blocks() -> Iterator[int]:
    """Pixel blocks of 4 MB and no pool for one test (a batch that re-encodes sets 1 MB
    blocks for the whole process); returns the block size."""
    size, kept = Image.core.get_block_size(), Image.core.get_blocks_max()
    Image.core.set_blocks_max(0)
    Image.core.set_block_size(4 << 20)
    yield 4 << 20
    Image.core.set_block_size(size)
    Image.core.set_blocks_max(kept)


def lines_and_text(size: tuple[int, int]) -> bytes:
    """A JPEG of lines and small text, as sharp as a camera gives them (a slight blur), where
    a soft resize shows."""
    im = Image.new("RGB", size, (200, 190, 170))
    draw = ImageDraw.Draw(im)
    w, h = size
    for i in range(300):
        x, y = (i * 7919) % w, (i * 104729) % h
        draw.line((x, y, x + (i * 31) % 800 - 400, y + (i * 17) % 800 - 400),
                  fill=((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), width=1 + i % 4)
        draw.text(((i * 613) % w, (i * 389) % h), "The quick brown fox 0123", fill=(0, 0, 0))
    buf = io.BytesIO()
    im.filter(ImageFilter.GaussianBlur(0.6)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    rms = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).rms
    return 10 * math.log10(255 ** 2 / (sum(x * x for x in rms) / 3))


def test_a_phone_photo_just_over_twice_the_target_is_sent_at_half_scale(
    tmp_path: Path, pillow_blocks: int
) -> None:
    # 4032 x 3024, a 12 MP phone photo, for --max-side 2048: libjpeg's 1/2 scale gives
    # 2016 x 1512, 1.6% under the target, and that is what is sent, with no resize. A full
    # decode alone would be 49 MB, 12 blocks; the scaled decode is 12 MB, 3 blocks.
    data = lines_and_text((4032, 3024))
    blocks = Blocks()
    prepared = prepare(image_file(tmp_path, data), max_side=2048)
    assert (prepared.width, prepared.height) == (2016, 1512)
    assert blocks.allocated <= 3 < 4032 * 3024 * 4 // pillow_blocks
    assert blocks.freed == blocks.allocated
    # As close to LANCZOS of the full decode as the full decode shrunk with bilinear and
    # encoded the same way, at the same size (37.7 against 36.7 dB).
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        reference = full.resize((2016, 1512), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        full.resize((2016, 1512), Image.Resampling.BILINEAR).save(
            buf, "JPEG", quality=JPEG_QUALITY)
    with Image.open(io.BytesIO(prepared.data)) as out, Image.open(buf) as bilinear:
        assert out.size == (2016, 1512)
        assert psnr(out, reference) >= psnr(bilinear, reference)


def test_a_photo_far_short_at_a_smaller_scale_is_decoded_at_the_larger_one(
    tmp_path: Path, pillow_blocks: int
) -> None:
    # 3600 x 2400 for 2048: 1/2 scale (1800) is 12% short, too far to send as it is.
    blocks = Blocks()
    prepared = prepare(image_file(tmp_path, photo((3600, 2400))), max_side=2048)
    assert (prepared.width, prepared.height) == (2048, 1365)
    assert blocks.allocated >= 3600 * 2400 * 4 // pillow_blocks  # the full decode, 35 MB


def cut_points(size: int) -> Iterator[int]:
    for fraction in (0.05, 0.3, 0.6, 0.9, 0.99):
        yield int(size * fraction)
    yield from (size - 64, size - 2)  # inside the last MCU rows; only the end marker gone


def full_decode_fails(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except OSError:
        return True
    return False


def test_the_reduced_check_catches_every_truncation_a_full_decode_catches(
    tmp_path: Path
) -> None:
    data = photo((1600, 1200))
    for cut in cut_points(len(data)):
        kept = data[:cut]
        caught = True
        try:
            prepare(image_file(tmp_path, kept, f"cut{cut}.jpg"))
        except InputError as exc:
            assert str(exc).startswith("truncated or corrupt image (")
        else:
            caught = False
        assert caught == full_decode_fails(kept), f"cut at {cut} of {len(data)}"
    # A cut before the last rows fails both ways; the parity above is not a vacuous one.
    assert full_decode_fails(data[: len(data) // 2])


def write_output(tmp_path: Path, blob: bytes) -> list[str]:
    writer = ResultWriter(tmp_path / "out", None)
    (tmp_path / "out").mkdir(exist_ok=True)
    job = {"status": "COMPLETED", "output": {"image": base64.b64encode(blob).decode()}}
    return writer.write("a.jpg", job)


def test_a_result_is_checked_at_reduced_scale_and_a_truncated_one_refused(
    tmp_path: Path, big_jpeg: bytes
) -> None:
    blocks = Blocks()
    assert write_output(tmp_path, big_jpeg) == ["a.jpg"]
    assert blocks.allocated == 1
    assert blocks.freed == blocks.allocated
    assert (tmp_path / "out" / "a.jpg").read_bytes() == big_jpeg

    (tmp_path / "out" / "a.jpg").unlink()
    with pytest.raises(OutputError, match="looks like JPEG but does not decode"):
        write_output(tmp_path, big_jpeg[: len(big_jpeg) * 2 // 3])
    assert not (tmp_path / "out" / "a.jpg").exists()


B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n"


@given(st.text(alphabet=B64_CHARS, max_size=40) | st.binary(max_size=30).map(
    lambda b: base64.b64encode(b).decode()))
def test_base64_in_a_result_decodes_exactly_as_specified(text: str) -> None:
    # The spec: whitespace ignored, one alphabet throughout, padding only at the end, never
    # more than the length needs, and optional (in part or whole); nothing else is base64.
    compact = "".join(text.split())
    body = compact.rstrip("=")
    pads = len(compact) - len(body)
    std = set(B64_CHARS[:64])
    urlsafe = set(B64_CHARS[:62] + "-_")
    valid = (bool(body) and "=" not in body and len(body) % 4 != 1
             and pads <= -len(body) % 4 and (set(body) <= std or set(body) <= urlsafe))
    decoded = _b64decode(text)
    if not valid:
        assert decoded is None
        return
    expected = base64.b64decode(body.replace("-", "+").replace("_", "/") + "=" * (-len(body) % 4))
    assert decoded == expected


def test_the_cost_of_preparing_covers_the_bytes_it_holds(tmp_path: Path, big_jpeg: bytes) -> None:
    from rpq.images import prepare_cost
    from rpq.template import RequestTemplate

    image = image_file(tmp_path, big_jpeg)
    template = RequestTemplate.default()
    for options in ({}, {"max_side": 1000}, {"fmt": "png"}):
        cost = prepare_cost(image, **options)
        prepared = prepare(image, **options)
        body = template.render(prepared)
        # At least the file, the image sent and its request; for a JPEG checked at 1/8
        # scale, far less than its full-size pixels (48 MB).
        assert cost >= len(big_jpeg) + len(prepared.data) + len(body), options
    assert prepare_cost(image) < 4000 * 3000 * 4 // 2
    assert prepare_cost(image, fmt="png") > 4000 * 3000 * 4  # decoded in full, then PNG
    assert prepare_cost(image_file(tmp_path, b"not an image", "x.jpg")) == 0
    assert prepare_cost(ImageFile(tmp_path / "gone.jpg", "gone.jpg")) == 0


def test_the_cost_is_known_before_pillow_has_opened_anything(
    tmp_path: Path, big_jpeg: bytes
) -> None:
    # A fresh interpreter: the first image of a batch is costed before any is decoded.
    import subprocess
    import sys

    path = image_file(tmp_path, big_jpeg).path
    code = ("import sys; from pathlib import Path; from rpq.images import ImageFile, "
            "prepare_cost; print(prepare_cost(ImageFile(Path(sys.argv[1]), 'p.jpg')))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, timeout=60)
    assert int(out.stdout) > len(big_jpeg)
