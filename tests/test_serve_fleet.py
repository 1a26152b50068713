"""rpq serve queue semantics: scaling, health, FIFO, policies, retention, webhooks, pause."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from helpers import Gate, WebhookReceiver, wait_for

from rpq.local import LocalEndpoint

Make = Callable[..., LocalEndpoint]


def run(http: requests.Session, ep: LocalEndpoint, body: dict[str, Any]) -> str:
    r = http.post(f"{ep.url}/run", json=body, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def status_code(http: requests.Session, ep: LocalEndpoint, job_id: str) -> int:
    return http.get(f"{ep.url}/status/{job_id}", timeout=5).status_code


def state(http: requests.Session, ep: LocalEndpoint, job_id: str) -> str:
    return str(http.get(f"{ep.url}/status/{job_id}", timeout=5).json()["status"])


def workers(ep: LocalEndpoint) -> dict[str, int]:
    return ep.health()["workers"]


def test_cold_start_then_idle_then_released(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", cold_start=0.3, idle_timeout=0.3)
    assert workers(ep)["initializing"] == 0
    job_id = run(http, ep, {"input": {}})
    assert workers(ep)["initializing"] == 1
    assert ep.health()["jobs"]["inQueue"] == 1
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")
    assert workers(ep)["idle"] == 1 and workers(ep)["ready"] == 0
    doc = http.get(f"{ep.url}/status/{job_id}").json()
    assert doc["delayTime"] >= 300  # includes the cold start
    wait_for(lambda: sum(workers(ep).values()) == 0, message="idle worker released")
    # the next job pays the cold start again
    job_id = run(http, ep, {"input": {}})
    assert workers(ep)["initializing"] == 1
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")


def test_always_on_workers_are_ready_and_stay(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", workers_min=1, cold_start=0.1, idle_timeout=0.1)
    assert workers(ep)["initializing"] == 1
    wait_for(lambda: workers(ep)["ready"] == 1)
    job_id = run(http, ep, {"input": {}})
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")
    assert http.get(f"{ep.url}/status/{job_id}").json()["delayTime"] < 100  # warm
    time.sleep(0.3)  # longer than idle_timeout: an always-on worker must still be there
    assert workers(ep) == {
        "idle": 0, "initializing": 0, "ready": 1, "running": 0, "throttled": 0, "unhealthy": 0
    }


def test_scales_to_workers_max_and_reports_throttled(
    http: requests.Session, make_endpoint: Make, gate: Gate
) -> None:
    ep = make_endpoint(handler=gate, workers_max=4, throttled=1)
    ids = [run(http, ep, {"input": {"gate": str(i)}}) for i in range(5)]
    wait_for(lambda: workers(ep)["running"] == 3)
    health = ep.health()
    assert health["workers"]["throttled"] == 1
    assert health["jobs"] == {
        "completed": 0, "failed": 0, "inProgress": 3, "inQueue": 2, "retried": 0
    }
    gate.open_all()
    for job_id in ids:
        wait_for(lambda job_id=job_id: state(http, ep, job_id) == "COMPLETED")
    assert ep.health()["jobs"]["completed"] == 5
    assert len({ep.job(i)["workerId"] for i in ids}) == 3  # type: ignore[index]


def test_fifo_order(http: requests.Session, make_endpoint: Make) -> None:
    order: list[int] = []
    ep = make_endpoint(handler=lambda job: order.append(job["input"]["n"]), workers_max=1)
    ep.pause()
    ids = [run(http, ep, {"input": {"n": n}}) for n in range(6)]
    ep.resume()
    wait_for(lambda: all(state(http, ep, i) == "COMPLETED" for i in ids))
    assert order == list(range(6))


def test_pause_stalls_pickup_until_resume(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", workers_min=1)
    wait_for(lambda: workers(ep)["ready"] == 1)
    ep.pause()
    job_id = run(http, ep, {"input": {}})
    time.sleep(0.2)  # a paused endpoint must not pick the job up in this time
    assert state(http, ep, job_id) == "IN_QUEUE"
    ep.resume()
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")


def test_low_priority_does_not_scale_up(http: requests.Session, make_endpoint: Make) -> None:
    started: list[str] = []
    ep = make_endpoint(handler=lambda job: started.append(job["input"]["name"]))
    low = run(http, ep, {"input": {"name": "low"}, "policy": {"lowPriority": True}})
    time.sleep(0.2)  # long enough for a worker to start if one were asked for
    assert state(http, ep, low) == "IN_QUEUE"
    assert sum(workers(ep).values()) == 0
    normal = run(http, ep, {"input": {"name": "normal"}})
    wait_for(lambda: state(http, ep, normal) == "COMPLETED" and state(http, ep, low) == "COMPLETED")
    assert started[0] == "low"  # FIFO: the worker that came up takes the older job first


def test_low_priority_runs_on_warm_worker(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", workers_min=1)
    low = run(http, ep, {"input": {}, "policy": {"lowPriority": True}})
    wait_for(lambda: state(http, ep, low) == "COMPLETED")


def test_ttl_deletes_queued_job(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo")
    ep.pause()
    job_id = run(http, ep, {"input": {}, "policy": {"ttl": 300}})
    assert status_code(http, ep, job_id) == 200
    wait_for(lambda: status_code(http, ep, job_id) == 404)
    assert ep.health()["jobs"]["inQueue"] == 0
    ep.resume()


def test_ttl_deletes_running_job(http: requests.Session, make_endpoint: Make, gate: Gate) -> None:
    ep = make_endpoint(handler=gate)
    job_id = run(http, ep, {"input": {"gate": "t"}, "policy": {"ttl": 400}})
    wait_for(lambda: state(http, ep, job_id) == "IN_PROGRESS")
    wait_for(lambda: status_code(http, ep, job_id) == 404)
    assert ep.health()["jobs"]["inProgress"] == 0
    assert http.post(f"{ep.url}/cancel/{job_id}").status_code == 404
    gate.open("t")
    wait_for(lambda: workers(ep)["running"] == 0)
    assert ep.health()["jobs"]["completed"] == 0


def test_ttl_expiry_wakes_long_poll(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo")
    ep.pause()
    job_id = run(http, ep, {"input": {}, "policy": {"ttl": 200}})
    started = time.monotonic()
    r = http.get(f"{ep.url}/status-sync/{job_id}?wait=5000", timeout=10)
    assert r.status_code == 404 and time.monotonic() - started < 4  # woken before the 5 s wait


def test_execution_timeout(http: requests.Session, make_endpoint: Make, gate: Gate) -> None:
    ep = make_endpoint(handler=gate)
    job_id = run(http, ep, {"input": {"gate": "x"}, "policy": {"executionTimeout": 300}})
    wait_for(lambda: state(http, ep, job_id) == "IN_PROGRESS")
    doc = wait_for(
        lambda: (d := http.get(f"{ep.url}/status/{job_id}").json())["status"] == "TIMED_OUT" and d
    )
    assert 250 <= doc["executionTime"] < 2000
    assert "timeout" in doc["error"]
    assert workers(ep)["running"] == 1  # the handler has not returned yet
    gate.open("x")
    wait_for(lambda: workers(ep)["running"] == 0)
    assert state(http, ep, job_id) == "TIMED_OUT"
    assert ep.health()["jobs"]["failed"] == 1
    # TIMED_OUT can be retried
    assert http.post(f"{ep.url}/retry/{job_id}").json()["status"] == "IN_QUEUE"
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")


def test_endpoint_execution_timeout_default(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="sleep", execution_timeout=0.2)
    job_id = run(http, ep, {"input": {"seconds": 5}})
    wait_for(lambda: state(http, ep, job_id) == "TIMED_OUT")


def test_run_retention(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", run_retention=0.3)
    job_id = run(http, ep, {"input": {}})
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")
    wait_for(lambda: status_code(http, ep, job_id) == 404)
    assert ep.job(job_id) is None
    assert http.post(f"{ep.url}/retry/{job_id}").status_code == 404


def test_sync_retention(http: requests.Session, make_endpoint: Make) -> None:
    # 3 s: long enough that a busy machine still asks for the sync result while it is kept.
    ep = make_endpoint(handler="echo", sync_retention=3, run_retention=60)
    sync_id = http.post(f"{ep.url}/runsync", json={"input": {}}).json()["id"]
    assert status_code(http, ep, sync_id) == 200
    run_id = run(http, ep, {"input": {}})
    wait_for(lambda: state(http, ep, run_id) == "COMPLETED")
    wait_for(lambda: status_code(http, ep, sync_id) == 404)
    assert status_code(http, ep, run_id) == 200


def test_handler_gets_a_copy_of_input(http: requests.Session, make_endpoint: Make) -> None:
    def mutate(job: dict) -> dict:
        job["input"]["n"] += 1
        return job["input"]

    ep = make_endpoint(handler=mutate)
    job_id = run(http, ep, {"input": {"n": 1}})
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")
    assert ep.job(job_id)["input"] == {"n": 1}  # type: ignore[index]


# ---- webhooks --------------------------------------------------------------------------


def test_webhook_gets_the_status_body(http: requests.Session, make_endpoint: Make,
                                     webhook: Callable[..., WebhookReceiver]) -> None:
    ep = make_endpoint(handler="echo")
    receiver = webhook()
    job_id = run(http, ep, {"input": {"a": 1}, "webhook": receiver.url})
    wait_for(lambda: receiver.bodies)
    status_doc = http.get(f"{ep.url}/status/{job_id}").json()
    assert receiver.bodies == [status_doc]
    assert status_doc["status"] == "COMPLETED"


def test_webhook_is_retried_twice(http: requests.Session, make_endpoint: Make,
                                  webhook: Callable[..., WebhookReceiver]) -> None:
    ep = make_endpoint(handler="echo", webhook_retry_interval=0.05)
    receiver = webhook(failures=5)
    run(http, ep, {"input": {}, "webhook": receiver.url})
    wait_for(lambda: len(receiver.bodies) == 3)
    time.sleep(0.2)  # no fourth attempt comes
    assert len(receiver.bodies) == 3
    receiver = webhook(failures=1)
    run(http, ep, {"input": {}, "webhook": receiver.url})
    wait_for(lambda: len(receiver.bodies) == 2)


def test_unreachable_webhook_does_not_hurt(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", webhook_retry_interval=0.01, webhook_timeout=0.5)
    job_id = run(http, ep, {"input": {}, "webhook": "http://127.0.0.1:9/none"})
    wait_for(lambda: state(http, ep, job_id) == "COMPLETED")
