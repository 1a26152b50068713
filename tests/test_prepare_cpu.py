"""Preparing photos cheaply: one hash per file, a CPU's worth of images at once, pixels reused."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest
from helpers import wait_for
from PIL import Image

from rpq.bodies import PIXEL_POOL, Bodies
from rpq.budget import MB, Budget
from rpq.errors import InputError
from rpq.images import ImageFile, Prepared, _shrink, content_digest, prepare
from rpq.template import RequestTemplate


def photo(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG with detail in it (noise over a gradient), so a resize has work to do."""
    noise = Image.effect_noise(size, 40 + seed).convert("RGB")
    ramp = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    Image.blend(noise, ramp, 0.5).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def put(tmp_path: Path, data: bytes, name: str = "p.jpg") -> ImageFile:
    (tmp_path / name).write_bytes(data)
    return ImageFile(tmp_path / name, name)


@pytest.mark.parametrize("kwargs", [{}, {"max_side": 64}, {"fmt": "png"}])
def test_a_file_rewritten_after_it_was_hashed_is_hashed_again(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    # The batch hashes each file for its journal key; prepare reuses that digest only while
    # the file is as it was then.
    item = put(tmp_path, photo((160, 120), 1))
    first = content_digest(item.path)
    assert prepare(item, **kwargs).digest == first  # type: ignore[arg-type]
    other = photo((160, 120), 2)
    item.path.write_bytes(other)
    st = item.path.stat()
    os.utime(item.path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert prepare(item, **kwargs).digest == hashlib.sha256(other).hexdigest()  # type: ignore[arg-type]


def test_a_jpeg_decoded_from_its_file_keeps_every_bad_input_check(tmp_path: Path) -> None:
    data = photo((400, 300), 3)
    cut = put(tmp_path, data[: len(data) * 2 // 3], "cut.jpg")
    content_digest(cut.path)  # as the batch does first
    with pytest.raises(InputError, match=r"^truncated or corrupt image"):
        prepare(cut, max_side=100)
    bomb = put(tmp_path, data, "bomb.jpg")
    with pytest.raises(InputError, match=r"over the limit of 1,000 pixels"):
        prepare(bomb, max_side=100, max_pixels=1000)
    ok = prepare(put(tmp_path, data, "ok.jpg"), max_side=100)
    assert (ok.width, ok.height) == (100, 75) and ok.mime == "image/jpeg"
    assert ok.digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("decoded", "target"), [
    ((2100, 1400), (2048, 1365)),  # a 4200 x 2800 photo at 1/2
    ((3000, 2000), (2048, 1365)),  # a 6000 x 4000 photo at 1/2
])
def test_the_resize_in_two_passes_gives_the_pixels_of_one_call(
    decoded: tuple[int, int], target: tuple[int, int]
) -> None:
    src = Image.open(io.BytesIO(photo(decoded, 4)))
    src.load()
    expected = src.resize(target, Image.Resampling.BILINEAR)
    got = _shrink(src.copy(), target)
    assert got.size == expected.size and got.tobytes() == expected.tobytes()


def test_re_encoding_sets_aside_a_pool_of_pixel_memory_from_the_budget() -> None:
    as_is = Budget(192 * MB)
    Bodies(RequestTemplate.default(), as_is)
    assert as_is.limit == 192 * MB and Image.core.get_blocks_max() == 0
    resized = Budget(192 * MB)
    Bodies(RequestTemplate.default(), resized, max_side=2048)
    kept = 192 * MB - resized.limit
    assert kept == min(PIXEL_POOL, 48 * MB)
    assert Image.core.get_blocks_max() * Image.core.get_block_size() == kept
    small = Budget(16 * MB)
    Bodies(RequestTemplate.default(), small, fmt="png")
    assert small.limit == 12 * MB  # at most a quarter of the budget
    Bodies(RequestTemplate.default(), Budget(16 * MB))  # back to Pillow's default
    assert Image.core.get_blocks_max() == 0


def test_no_more_images_are_prepared_at_once_than_there_are_cpus(tmp_path: Path) -> None:
    inside = 0
    most = 0
    lock = threading.Lock()
    go = threading.Event()

    def slow_prepare(image: ImageFile) -> tuple[Prepared, str | None]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        go.wait(30)
        try:
            return prepare(image), None
        finally:
            with lock:
                inside -= 1

    stop = threading.Event()
    bodies = Bodies(RequestTemplate.default(), Budget(64 * MB), prepare=slow_prepare,
                    give_up=stop.is_set)
    cpus = bodies.at_once
    assert cpus == len(os.sched_getaffinity(0))
    items = [put(tmp_path, photo((32, 32), n), f"{n}.jpg") for n in range(cpus + 2)]
    got: list[bytes | None] = []
    threads = [threading.Thread(target=lambda i=i: got.append(bodies.of(i).open()), daemon=True)
               for i in items]
    for t in threads:
        t.start()
    wait_for(lambda: inside == cpus)
    assert bodies.budget.in_use > 0
    # The others wait for a turn; a batch that stops meanwhile lets them go, holding nothing.
    stop.set()
    go.set()
    for t in threads:
        t.join(30)
    assert most == cpus
    assert sum(body is not None for body in got) >= cpus
    assert len(got) == len(items)
