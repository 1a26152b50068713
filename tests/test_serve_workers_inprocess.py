"""rpq serve --handler follows runpod-python's worker semantics where a thread can."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import wait_for

from rpq.local import HandlerLoadError, LocalEndpoint

Make = Callable[..., LocalEndpoint]


def run(http: requests.Session, ep: LocalEndpoint, inp: dict[str, Any], **extra: Any) -> str:
    r = http.post(f"{ep.url}/run", json={"input": inp, **extra}, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def finished(http: requests.Session, ep: LocalEndpoint, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = http.get(f"{ep.url}/status-sync/{job_id}?wait=20000",
                                   timeout=30).json()
    assert doc["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"), doc
    return doc


def test_error_chunk_ends_the_stream_and_fails(http: requests.Session, make_endpoint: Make
                                               ) -> None:
    def gen(job: dict[str, Any]) -> Iterator[Any]:
        yield "one"
        yield {"error": "no GPU memory"}
        yield "never"

    ep = make_endpoint(handler=gen)
    job_id = run(http, ep, {})
    doc = finished(http, ep, job_id)
    assert doc["status"] == "FAILED" and doc["error"] == "no GPU memory"
    chunks = http.get(f"{ep.url}/stream/{job_id}", timeout=10).json()["stream"]
    assert [c["output"] for c in chunks] == ["one"]


def test_raise_mid_stream_uses_the_sdk_wording(http: requests.Session, make_endpoint: Make
                                               ) -> None:
    def gen(job: dict[str, Any]) -> Iterator[Any]:
        yield 1
        raise RuntimeError("stream broke")

    ep = make_endpoint(handler=gen)
    doc = finished(http, ep, run(http, ep, {}))
    assert doc["status"] == "FAILED"
    assert doc["error"].startswith("handler: stream broke \ntraceback: Traceback")


def test_refresh_worker_replaces_the_worker(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler=lambda job: {"refresh_worker": job["input"]["refresh"], "v": 1},
                       workers_max=1)
    first = finished(http, ep, run(http, ep, {"refresh": False}))
    second = finished(http, ep, run(http, ep, {"refresh": True}))
    third = finished(http, ep, run(http, ep, {"refresh": False}))
    assert first["output"] == second["output"] == third["output"] == {"v": 1}
    assert first["workerId"] == second["workerId"] != third["workerId"]


def test_concurrency_modifier_runs_jobs_together_on_one_worker(
    http: requests.Session, make_endpoint: Make, tmp_path: Path
) -> None:
    path = tmp_path / "worker.py"
    path.write_text(
        "import threading\n"
        "import runpod\n"
        "together = threading.Barrier(4, timeout=20)\n"
        "def handler(job):\n"
        "    together.wait()  # only passes with four jobs running at once\n"
        "    return {'ok': True}\n"
        "runpod.serverless.start({'handler': handler,\n"
        "                         'concurrency_modifier': lambda c: min(c + 1, 4)})\n"
    )
    ep = make_endpoint(handler=str(path), workers_max=1)
    docs = [finished(http, ep, i) for i in [run(http, ep, {}) for _ in range(4)]]
    assert [d["status"] for d in docs] == ["COMPLETED"] * 4
    assert len({d["workerId"] for d in docs}) == 1


def test_cancel_and_timeout_stop_an_async_handler(http: requests.Session, make_endpoint: Make
                                                  ) -> None:
    stopped: list[str] = []

    async def handler(job: dict[str, Any]) -> Any:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(job["input"]["name"])
            raise
        return "slept"

    ep = make_endpoint(handler=handler, workers_max=1)
    job_id = run(http, ep, {"name": "cancelled"})
    wait_for(lambda: (ep.job(job_id) or {}).get("status") == "IN_PROGRESS")
    http.post(f"{ep.url}/cancel/{job_id}", timeout=5)
    wait_for(lambda: "cancelled" in stopped)
    doc = finished(http, ep, run(http, ep, {"name": "late"}, policy={"executionTimeout": 300}))
    assert doc["status"] == "TIMED_OUT"
    wait_for(lambda: "late" in stopped)
    assert len({j["workerId"] for j in ep.jobs()}) == 1  # stopped in time: no new worker


def test_handler_that_runs_on_after_cancel_loses_its_worker(
    http: requests.Session, make_endpoint: Make
) -> None:
    release = threading.Event()

    def handler(job: dict[str, Any]) -> Any:
        if job["input"].get("block"):
            release.wait(30)  # plain sync code: nothing can interrupt it
        return "done"

    ep = make_endpoint(handler=handler, workers_max=1, stop_grace=0.2)
    try:
        blocked = run(http, ep, {"block": True})
        wait_for(lambda: (ep.job(blocked) or {}).get("status") == "IN_PROGRESS")
        http.post(f"{ep.url}/cancel/{blocked}", timeout=5)
        doc = finished(http, ep, run(http, ep, {}))
        assert doc["status"] == "COMPLETED"
        assert doc["workerId"] != (ep.job(blocked) or {}).get("workerId")
    finally:
        release.set()


def test_result_and_chunk_size_limits(http: requests.Session, make_endpoint: Make) -> None:
    def handler(job: dict[str, Any]) -> Any:
        if job["input"].get("stream"):
            return (s for s in ["ab" * 1500])
        return {"big": "x" * 5000}

    ep = make_endpoint(handler=handler, max_result=4000, max_chunk=1000)
    big = finished(http, ep, run(http, ep, {}))
    assert big["status"] == "COMPLETED" and "output" not in big
    job_id = run(http, ep, {"stream": True})
    finished(http, ep, job_id)
    chunks = [c["output"] for c in http.get(f"{ep.url}/stream/{job_id}", timeout=10)
              .json()["stream"]]
    assert chunks == ["ab" * 500] * 3


def test_sdk_utils_import_points_to_worker_mode(tmp_path: Path) -> None:
    path = tmp_path / "worker.py"
    path.write_text("import runpod\nfrom runpod.serverless.utils import rp_validator\n")
    with pytest.raises(HandlerLoadError, match="--worker"):
        LocalEndpoint(handler=str(path))


def test_413_reaches_a_client_still_sending(make_endpoint: Make) -> None:
    import http.client

    ep = make_endpoint(handler="echo", max_body_run=1024 * 1024)
    piece = b"a" * 65536
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=20)
    try:
        # Far more than the server drains before answering: it answers at once and then
        # reads on, so the client finishes writing and reads the answer.
        conn.putrequest("POST", f"/v2/{ep.endpoint_id}/run")
        conn.putheader("Content-Length", str(len(piece) * 4000))
        conn.endheaders()
        for _ in range(4000):
            conn.send(piece)
        response = conn.getresponse()
        assert response.status == 413
        assert b"limit" in response.read()
    finally:
        conn.close()


def test_refresh_worker_in_the_start_config(http: requests.Session, make_endpoint: Make,
                                            tmp_path: Path) -> None:
    path = tmp_path / "worker.py"
    path.write_text(
        "import runpod\n"
        "def handler(job):\n"
        "    return {'ok': True}\n"
        "runpod.serverless.start({'handler': handler, 'refresh_worker': True})\n"
    )
    ep = make_endpoint(handler=str(path), workers_max=1)
    docs = [finished(http, ep, run(http, ep, {})) for _ in range(3)]
    assert [d["output"] for d in docs] == [{"ok": True}] * 3
    assert len({d["workerId"] for d in docs}) == 3  # a new worker after every job
