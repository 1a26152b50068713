"""How a job's end becomes its record: the pure part of concluding a job."""

from __future__ import annotations

import json

import pytest

from rpq.errors import APIError
from rpq.job import Job, Saved, Ticket, record_of, submit_failed
from rpq.poll import PollResult
from rpq.states import Kind, Outcome, Status

TICKET = Ticket(job_id="j-2", endpoint="ep", wall=1_700_000_000.1234, mono=100.0)


def job(*cancelled: str) -> Job:
    return Job(rel="cat.png", key="k", attempts=2, cancelled=list(cancelled))


def conclude(result: PollResult, saved: Saved | None = None, answer: str = "",
             j: Job | None = None) -> tuple[str, str | None, str | None]:
    record = record_of(j or job(), TICKET, result, saved, answer, total=4.5,
                       timestamp="2026-12-01T21:00:00.000Z")
    return record.status, record.error_kind, record.error


@pytest.mark.parametrize(("outcome", "status", "kind"), [
    (Outcome.STALLED, Status.CANCELLED, Kind.STALLED),
    (Outcome.MAX_WAIT, Status.TIMED_OUT, Kind.TIMED_OUT),
    (Outcome.INTERRUPTED, Status.CANCELLED, Kind.CANCELLED),
])
def test_a_job_given_up_on_says_why_and_what_cancel_answered(
    outcome: Outcome, status: str, kind: str
) -> None:
    result = PollResult(outcome, {"status": "IN_QUEUE"}, "queued for 60s")
    expected = (status, kind, "queued for 60s; cancel: CANCELLED")
    assert conclude(result, answer="CANCELLED") == expected


def test_an_expired_job_and_a_failed_poll_are_failures_of_their_own_kind() -> None:
    expired = PollResult(Outcome.EXPIRED, None, "the endpoint no longer knows the job")
    broken = PollResult(Outcome.ERROR, None, "HTTP 401")
    assert conclude(expired) == (Status.FAILED, Kind.EXPIRED, expired.reason)
    assert conclude(broken) == (Status.FAILED, Kind.HTTP_ERROR, "HTTP 401")


def test_a_completed_job_is_done_only_when_its_outputs_were_saved() -> None:
    body = {"status": "COMPLETED", "output": {"image": "..."}}
    done = record_of(job(), TICKET, PollResult(Outcome.TERMINAL, body), Saved(["cat.png"]), "",
                     total=4.5, timestamp="t")
    assert (done.status, done.outputs, done.error) == (Status.COMPLETED, ["cat.png"], None)
    unsaved = conclude(PollResult(Outcome.TERMINAL, body), Saved([], "disk full", refetch=True))
    assert unsaved == (Status.FAILED, Kind.NO_OUTPUT, "disk full")


def test_terminal_statuses_map_to_their_kind() -> None:
    failed = {"status": "FAILED", "error": json.dumps({"error_message": "CUDA out of memory"})}
    timed_out = {"status": "TIMED_OUT"}
    cancelled = {"status": "CANCELLED"}
    status, kind, error = conclude(PollResult(Outcome.TERMINAL, failed))
    assert (status, kind) == (Status.FAILED, Kind.WORKER_ERROR)
    assert error is not None and "CUDA out of memory" in error
    status, kind, _ = conclude(PollResult(Outcome.TERMINAL, timed_out))
    assert (status, kind) == (Status.TIMED_OUT, Kind.TIMED_OUT)
    expected = (Status.CANCELLED, Kind.CANCELLED, "cancelled")
    assert conclude(PollResult(Outcome.TERMINAL, cancelled)) == expected


def test_times_come_from_the_endpoint_in_ms_else_from_what_rpq_saw() -> None:
    body = {"status": "FAILED", "delayTime": 1500, "executionTime": 250, "workerId": "w1"}
    record = record_of(job(), TICKET, PollResult(Outcome.TERMINAL, body, started_at=103.0), None,
                       "", total=4.5, timestamp="t")
    assert (record.queue_time, record.process_time, record.worker_id) == (1.5, 0.25, "w1")
    assert (record.submit_time, record.total_time, record.attempts) == (1_700_000_000.123, 4.5, 2)
    # No delayTime (or a nonsense one): the queue time is how long rpq saw it wait to start.
    for delay in (None, -5, True, "1500"):
        body = {"status": "FAILED", "delayTime": delay, "workerId": 7}
        record = record_of(job(), TICKET, PollResult(Outcome.TERMINAL, body, started_at=103.25),
                           None, "", total=4.5, timestamp="t")
        assert (record.queue_time, record.process_time, record.worker_id) == (3.25, None, None)


def test_earlier_attempts_are_named_in_the_error_only() -> None:
    body = {"status": "TIMED_OUT"}
    _, _, error = conclude(PollResult(Outcome.TERMINAL, body), j=job("j-0", "j-1"))
    assert error is not None and error.endswith("(earlier attempts cancelled: j-0, j-1)")
    done = record_of(job("j-0"), TICKET, PollResult(Outcome.TERMINAL, {"status": "COMPLETED"}),
                     Saved(["cat.png"]), "", total=1.0, timestamp="t")
    assert done.error is None


def test_a_refused_submit_says_when_it_is_final() -> None:
    refused = submit_failed(job(), "ep", APIError("HTTP 400: bad input", status=400), 12.0, "t")
    throttled = submit_failed(job(), "ep", APIError("HTTP 429", status=429), 12.0, "t")
    assert refused.status == Status.FAILED and refused.error_kind == Kind.HTTP_ERROR
    assert refused.error == "submit failed: HTTP 400: bad input (not retried: a 4xx is final)"
    assert throttled.error == "submit failed: HTTP 429"
    assert (refused.job_id, refused.endpoint, refused.submit_time) == (None, "ep", 12.0)
