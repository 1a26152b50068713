"""Request bodies: made when sent, counted against the budget while held, made again to resend."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import tracemalloc
from pathlib import Path

import pytest
from helpers import wait_for
from PIL import Image

from rpq.bodies import Bodies
from rpq.budget import Budget
from rpq.errors import InputError
from rpq.images import ImageFile
from rpq.template import RequestBody, RequestTemplate


def jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def image(tmp_path: Path, data: bytes, name: str = "a.jpg") -> ImageFile:
    (tmp_path / name).write_bytes(data)
    return ImageFile(tmp_path / name, name)


def sent_image(body: RequestBody) -> bytes:
    return base64.b64decode(json.loads(bytes(body))["input"]["image"])


def test_a_body_counts_while_held_and_is_made_again_from_the_file(tmp_path: Path) -> None:
    budget = Budget(10 << 20)
    item = image(tmp_path, jpeg((64, 48), (200, 0, 0)))
    body = Bodies(RequestTemplate.default(), budget).of(item)
    first = body.open()
    assert first is not None and sent_image(first) == item.path.read_bytes()
    assert budget.in_use == len(first)
    body.close()
    assert budget.in_use == 0
    # Nothing was kept: a resend reads the file again.
    item.path.write_bytes(jpeg((64, 48), (0, 0, 200)))
    again = body.open()
    assert again is not None and sent_image(again) == item.path.read_bytes()
    body.close()
    body.close()
    assert budget.in_use == 0


def test_a_body_holds_the_photo_and_its_base64_and_no_joined_copy(tmp_path: Path) -> None:
    # Noise compresses like nothing: a JPEG of about 2.5 MB, sent as it is.
    noise = Image.frombytes("RGB", (1000, 1000), os.urandom(3_000_000))
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=95)
    item = image(tmp_path, buf.getvalue())
    size = len(buf.getvalue())
    body = Bodies(RequestTemplate.default(), Budget(64 << 20)).of(item)
    tracemalloc.start()
    try:
        sent = body.open()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent is not None and len(sent) == len(bytes(sent)) > size * 4 // 3
    # The file's bytes, and binascii's base64 output while it works (twice the file, 4/3 once
    # done): 3x. The JSON joined around the base64 would hold 4/3 more at once (11/3).
    assert peak < 3.3 * size
    assert sent_image(sent) == item.path.read_bytes()
    body.close()


def test_opening_waits_for_room_and_gives_up_when_the_batch_stops(tmp_path: Path) -> None:
    budget = Budget(1000)
    assert budget.acquire(1000)  # held by other jobs
    stop = threading.Event()
    body = Bodies(RequestTemplate.default(), budget, give_up=stop.is_set).of(
        image(tmp_path, jpeg((32, 32), (0, 200, 0))))
    got: list[bytes | None] = []
    opener = threading.Thread(target=lambda: got.append(body.open()), daemon=True)
    opener.start()
    wait_for(lambda: budget.waiting == 1)
    stop.set()
    budget.wake()
    opener.join(10)
    assert got == [None] and budget.in_use == 1000


def test_a_bad_image_or_an_oversized_request_is_an_input_error_and_frees_its_bytes(
    tmp_path: Path
) -> None:
    budget = Budget(100 << 20)
    bodies = Bodies(RequestTemplate.default(), budget)
    data = jpeg((400, 300), (1, 2, 3))
    with pytest.raises(InputError, match=r"^truncated or corrupt image \("):
        bodies.of(image(tmp_path, data[: len(data) // 2], "cut.jpg")).open()
    assert budget.in_use == 0
    big = image(tmp_path, _noise_png(2200), "big.png")
    with pytest.raises(InputError, match=r"^request is 1\d\.\d MB, over RunPod's "
                       r"10 MB /run limit\. Pass --max-side 2048"):
        bodies.of(big).open()
    assert budget.in_use == 0


def _noise_png(side: int) -> bytes:
    """A PNG of seeded noise: about 3 bytes per pixel, whatever the compressor does."""
    import random

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(7).randbytes(side * side * 3)).save(
        buf, "PNG", compress_level=0)
    return buf.getvalue()
