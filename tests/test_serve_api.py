"""rpq serve wire API: routes, shapes, status transitions, auth, limits and bad requests."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection

import pytest
import requests
from helpers import Gate, wait_for

from rpq.local import LocalEndpoint

JOB_KEYS = {"id", "status", "delayTime", "executionTime", "output", "error", "workerId"}
RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}-u1$")


@pytest.fixture
def ep(make_endpoint: Callable[..., LocalEndpoint], gate: Gate) -> LocalEndpoint:
    return make_endpoint(handler=gate, rate_limits={})


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalEndpoint]:
    """One endpoint for the many bad-request cases, which never create a job."""
    with LocalEndpoint(handler="echo", rate_limits={}) as ep:
        yield ep


def status(http: requests.Session, ep: LocalEndpoint, job_id: str) -> dict:
    r = http.get(f"{ep.url}/status/{job_id}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def run(http: requests.Session, ep: LocalEndpoint, **body: object) -> str:
    r = http.post(f"{ep.url}/run", json=body or {"input": {}}, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def assert_serving(http: requests.Session, ep: LocalEndpoint) -> None:
    assert http.get(f"{ep.url}/health", timeout=5).status_code == 200


def test_urls_and_repr(ep: LocalEndpoint) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2", ep.base_url)
    assert ep.url == f"{ep.base_url}/local"
    assert ep.endpoint_id == "local"
    assert "local" in repr(ep)


def test_job_moves_through_every_status(
    http: requests.Session, ep: LocalEndpoint, gate: Gate
) -> None:
    ep.pause()
    r = http.post(f"{ep.url}/run", json={"input": {"gate": "a"}}, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"id", "status"} and body["status"] == "IN_QUEUE"
    assert RUN_ID.match(body["id"])
    job_id = body["id"]

    assert status(http, ep, job_id) == {"id": job_id, "status": "IN_QUEUE"}
    ep.resume()
    doc = wait_for(lambda: (d := status(http, ep, job_id))["status"] == "IN_PROGRESS" and d)
    assert set(doc) <= JOB_KEYS and doc["workerId"] and doc["delayTime"] >= 0
    gate.open("a")
    doc = wait_for(lambda: (d := status(http, ep, job_id))["status"] == "COMPLETED" and d)
    assert set(doc) == {"id", "status", "delayTime", "executionTime", "output", "workerId"}
    assert doc["output"] == {"gate": "a"}
    assert isinstance(doc["delayTime"], int) and isinstance(doc["executionTime"], int)
    # POST works on status too (the Go SDK uses it).
    assert http.post(f"{ep.url}/status/{job_id}", timeout=5).json() == doc


def test_echo_round_trips_an_image(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler="echo")
    r = http.post(f"{ep.url}/runsync", json={"input": {"image": "aGVsbG8=", "name": "x"}})
    assert r.json()["output"] == {"image": "aGVsbG8=", "echo": {"name": "x"}}
    r = http.post(f"{ep.url}/runsync", json={"input": {"prompt": "hi"}})
    assert r.json()["output"] == {"echo": {"prompt": "hi"}}


def test_runsync_returns_the_job(http: requests.Session, ep: LocalEndpoint, gate: Gate) -> None:
    gate.open("s")
    r = http.post(f"{ep.url}/runsync", json={"input": {"gate": "s"}}, timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["id"].startswith("sync-") and doc["id"].endswith("-u1")
    assert doc["status"] == "COMPLETED" and doc["output"] == {"gate": "s"}
    assert set(doc) <= JOB_KEYS


def test_runsync_wait_ends_with_id_and_status(
    http: requests.Session, ep: LocalEndpoint, gate: Gate
) -> None:
    started = time.monotonic()
    # wait=10 is clamped up to the 1000 ms minimum
    r = http.post(f"{ep.url}/runsync?wait=10", json={"input": {"gate": "w"}}, timeout=10)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    doc = r.json()
    assert set(doc) == {"id", "status"} and doc["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert 0.9 <= elapsed < 5
    gate.open("w")
    wait_for(lambda: status(http, ep, doc["id"])["status"] == "COMPLETED")


def test_status_sync_holds_until_terminal_or_wait(
    http: requests.Session, ep: LocalEndpoint, gate: Gate
) -> None:
    job_id = run(http, ep, input={"gate": "h"})
    started = time.monotonic()
    r = http.get(f"{ep.url}/status-sync/{job_id}?wait=1000", timeout=10)
    assert 0.9 <= time.monotonic() - started < 5
    assert r.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    gate.open("h")
    r = http.post(f"{ep.url}/status-sync/{job_id}?wait=5000", timeout=10)
    assert r.json()["status"] == "COMPLETED"
    assert r.json()["output"] == {"gate": "h"}


def test_stream_drains_generator_chunks(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint], gate: Gate
) -> None:
    def words(job: dict) -> Iterator[dict]:
        for i in range(3):
            gate.event(f"w{i}").wait(10)
            yield {"index": i}

    ep = make_endpoint(handler=words)
    job_id = run(http, ep, input={})
    gate.open("w0")
    first = http.get(f"{ep.url}/stream/{job_id}", timeout=15).json()
    assert first == {"status": "IN_PROGRESS", "stream": [{"output": {"index": 0}}]}
    gate.open("w1")
    gate.open("w2")
    seen = []
    while True:
        part = http.post(f"{ep.url}/stream/{job_id}?wait=1000", timeout=15).json()
        seen += [c["output"]["index"] for c in part["stream"]]
        if part["status"] == "COMPLETED" and not part["stream"]:
            break
    assert seen == [1, 2]  # drained: chunk 0 is not replayed
    # As runpod-python: chunks only through /stream unless return_aggregate_stream is set.
    assert status(http, ep, job_id)["output"] == []


def test_stream_of_plain_handler_gives_output_once(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler="echo")
    job_id = http.post(f"{ep.url}/runsync", json={"input": {"a": 1}}).json()["id"]
    assert http.get(f"{ep.url}/stream/{job_id}").json() == {
        "status": "COMPLETED",
        "stream": [{"output": {"echo": {"a": 1}}}],
    }
    assert http.get(f"{ep.url}/stream/{job_id}").json() == {"status": "COMPLETED", "stream": []}


def test_stream_holds_when_empty(http: requests.Session, ep: LocalEndpoint) -> None:
    ep.pause()
    job_id = run(http, ep, input={})
    started = time.monotonic()
    r = http.get(f"{ep.url}/stream/{job_id}?wait=1000", timeout=10)
    assert 0.9 <= time.monotonic() - started < 5
    assert r.json() == {"status": "IN_QUEUE", "stream": []}


def test_cancel_queued_job(http: requests.Session, ep: LocalEndpoint) -> None:
    ep.pause()
    job_id = run(http, ep, input={})
    r = http.post(f"{ep.url}/cancel/{job_id}", timeout=5)
    assert r.status_code == 200 and r.json() == {"id": job_id, "status": "CANCELLED"}
    assert status(http, ep, job_id) == {"id": job_id, "status": "CANCELLED"}
    assert ep.health()["jobs"]["inQueue"] == 0
    ep.resume()
    snap = ep.job(job_id)
    assert snap is not None and snap["workerId"] is None and snap["attempts"] == 1


def test_cancel_running_job_discards_late_result(
    http: requests.Session, ep: LocalEndpoint, gate: Gate
) -> None:
    job_id = run(http, ep, input={"gate": "c"})
    wait_for(lambda: status(http, ep, job_id)["status"] == "IN_PROGRESS")
    r = http.post(f"{ep.url}/cancel/{job_id}", timeout=5)
    assert r.json() == {"id": job_id, "status": "CANCELLED"}
    assert status(http, ep, job_id)["status"] == "CANCELLED"
    assert ep.health()["workers"]["running"] == 1  # the handler still has the worker
    gate.open("c")
    wait_for(lambda: ep.health()["workers"]["running"] == 0)
    doc = status(http, ep, job_id)
    assert doc["status"] == "CANCELLED" and "output" not in doc
    assert ep.health()["jobs"]["completed"] == 0
    # cancelling a finished job changes nothing
    assert http.post(f"{ep.url}/cancel/{job_id}").json() == {"id": job_id, "status": "CANCELLED"}


def test_purge_queue_removes_only_queued_jobs(
    http: requests.Session, ep: LocalEndpoint, gate: Gate
) -> None:
    running = run(http, ep, input={"gate": "p"})
    wait_for(lambda: status(http, ep, running)["status"] == "IN_PROGRESS")
    ep.pause()
    queued = [run(http, ep, input={}) for _ in range(3)]
    r = http.post(f"{ep.url}/purge-queue", timeout=5)
    assert r.json() == {"removed": 3, "status": "completed"}
    for job_id in queued:
        assert http.get(f"{ep.url}/status/{job_id}").status_code == 404
    assert ep.health()["jobs"]["inQueue"] == 0
    gate.open("p")
    wait_for(lambda: status(http, ep, running)["status"] == "COMPLETED")
    assert http.post(f"{ep.url}/purge-queue").json() == {"removed": 0, "status": "completed"}


def test_retry_failed_job_keeps_id(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    calls = []

    def flaky(job: dict) -> dict:
        calls.append(job["id"])
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return {"ok": job["input"]["n"]}

    ep = make_endpoint(handler=flaky)
    job_id = run(http, ep, input={"n": 7})
    wait_for(lambda: status(http, ep, job_id)["status"] == "FAILED")
    r = http.post(f"{ep.url}/retry/{job_id}", timeout=5)
    assert r.status_code == 200 and r.json() == {"id": job_id, "status": "IN_QUEUE"}
    doc = wait_for(lambda: (d := status(http, ep, job_id))["status"] == "COMPLETED" and d)
    assert doc["output"] == {"ok": 7} and "error" not in doc
    assert calls == [job_id, job_id]
    health = ep.health()["jobs"]
    assert health["retried"] == 1 and health["failed"] == 1 and health["completed"] == 1
    snap = ep.job(job_id)
    assert snap is not None and snap["retried"] == 1

    r = http.post(f"{ep.url}/retry/{job_id}", timeout=5)
    assert r.status_code == 400 and "COMPLETED" in r.json()["error"]
    assert http.post(f"{ep.url}/retry/{'0' * 8}-u1").status_code == 404


def test_health_has_every_key(http: requests.Session, ep: LocalEndpoint) -> None:
    doc = http.get(f"{ep.url}/health", timeout=5).json()
    assert doc == {
        "jobs": {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0},
        "workers": {
            "idle": 0,
            "initializing": 0,
            "ready": 0,
            "running": 0,
            "throttled": 0,
            "unhealthy": 0,
        },
    }
    assert doc == ep.health()


def test_calls_counts_every_operation(http: requests.Session, ep: LocalEndpoint) -> None:
    ep.pause()
    job_id = run(http, ep, input={})
    http.get(f"{ep.url}/status/{job_id}")
    http.post(f"{ep.url}/status/{job_id}")
    http.get(f"{ep.url}/health")
    http.post(f"{ep.url}/cancel/{job_id}")
    http.post(f"{ep.url}/purge-queue")
    http.post(f"{ep.url}/retry/{job_id}")
    http.get(f"{ep.url}/status-sync/{job_id}")
    http.get(f"{ep.url}/stream/{job_id}")
    http.delete(f"{ep.url}/health")  # answered 405, still counted
    calls = ep.calls()
    assert calls["run"] == 1 and calls["status"] == 2 and calls["health"] == 2
    assert calls["cancel"] == calls["purge-queue"] == calls["retry"] == 1
    assert calls["status-sync"] == calls["stream"] == 1 and calls["runsync"] == 0


def test_jobs_snapshots(http: requests.Session, ep: LocalEndpoint, gate: Gate) -> None:
    gate.open("j")
    job_id = run(http, ep, input={"gate": "j"})
    wait_for(lambda: status(http, ep, job_id)["status"] == "COMPLETED")
    (snap,) = ep.jobs()
    assert snap == ep.job(job_id)
    assert snap["input"] == {"gate": "j"} and snap["status"] == "COMPLETED"
    assert snap["created"] <= snap["started"] <= snap["finished"]
    assert snap["workerId"] and snap["output"] == {"gate": "j"}
    assert ep.job("nope") is None


# ---- bad requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/v2/local/nope", 404),
        ("GET", "/v1/local/health", 404),
        ("GET", "/", 404),
        ("GET", "/v2/other/health", 404),
        ("GET", "/v2/local/status/a/b", 404),
        ("GET", "/v2/local/run", 405),
        ("PUT", "/v2/local/status/abc", 405),
        ("DELETE", "/v2/local/run", 405),
        ("POST", "/v2/local/health", 405),
        ("GET", "/v2/local/status/", 400),
        ("GET", "/v2/local/status/bad%24id", 400),
        ("GET", "/v2/local/status/" + "a" * 200, 400),
        ("POST", "/v2/local/cancel/x.y", 400),
        ("GET", "/v2/local/status/unknown-u1", 404),
        ("POST", "/v2/local/cancel/unknown-u1", 404),
        ("GET", "/v2/local/stream/unknown-u1", 404),
        ("GET", "/v2/local/status-sync/unknown-u1", 404),
        ("GET", "/v2/local/status/unknown-u1?wait=x", 404),
        ("GET", "/v2/local/status-sync/unknown-u1?wait=soon", 400),
    ],
)
def test_bad_routes_answer_json(
    http: requests.Session, shared: LocalEndpoint, method: str, path: str, code: int
) -> None:
    r = http.request(method, f"http://127.0.0.1:{shared.port}{path}", timeout=5)
    assert r.status_code == code
    assert r.headers["Content-Type"] == "application/json"
    assert isinstance(r.json()["error"], str) and "Traceback" not in r.text
    if code == 405:
        assert r.headers["Allow"]
    assert_serving(http, shared)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"input"',
        b"null",
        b"{}",
        b'{"inp": {}}',
        b'{"input": [1]}',
        b'{"input": "text"}',
        b'{"input": null}',
        b'{"input": 3}',
        b'{"input": {}, "policy": []}',
        b'{"input": {}, "policy": {"executionTimeout": "5000"}}',
        b'{"input": {}, "policy": {"executionTimeout": -1}}',
        b'{"input": {}, "policy": {"ttl": true}}',
        b'{"input": {}, "policy": {"ttl": 0}}',
        b'{"input": {}, "policy": {"lowPriority": "yes"}}',
        b'{"input": {}, "webhook": 5}',
        b'{"input": {}, "webhook": "ftp://x"}',
        b"\xff\xfe garbage",
        b"[" * 100000,
    ],
)
@pytest.mark.parametrize("op", ["run", "runsync"])
def test_bad_bodies_are_400(
    http: requests.Session, shared: LocalEndpoint, body: bytes, op: str
) -> None:
    r = http.post(
        f"{shared.url}/{op}", data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]
    assert shared.jobs() == []
    assert_serving(http, shared)


def test_extra_fields_are_accepted(http: requests.Session, ep: LocalEndpoint, gate: Gate) -> None:
    gate.open("x")
    body = {
        "input": {"gate": "x"},
        "s3Config": {"accessId": "a", "accessSecret": "b", "bucketName": "c", "endpointUrl": "d"},
        "webhookV2": "ignored",
        "policy": {"executionTimeout": 60000, "ttl": 600000, "lowPriority": False},
    }
    r = http.post(f"{ep.url}/runsync", json=body, timeout=10)
    assert r.json()["status"] == "COMPLETED"
    assert "s3Config" not in r.text


def test_s3_config_reaches_the_handler(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler=lambda job: {"keys": sorted(job)})
    r = http.post(f"{ep.url}/runsync", json={"input": {}, "s3Config": {"bucketName": "b"}})
    assert r.json()["output"] == {"keys": ["id", "input", "s3Config"]}
    r = http.post(f"{ep.url}/runsync", json={"input": {}})
    assert r.json()["output"] == {"keys": ["id", "input"]}


def test_body_limits_answer_413(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler="echo", rate_limits={})
    big = b'{"input": {"image": "' + b"A" * (10 * 1024 * 1024) + b'"}}'
    r = http.post(f"{ep.url}/run", data=big, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert ep.jobs() == []
    assert_serving(http, ep)  # the same connection still works

    small = make_endpoint(handler="echo", max_body_run=100, max_body_runsync=200)
    body = json.dumps({"input": {"x": "a" * 120}}).encode()
    assert 100 < len(body) < 200
    assert http.post(f"{small.url}/run", data=body).status_code == 413
    assert http.post(f"{small.url}/runsync", data=body).status_code == 200
    body = json.dumps({"input": {"x": "a" * 220}}).encode()
    assert http.post(f"{small.url}/runsync", data=body).status_code == 413


def test_chunked_body_is_read(
    http: requests.Session, make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler="echo", max_body_run=1000)

    def pieces(n: int) -> Iterator[bytes]:
        yield b'{"input": {"x": "'
        yield b"a" * n
        yield b'"}}'

    r = http.post(f"{ep.url}/run", data=pieces(10), timeout=5)
    assert r.status_code == 200, r.text
    r = http.post(f"{ep.url}/run", data=pieces(5000), timeout=5)
    assert r.status_code == 413
    assert_serving(http, ep)


def test_keep_alive_reuses_one_connection(ep: LocalEndpoint) -> None:
    conn = HTTPConnection("127.0.0.1", ep.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/v2/local/health")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["jobs"]
            sock = conn.sock
            assert sock is not None
        conn.request("GET", "/v2/local/health")
        conn.getresponse().read()
        assert conn.sock is sock
    finally:
        conn.close()


def test_malformed_request_line_gets_json(ep: LocalEndpoint) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", ep.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]


# ---- auth ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalEndpoint]:
    with LocalEndpoint(handler="echo", api_key="s3cret-key", rate_limits={}) as ep:
        yield ep


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer s3cret-key", 200),
        ("bearer s3cret-key", 200),
        ("s3cret-key", 200),
        ("Bearer wrong", 401),
        ("wrong", 401),
        ("Bearer ", 401),
        ("Bearer s3cret-key-and-more", 401),
        (None, 401),
    ],
)
def test_auth(
    http: requests.Session, secured: LocalEndpoint, header: str | None, code: int
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, op in (("GET", "health"), ("POST", "run"), ("GET", "status/abc-u1")):
        r = http.request(
            method, f"{secured.url}/{op}", headers=headers, json={"input": {}}, timeout=5
        )
        expected = 404 if (code == 200 and op.startswith("status")) else code
        assert r.status_code == expected, (op, r.text)
        assert "s3cret" not in r.text
        if code == 401:
            assert r.json()["error"]


def test_key_never_shown(secured: LocalEndpoint) -> None:
    assert "s3cret" not in repr(secured)
    assert "s3cret" not in repr(secured.config)


def test_non_loopback_needs_a_key() -> None:
    with pytest.raises(ValueError, match="API key"):
        LocalEndpoint(host="0.0.0.0")
    LocalEndpoint(host="0.0.0.0", api_key="k")  # constructing does not bind
    LocalEndpoint(host="localhost")
    with pytest.raises(ValueError, match="empty"):
        LocalEndpoint(api_key=" ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers_max": 0},
        {"workers_min": 4},
        {"throttled": 4},
        {"workers_min": 2, "throttled": 2},
        {"idle_timeout": -1},
        {"process_time": -1},
        {"process_time": (2, 1)},
        {"process_time": (1, 2, 3)},
        {"endpoint_id": "a/b"},
        {"endpoint_id": ""},
        {"rate_limits": {"nope": 1}},
        {"rate_limits": {"run": 0}},
        {"faults": "500=2"},
        {"handler": "no-such-builtin"},
        {"port": 70000},
    ],
)
def test_bad_config_is_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LocalEndpoint(**kwargs)


def test_config_plus_overrides() -> None:
    from rpq.local import EndpointConfig

    base = EndpointConfig(handler="echo", workers_max=5, endpoint_id="base")
    ep = LocalEndpoint(base, workers_max=2)
    assert ep.config == EndpointConfig(handler="echo", workers_max=2, endpoint_id="base")
    assert base.workers_max == 5  # the config passed in is not changed
    assert LocalEndpoint(workers_min=1).config.workers_min == 1
    with pytest.raises(TypeError, match="workers"):
        LocalEndpoint(base, workers=2)


def test_stop_is_prompt_with_running_jobs(http: requests.Session) -> None:
    import threading

    ep = LocalEndpoint(handler="sleep", workers_max=2).start()
    ids = [run(http, ep, input={"seconds": 30}) for _ in range(3)]
    wait_for(lambda: ep.health()["workers"]["running"] == 2)
    outcome: list[object] = []

    def long_poll() -> None:
        try:
            outcome.append(requests.get(f"{ep.url}/status-sync/{ids[0]}?wait=30000", timeout=10))
        except requests.ConnectionError as exc:
            outcome.append(exc)

    holder = threading.Thread(target=long_poll, daemon=True)
    holder.start()
    wait_for(lambda: ep.calls()["status-sync"] == 1)
    started = time.monotonic()
    ep.stop()
    assert time.monotonic() - started < 10  # not held for the poll's 30 s
    ep.stop()  # idempotent
    holder.join(5)
    assert outcome, "the long poll should end when the endpoint stops"
    wait_for(
        lambda: all(t.daemon for t in threading.enumerate() if t is not threading.main_thread())
    )
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ep.url}/health", timeout=2)
