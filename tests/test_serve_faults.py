"""rpq serve fault injection (seeded, reproducible) and per-operation rate limits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests
from helpers import wait_for

from rpq.local import LocalEndpoint, parse_faults

Make = Callable[..., LocalEndpoint]


def state(http: requests.Session, ep: LocalEndpoint, job_id: str) -> str:
    return str(http.get(f"{ep.url}/status/{job_id}", timeout=5).json()["status"])


# ---- parsing ---------------------------------------------------------------------------


def test_parse_faults() -> None:
    spec = parse_faults(" 500=0.1, 429=0.05,drop=0.02,fail=0.05,stuck=0.02,slow=0.1,crash=0 ")
    assert spec.rate("500") == 0.1 and spec.rate("slow") == 0.1 and spec.rate("crash") == 0
    assert spec and not parse_faults("") and not parse_faults("500=0")
    assert parse_faults(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("boom=0.1", "unknown fault kind 'boom'"),
        ("500", "no probability"),
        ("500=abc", "not a number"),
        ("500=1.5", "between 0 and 1"),
        ("500=-0.1", "between 0 and 1"),
        ("500=nan", "between 0 and 1"),
        ("500=0.1,500=0.2", "twice"),
        ("500=0.6,drop=0.6", "at most 1"),
        ("fail=0.7,crash=0.7", "at most 1"),
    ],
)
def test_bad_fault_specs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_faults(text)
    with pytest.raises(ValueError, match=message):
        LocalEndpoint(faults=text)


# ---- HTTP faults -----------------------------------------------------------------------


def test_injected_500_is_not_processed(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", faults="500=1", seed=1)
    r = http.post(f"{ep.url}/run", json={"input": {}}, timeout=5)
    assert r.status_code == 500 and "injected" in r.json()["error"]
    assert ep.jobs() == []
    assert ep.calls()["run"] == 1
    assert http.get(f"{ep.url}/health").status_code == 200  # health is exempt


def test_injected_429_has_retry_after(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", faults="429=1", seed=1)
    r = http.post(f"{ep.url}/run", json={"input": {}}, timeout=5)
    assert r.status_code == 429 and r.json()["error"]
    assert int(r.headers["Retry-After"]) >= 1
    assert ep.jobs() == []


def test_injected_drop_closes_without_answer(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", faults="drop=1", seed=1)
    with pytest.raises(requests.ConnectionError):
        http.post(f"{ep.url}/run", json={"input": {}}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        http.get(f"{ep.url}/status/abc-u1", timeout=5)
    assert ep.jobs() == []
    assert ep.calls()["run"] == 1 and ep.calls()["status"] == 1
    assert http.get(f"{ep.url}/health", timeout=5).status_code == 200


def test_injected_slow_delays_the_answer(http: requests.Session, make_endpoint: Make) -> None:
    # A delay long enough that no load on the test machine makes /health look slowed.
    ep = make_endpoint(handler="echo", faults="slow=1", slow_delay=3.0, seed=1)
    started = time.monotonic()
    r = http.post(f"{ep.url}/run", json={"input": {}}, timeout=10)
    assert r.status_code == 200 and time.monotonic() - started >= 3.0
    started = time.monotonic()
    http.get(f"{ep.url}/health")
    assert time.monotonic() - started < 3.0


def test_http_faults_are_reproducible(make_endpoint: Make) -> None:
    def pattern(seed: int) -> list[int]:
        ep = make_endpoint(handler="echo", faults="500=0.3,429=0.2", seed=seed, rate_limits={})
        with requests.Session() as http:
            return [http.get(f"{ep.url}/status/x-u1").status_code for _ in range(40)]

    first = pattern(7)
    assert first == pattern(7)
    assert set(first) == {404, 500, 429}
    assert first != pattern(8)


# ---- job faults ------------------------------------------------------------------------


def test_injected_fail_looks_like_runpod(http: requests.Session, make_endpoint: Make) -> None:
    calls: list[str] = []
    ep = make_endpoint(handler=lambda job: calls.append(job["id"]), faults="fail=1", seed=3)
    job_id = http.post(f"{ep.url}/run", json={"input": {}}).json()["id"]
    wait_for(lambda: state(http, ep, job_id) == "FAILED")
    doc = http.get(f"{ep.url}/status/{job_id}").json()
    error = json.loads(doc["error"])
    assert set(error) == {
        "error_type", "error_message", "error_traceback", "hostname", "worker_id", "runpod_version"
    }
    assert error["worker_id"] == doc["workerId"]
    assert calls == []  # the handler never ran
    assert ep.health()["jobs"]["failed"] == 1


def test_injected_stuck_never_leaves_queue(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", faults="stuck=1", seed=3)
    job_id = http.post(f"{ep.url}/run", json={"input": {}}).json()["id"]
    time.sleep(0.2)  # plenty of time for an idle endpoint to run it, were it not stuck
    assert state(http, ep, job_id) == "IN_QUEUE"
    health = ep.health()
    assert health["jobs"]["inQueue"] == 1 and sum(health["workers"].values()) == 0
    assert http.post(f"{ep.url}/cancel/{job_id}").json()["status"] == "CANCELLED"
    assert ep.health()["jobs"]["inQueue"] == 0


def test_job_faults_are_reproducible(make_endpoint: Make) -> None:
    def outcome(seed: int) -> list[str]:
        ep = make_endpoint(handler="echo", faults="fail=0.5", seed=seed, workers_max=1)
        with requests.Session() as http:
            ids = [http.post(f"{ep.url}/run", json={"input": {}}).json()["id"] for _ in range(12)]
            return [wait_for(lambda i=i: (s := state(http, ep, i)) != "IN_QUEUE" and
                             s != "IN_PROGRESS" and s) for i in ids]

    first = outcome(11)
    assert first == outcome(11)
    assert set(first) == {"COMPLETED", "FAILED"}


def test_crash_loop_shows_in_health(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", faults="crash=1", seed=5, workers_max=1, crash_downtime=0.1)
    job_id = http.post(f"{ep.url}/run", json={"input": {}}).json()["id"]
    wait_for(lambda: ep.health()["jobs"]["retried"] >= 3, message="several crash retries")
    wait_for(lambda: ep.health()["workers"]["unhealthy"] == 1)
    health = ep.health()
    assert health["jobs"]["completed"] == 0 and health["jobs"]["failed"] == 0
    assert state(http, ep, job_id) in ("IN_QUEUE", "IN_PROGRESS")
    snap = ep.job(job_id)
    assert snap is not None and snap["retried"] >= 3


def test_crash_then_recovery(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", faults="crash=0.5", seed=2, crash_downtime=0.05)
    ids = [http.post(f"{ep.url}/run", json={"input": {"n": n}}).json()["id"] for n in range(6)]
    for job_id in ids:
        wait_for(lambda job_id=job_id: state(http, ep, job_id) == "COMPLETED")
    assert ep.health()["jobs"]["retried"] >= 1
    assert ep.health()["jobs"]["completed"] == 6


# ---- rate limits -----------------------------------------------------------------------


def test_rate_limit_per_operation(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", rate_limits={"status": 3})
    codes = [http.get(f"{ep.url}/status/x-u1").status_code for _ in range(5)]
    assert codes == [404, 404, 404, 429, 429]
    r = http.get(f"{ep.url}/status/x-u1")
    assert r.json()["error"] and 1 <= int(r.headers["Retry-After"]) <= 10
    assert ep.calls()["status"] == 6
    # other operations have their own budget (none here)
    assert all(http.get(f"{ep.url}/health").status_code == 200 for _ in range(10))


def test_rate_limit_window_slides(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", rate_limits={"run": 2}, rate_window=0.3)
    assert [http.post(f"{ep.url}/run", json={"input": {}}).status_code for _ in range(3)] == [
        200, 200, 429
    ]
    wait_for(lambda: http.post(f"{ep.url}/run", json={"input": {}}).status_code == 200)


def test_documented_limits_apply_by_default(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo")
    codes = [http.post(f"{ep.url}/purge-queue").status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # purge-queue: 2 per 10 s


def test_empty_rate_limits_disable(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", rate_limits={})
    assert all(http.post(f"{ep.url}/purge-queue").status_code == 200 for _ in range(5))
