"""Flow control in a real batch: image bytes under the memory budget, jobs out following the
endpoint (--concurrency auto), against local endpoints."""

from __future__ import annotations

import base64
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from batchkit import RecordingReporter
from helpers import wait_for
from imaging import png_bytes
from PIL import Image

from rpq.concurrency import QUEUE_MAX, QUEUE_MIN
from rpq.local import LocalEndpoint
from rpq.pipeline import Batch, BatchResult
from rpq.settings import BatchSettings, EndpointSettings

TINY = base64.b64encode(png_bytes(1, (4, 4))).decode()


def photos(folder: Path, n: int, side: int) -> Path:
    """n distinct noise JPEGs of side x side (about side * side / 2 bytes each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = random.Random(i).randbytes(side * side * 3)
        Image.frombytes("RGB", (side, side), pixels).save(folder / f"p{i:03d}.jpg", quality=85)
    return folder


def small_images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = random.Random(i).randbytes(8 * 8 * 3)
        Image.frombytes("RGB", (8, 8), pixels).save(folder / f"s{i:03d}.png")
    return folder


class Running:
    """A Batch run on a thread of its own, so the test can watch it."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.result: BatchResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.batch.check_endpoint()
            self.result = self.batch.run()
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self, timeout: float = 60.0) -> BatchResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the batch did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def batch_of(src: Path, out: Path, ep: LocalEndpoint, **options: Any) -> Batch:
    settings = BatchSettings(
        root=src, out=out,
        endpoint=EndpointSettings(endpoint_id=ep.endpoint_id, base_url=ep.base_url),
        **options)
    return Batch(settings, RecordingReporter(), health_every=0.05)


@pytest.fixture
def released() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a worker blocked


def test_jobs_waiting_on_the_endpoint_hold_no_image_data(
    tmp_path: Path, make_endpoint: Callable[..., LocalEndpoint], released: threading.Event
) -> None:
    started = threading.Semaphore(0)

    def handler(job: dict[str, Any]) -> Any:
        started.release()
        released.wait(30)
        return {"image": job["input"]["image"]}  # the photo comes back

    src = photos(tmp_path / "in", 12, 600)
    ep = make_endpoint(handler=handler, workers_max=4, workers_min=4)
    run = Running(batch_of(src, tmp_path / "out", ep, concurrency=4))
    for _ in range(4):
        assert started.acquire(timeout=30)
    budget = run.batch.flow.budget
    # Four jobs out, all waiting on the endpoint: no body, no pixels, nothing counted.
    wait_for(lambda: run.batch.flow.gate.out == 4 and budget.in_use == 0)
    assert budget.peak > 0  # each was counted while it was prepared and sent
    released.set()
    result = run.finish()
    assert result.summary["stats"]["completed"] == 12
    assert budget.in_use == 0
    for path in sorted(src.iterdir()):
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def test_the_memory_budget_bounds_the_bytes_held_whatever_the_concurrency(
    tmp_path: Path, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    src = photos(tmp_path / "in", 24, 900)  # about 1 MB each: ~3.5 MB held per image sent
    # Every answer takes 0.5 s, so a body is held through its /run while the next jobs are
    # prepared: 24 at once cannot all fit, whatever the machine's speed.
    ep = make_endpoint(handler=lambda job: {"image": TINY}, workers_max=16, workers_min=16,
                       rate_limits={}, faults="slow=1", slow_delay=0.5)
    batch = batch_of(src, tmp_path / "out", ep, concurrency=24, memory_budget=16)
    run = Running(batch)
    result = run.finish()
    assert result.summary["stats"]["completed"] == 24
    budget = batch.flow.budget
    assert budget.waited > 0  # 24 at once would not fit: preparing waited its turn
    # Bodies and pixels never over the limit; the results (about 100 bytes each) on top.
    assert budget.peak <= budget.limit + 24 * 1024
    assert budget.in_use == 0


def test_auto_concurrency_follows_the_workers_down_and_up(
    tmp_path: Path, make_endpoint: Callable[..., LocalEndpoint], released: threading.Event
) -> None:
    def handler(job: dict[str, Any]) -> Any:
        if job["input"].get("hog"):  # another client's long job
            released.wait(30)
        return {"image": TINY}

    ep = make_endpoint(handler=handler, workers_max=12, workers_min=12, rate_limits={},
                       process_time=0.1)
    hogs = [requests.post(f"{ep.url}/run", json={"input": {"hog": True}}, timeout=10)
            for _ in range(10)]
    assert all(r.status_code == 200 for r in hogs)
    wait_for(lambda: ep.fleet.health()["workers"]["running"] == 10)
    src = small_images(tmp_path / "in", 150)
    run = Running(batch_of(src, tmp_path / "out", ep))  # --concurrency auto, the default
    gate = run.batch.flow.gate

    def target() -> int:
        return gate.concurrency.target

    # 10 of 12 workers taken by another client: the batch's jobs queue up, so the target
    # comes down to the 2 free workers plus the queue kept for the scaler.
    wait_for(lambda: target() <= 2 + QUEUE_MIN + 1, timeout=30)
    low = target()
    assert gate.out <= 12 + QUEUE_MAX
    released.set()
    # All 12 workers free: the target grows back to the workers plus the queue.
    wait_for(lambda: target() >= 12 + QUEUE_MIN, timeout=30)
    assert target() > low
    result = run.finish()
    assert result.summary["stats"]["completed"] == 150
