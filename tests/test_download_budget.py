"""Results given as URLs: the bytes rpq downloads are counted against the memory budget."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from batchkit import RecordingReporter
from helpers import LoopbackServer
from imaging import make_images
from PIL import Image

from rpq.budget import MB, Budget, Downloads
from rpq.local import LocalEndpoint
from rpq.pipeline import Batch
from rpq.settings import BatchSettings, EndpointSettings

SIDE = 1200  # a BMP of 1200 x 1200 x 3: about 4.3 MB


def picture(seed: int) -> bytes:
    pixels = random.Random(seed).randbytes(SIDE * SIDE * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (SIDE, SIDE), pixels).save(buf, "BMP")
    return buf.getvalue()


class Pictures:
    """Serves one picture per path; each body waits until `together` requests have come, so
    several downloads are surely under way at once (or 20 s have passed)."""

    def __init__(self, together: int, *, length: bool = True) -> None:
        self.length = length
        self.asked: list[str] = []
        self._lock = threading.Lock()
        self._together = together
        self._all_in = threading.Event()

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        data = picture(int(h.path.strip("/").split(".")[0]))
        with self._lock:
            self.asked.append(h.path)
            if len(self.asked) >= self._together:
                self._all_in.set()
        h.send_response(200)
        h.send_header("Content-Type", "image/bmp")
        if self.length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.flush()
        self._all_in.wait(20)
        h.wfile.write(data)


def url_batch(tmp_path: Path, make_endpoint: Callable[..., LocalEndpoint], server_url: str,
              images: int) -> Batch:
    """A batch whose worker answers each image with the URL of a picture on `server_url`."""
    worker = tmp_path / "urlworker.py"
    worker.write_text(
        "import zlib\n"
        "def handler(job):\n"
        "    n = zlib.crc32(job['input']['image'].encode()) % 1000\n"
        f"    return {{'image': '{server_url}/' + str(n) + '.bmp'}}\n")
    ep = make_endpoint(handler=f"{worker}:handler", workers_max=4)
    src = tmp_path / "in"
    make_images(src, images)
    settings = BatchSettings(
        root=src, out=tmp_path / "out", memory_budget=16, concurrency=4,
        endpoint=EndpointSettings(endpoint_id=ep.endpoint_id, base_url=ep.base_url))
    batch = Batch(settings, RecordingReporter())
    batch.check_endpoint()
    return batch


@pytest.mark.timeout(120)
def test_url_results_downloading_at_once_stay_within_the_budget(
    tmp_path: Path, make_endpoint: Callable[..., Any]
) -> None:
    # Four results of 4.3 MB on their way at once; a download counts twice its size while it
    # is read (chunks, then their join): 8.6 MB each, so one at a time fits in 16 MB.
    pictures = Pictures(together=2)
    with LoopbackServer(pictures) as server:
        batch = url_batch(tmp_path, make_endpoint, server.url, images=6)
        result = batch.run()
    assert [r.status for r in result.records] == ["COMPLETED"] * 6
    served = {picture(int(p.strip("/").split(".")[0])) for p in pictures.asked}
    for record in result.records:
        (name,) = record.outputs
        assert (tmp_path / "out" / name).read_bytes() in served
    budget = batch.flow.budget
    assert budget.peak >= 2 * len(picture(0))  # the downloads were counted
    assert budget.peak <= budget.limit  # ... and never beyond the budget
    assert budget.waited >= 1  # a download waited in its socket for room
    assert budget.in_use == 0  # all released once written


def test_a_download_without_a_length_is_counted_as_it_arrives(
    tmp_path: Path, make_endpoint: Callable[..., Any]
) -> None:
    pictures = Pictures(together=1, length=False)
    with LoopbackServer(pictures) as server:
        batch = url_batch(tmp_path, make_endpoint, server.url, images=1)
        result = batch.run()
    assert [r.status for r in result.records] == ["COMPLETED"]
    size = len(picture(int(pictures.asked[0].strip("/").split(".")[0])))
    assert batch.flow.budget.peak >= 2 * size
    assert batch.flow.budget.in_use == 0


def test_only_a_job_holding_nothing_waits_for_its_download() -> None:
    budget = Budget(10 * MB)
    assert budget.acquire(9 * MB)  # other jobs hold nearly all of it
    holding = Downloads(budget, may_wait=False)
    meter = holding.meter()
    meter.expect(2 * MB)  # counted at once, never waiting: this job holds bytes already
    assert budget.in_use == 13 * MB and holding.held == 4 * MB
    meter.arrived(2 * MB)
    meter.joined(2 * MB)
    assert budget.in_use == 11 * MB
    holding.release()
    budget.release(9 * MB)
    assert budget.in_use == 0
