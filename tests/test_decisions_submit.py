"""Pinned decisions of the one retry policy (rpq.submit.Caller) over real HTTP: what is asked
again, how long rpq waits before it, how often, and what a 429 does to later calls."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import pytest
from endpointkit import FakeEndpoint, FakeJob, Reply
from helpers import FakeClock

from rpq.api import RunPodClient, TransportError
from rpq.errors import APIError
from rpq.limiter import Limiters
from rpq.submit import MAX_RETRY_AFTER, Caller, retrying

BODY = b'{"input": {"image": "x"}}'


@pytest.fixture(scope="module")
def _endpoint() -> Iterator[tuple[FakeEndpoint, list[Reply]]]:
    queue: list[Reply] = []

    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op in ("run", "status", "status-sync", "cancel", "health") and queue:
            return queue.pop(0)
        return None

    endpoint = FakeEndpoint(script)
    yield endpoint, queue
    endpoint.stop()


@pytest.fixture
def serve(_endpoint: tuple[FakeEndpoint, list[Reply]]) -> Callable[[list[Reply]], FakeEndpoint]:
    """serve(replies): an endpoint whose /run, /status(-sync), /cancel and /health answer
    `replies` in turn, then normally."""
    endpoint, queue = _endpoint

    def make(replies: list[Reply]) -> FakeEndpoint:
        queue[:] = replies
        endpoint.calls.clear()
        endpoint.jobs.clear()
        return endpoint

    return make


def _caller(endpoint: FakeEndpoint | str, clock: FakeClock, retries: int = 3,
            **kw: object) -> Caller:
    base = endpoint if isinstance(endpoint, str) else endpoint.base_url
    client = RunPodClient(base, "ep", "rpq_KEY_0123456789", timeout=(2.0, 2.0))
    limiters = Limiters(clock=clock, sleep=clock.sleep)
    return Caller(client, limiters, max_retries=retries, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def _error(status: int, retry_after: str | None = None) -> Reply:
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Reply(status, {"error": f"answer {status}"}, headers=headers)


def test_5xx_is_asked_again_with_growing_jittered_backoff(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500), _error(502), _error(503)])
    clock = FakeClock(50.0)
    reply = _caller(endpoint, clock).submit(BODY)
    assert reply["status"] == "IN_QUEUE" and reply["id"] in endpoint.jobs
    assert endpoint.calls["run"] == 4
    # 0.5 s doubling each time, plus up to 0.5 s of jitter so clients do not retry in step.
    assert len(clock.slept) == 3
    for slept, base in zip(clock.slept, (0.5, 1.0, 2.0), strict=True):
        assert base <= slept <= base + 0.5


def test_backoff_is_capped_at_30_seconds(serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500)] * 8)
    clock = FakeClock(50.0)
    _caller(endpoint, clock, retries=8).submit(BODY)
    assert max(clock.slept) <= 30.0 + 0.5
    assert clock.slept[-1] >= 30.0  # 0.5 * 2**7 = 64 s would be far too long


def test_retry_after_is_honoured_and_capped(serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(429, "7"), _error(503, "600")])
    clock = FakeClock(50.0)
    _caller(endpoint, clock).submit(BODY)
    assert clock.slept == [7.0, MAX_RETRY_AFTER]
    assert MAX_RETRY_AFTER == 60.0


def test_a_429_holds_later_calls_of_that_operation_only(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    # The clock stands still, so the pause the 429 put on /run is still on for the retry:
    # rpq waits once as told, then once more at the limiter, and /status waits not at all.
    endpoint = serve([_error(429, "3")])
    clock = FakeClock(50.0, frozen=True)
    caller = _caller(endpoint, clock)
    job_id = caller.submit(BODY)["id"]
    assert clock.slept == [3.0, 3.0]
    caller.call("status", lambda: caller.client.status(job_id))
    assert clock.slept == [3.0, 3.0]


def test_only_a_429_holds_later_calls(serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500), _error(503, "3")])
    clock = FakeClock(50.0, frozen=True)
    _caller(endpoint, clock).submit(BODY)
    assert len(clock.slept) == 2 and clock.slept[1] == 3.0  # no extra wait at the limiter


def test_cancels_are_paced_by_runpods_cancel_limit(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    # /cancel allows 100 per 10 s: rpq keeps to 90 with a burst of 9, so a Ctrl-C that cancels
    # a big batch at once does not earn 429s.
    endpoint = serve([])
    clock = FakeClock(50.0)
    caller = _caller(endpoint, clock)
    job_id = caller.submit(BODY)["id"]
    for _ in range(10):
        caller.cancel(job_id)
    assert clock.slept == [pytest.approx(10 / 90)]


def test_three_retries_by_default(serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500)] * 10)
    client = RunPodClient(endpoint.base_url, "ep", "rpq_KEY_0123456789", timeout=(2.0, 2.0))
    clock = FakeClock(50.0)
    caller = Caller(client, Limiters(clock=clock, sleep=clock.sleep), sleep=clock.sleep)
    with pytest.raises(APIError):
        caller.submit(BODY)
    assert endpoint.calls["run"] == 4


def test_the_policy_works_without_a_retry_hook(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(502)])
    client = RunPodClient(endpoint.base_url, "ep", "rpq_KEY_0123456789", timeout=(2.0, 2.0))
    clock = FakeClock(50.0)
    reply = retrying(3, sleep=clock.sleep)(lambda: client.run(BODY))
    assert reply["status"] == "IN_QUEUE" and len(clock.slept) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_a_4xx_is_final(serve: Callable[[list[Reply]], FakeEndpoint], status: int) -> None:
    endpoint = serve([_error(status)])
    clock = FakeClock(50.0)
    with pytest.raises(APIError) as caught:
        _caller(endpoint, clock).submit(BODY)
    assert caught.value.status == status
    assert endpoint.calls["run"] == 1 and clock.slept == []


def test_retries_stop_after_max_retries(serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500)] * 10)
    clock = FakeClock(50.0)
    with pytest.raises(APIError) as caught:
        _caller(endpoint, clock, retries=2).submit(BODY)
    assert caught.value.status == 500
    assert endpoint.calls["run"] == 3 and len(clock.slept) == 2


def test_attempts_override_the_callers_retries(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500)] * 10)
    clock = FakeClock(50.0)
    caller = _caller(endpoint, clock, retries=5)
    with pytest.raises(APIError):
        caller.call("run", lambda: caller.client.run(BODY), attempts=1)
    assert endpoint.calls["run"] == 1 and clock.slept == []
    with pytest.raises(APIError):
        caller.call("run", lambda: caller.client.run(BODY), attempts=0)  # still one try
    assert endpoint.calls["run"] == 2


def test_no_retries_is_one_try(serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(500)] * 3)
    with pytest.raises(APIError):
        _caller(endpoint, FakeClock(50.0), retries=0).submit(BODY)
    assert endpoint.calls["run"] == 1


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2"


def test_a_refused_connection_is_asked_again() -> None:
    clock = FakeClock(50.0)
    with pytest.raises(TransportError):
        _caller(_closed_port(), clock, retries=2).submit(BODY)
    assert len(clock.slept) == 2


def test_each_retry_is_reported_and_logged_before_the_wait(
        serve: Callable[[list[Reply]], FakeEndpoint], caplog: pytest.LogCaptureFixture) -> None:
    endpoint = serve([_error(429, "2"), _error(500)])
    clock = FakeClock(50.0)
    seen: list[tuple[str, int | None, float, int]] = []

    def on_retry(op: str, exc: BaseException, delay: float) -> None:
        seen.append((op, getattr(exc, "status", None), delay, len(clock.slept)))

    caplog.set_level(logging.INFO, logger="rpq")
    caller = _caller(endpoint, clock, on_retry=on_retry)
    job_id = caller.submit(BODY)["id"]
    caller.cancel(job_id)  # answered at once: nothing more to report
    assert [(op, status, n) for op, status, _, n in seen] == [("run", 429, 0), ("run", 500, 1)]
    assert seen[0][2] == 2.0 and seen[1][2] == clock.slept[1]
    messages = [r.getMessage() for r in caplog.records if r.name == "rpq"]
    assert messages[0].startswith("retrying in 2.0s after: ") and "429" in messages[0]
    assert len(messages) == 2


def test_cancel_goes_through_the_same_policy(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([])
    clock = FakeClock(50.0)
    caller = _caller(endpoint, clock)
    job_id = caller.submit(BODY)["id"]
    serve([_error(503, "4")])
    endpoint.jobs[job_id] = FakeJob(job_id, {})
    assert caller.cancel(job_id)["status"] == "CANCELLED"
    assert endpoint.jobs[job_id].cancelled and endpoint.calls["cancel"] == 2
    assert clock.slept == [4.0]


def test_health_is_retried_and_paced_by_its_own_limit(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([_error(503, "2")])
    clock = FakeClock(50.0, frozen=True)
    caller = _caller(endpoint, clock)
    assert "workers" in caller.health()
    assert endpoint.calls["health"] == 2 and clock.slept == [2.0]
    caller.health()  # the third /health at this instant: RunPod allows 30 per 10 s, burst 3
    caller.health()
    assert clock.slept == [2.0, pytest.approx(10 / 30)]
    serve([_error(503)])
    with pytest.raises(APIError):
        caller.health(attempts=1)
    assert endpoint.calls["health"] == 1


def test_status_asks_the_long_poll_route_when_told_to_wait(
        serve: Callable[[list[Reply]], FakeEndpoint]) -> None:
    endpoint = serve([])
    clock = FakeClock(50.0)
    caller = _caller(endpoint, clock)
    job_id = caller.submit(BODY)["id"]
    assert caller.status(job_id)["status"] == "COMPLETED"
    assert caller.status(job_id, wait_ms=1000)["status"] == "COMPLETED"
    assert (endpoint.calls["status"], endpoint.calls["status-sync"]) == (1, 1)
    serve([_error(502), _error(502)])
    endpoint.jobs[job_id] = FakeJob(job_id, {"image": "x"})
    with pytest.raises(APIError):
        caller.status(job_id, attempts=2)
    assert endpoint.calls["status"] == 2
