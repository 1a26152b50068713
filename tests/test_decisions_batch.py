"""Pinned decisions, end to end through `rpq batch` against a scripted endpoint: when a job
counts as stalled, how a long poll falls back to /status polls, which answers are asked again
(429), and the user's --rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from endpointkit import (
    FakeEndpoint,
    FakeJob,
    Reply,
    Script,
    job_records,
    scripted_batch,
)

POLLS = ("status", "status-sync")


class Story:
    """Roles by order of submission (either image may be sent first): the early job runs long,
    the late one is sent `--rate` later and finishes at once; resubmissions finish at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.order: list[FakeJob] = []
        self.created: dict[str, float] = {}  # job id -> when /run created it
        self.late_done_at: int | None = None  # polls of the early job when the late one ended
        self.requeued = False

    def role(self, op: str, job: FakeJob) -> str:
        with self.lock:
            if op == "run":
                self.created[job.id] = time.monotonic()
                self.order.append(job)
            index = next(i for i, known in enumerate(self.order) if known is job)
        return ("early", "late")[index] if index < 2 else "resubmitted"

    def late_finished(self) -> None:
        with self.lock:
            if self.late_done_at is None:
                self.late_done_at = self.order[0].polls

    def early_poll(self, op: str, job: FakeJob) -> bool:
        """Whether this request polls the early job, the one a script answers; the late job
        and resubmissions get the normal answer (COMPLETED)."""
        role = self.role(op, job)
        if op in POLLS and role == "late":
            self.late_finished()
        return op in POLLS and role == "early"

    def polls_since_late(self, job: FakeJob) -> int:
        with self.lock:
            return -1 if self.late_done_at is None else job.polls - self.late_done_at

    def age(self, job: FakeJob) -> float:
        return time.monotonic() - self.created[job.id]


def _answer(job: FakeJob, status: str) -> Reply:
    return Reply(200, {"id": job.id, "status": status})


@pytest.mark.timeout(60)
def test_a_running_job_is_never_cancelled_as_stalled(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    # The early job runs on; the late one, sent 1.5 s later, starts and finishes meanwhile.
    # Were the early job judged like a queued one, it would count as overtaken and be
    # cancelled: a started job is paid for, so rpq waits for it instead.
    story = Story()

    def script(op: str, job: FakeJob | None) -> Reply | None:
        if job is None or not story.early_poll(op, job):
            return None
        if story.polls_since_late(job) < 3:
            return _answer(job, "IN_PROGRESS")
        return None

    endpoint = fake_endpoint(script)
    run, _, out = scripted_batch(tmp_path, endpoint, ["a", "b"], "--rate", "1/1.5",
                                 "--max-queue-time", "1")
    assert endpoint.calls["cancel"] == 0, run.stderr
    assert endpoint.calls["run"] == 2
    assert run.code == 0, run.stderr
    assert {name: job["status"] for name, job in job_records(out).items()} == {
        "a.png": "COMPLETED", "b.png": "COMPLETED"}


@pytest.mark.timeout(60)
def test_a_job_back_in_the_queue_waits_from_when_it_went_back(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    # The early job runs, loses its worker and goes back to IN_QUEUE after the late one (sent
    # 1.5 s after it) has finished. Its wait counts from its return to the queue: the late job
    # did not overtake it then, and a moment in the queue is no stall. Counted from its first
    # submission, it would be cancelled.
    story = Story()
    max_queue_time = 2.0

    def script(op: str, job: FakeJob | None) -> Reply | None:
        if job is None or not story.early_poll(op, job):
            return None
        if story.polls_since_late(job) < 2 or story.age(job) < max_queue_time + 0.5:
            return _answer(job, "IN_PROGRESS")
        if not story.requeued:
            story.requeued = True
            return _answer(job, "IN_QUEUE")  # its worker was lost
        return None  # a new worker ran it

    endpoint = fake_endpoint(script)
    run, _, out = scripted_batch(tmp_path, endpoint, ["a", "b"], "--rate", "1/1.5",
                                 "--max-queue-time", str(max_queue_time))
    assert endpoint.calls["cancel"] == 0, run.stderr
    assert endpoint.calls["run"] == 2
    assert run.code == 0, run.stderr
    assert story.requeued and story.order[0].polls >= 3  # running, queued again, then done
    assert {job["status"] for job in job_records(out).values()} == {"COMPLETED"}


# --- long polls: when /status-sync is refused or missing -------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("refusal", [400, 405, 501])
def test_a_refused_long_poll_falls_back_to_status_polls(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint], refusal: int) -> None:
    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op == "status-sync":
            return Reply(refusal, {"error": "method not allowed here"})
        return None

    endpoint = fake_endpoint(script)
    run, src, out = scripted_batch(tmp_path, endpoint, ["a"], "--max-wait", "20")
    assert run.code == 0, run.stderr
    assert (out / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert endpoint.calls["status-sync"] == 1  # one refusal is enough: no retries of it
    assert endpoint.calls["status"] >= 1 and endpoint.calls["run"] == 1


@pytest.mark.timeout(60)
def test_a_missing_long_poll_route_falls_back_when_status_knows_the_job(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    # A proxy without the /status-sync route answers 404 for it; /status knows the job, so the
    # route is what is missing, not the job.
    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op == "status-sync":
            return Reply(404, {"error": "no such route"})
        return None

    endpoint = fake_endpoint(script)
    run, src, out = scripted_batch(tmp_path, endpoint, ["a"], "--max-wait", "20")
    assert run.code == 0, run.stderr
    assert (out / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert endpoint.calls["status-sync"] == 1 and endpoint.calls["run"] == 1


@pytest.mark.timeout(60)
def test_a_job_unknown_to_both_routes_has_expired(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op in POLLS:
            return Reply(404, {"error": "job not found"})
        return None

    endpoint = fake_endpoint(script)
    run, _, out = scripted_batch(tmp_path, endpoint, ["a"], "--max-wait", "20")
    assert run.code == 1
    job = job_records(out)["a.png"]
    assert (job["status"], job["error_kind"]) == ("FAILED", "expired")
    assert "404" in job["error"]
    assert endpoint.calls["run"] == 1  # an expired job is reported, not paid for twice
    assert not (out / "a.png").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", POLLS)
def test_a_final_poll_error_fails_the_job_at_once(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint], op: str) -> None:
    # 403 is no glitch: asking again cannot help, so the job fails now, with the reason,
    # rather than being polled until --max-wait.
    mode = "status" if op == "status" else "auto"

    def script(asked: str, job: FakeJob | None) -> Reply | None:
        if asked == op and job is not None and job.name == "a":
            return Reply(403, {"error": "forbidden for this key"})
        return None

    endpoint = fake_endpoint(script)
    run, _, out = scripted_batch(tmp_path, endpoint, ["a", "b"], "--max-wait", "20",
                                 "--poll", mode)
    assert run.code == 1
    jobs = job_records(out)
    assert (jobs["a.png"]["status"], jobs["a.png"]["error_kind"]) == ("FAILED", "http_error")
    assert "403" in jobs["a.png"]["error"] and "forbidden for this key" in jobs["a.png"]["error"]
    assert jobs["b.png"]["status"] == "COMPLETED"  # the rest of the batch is unharmed
    assert endpoint.calls["run"] == 2


@pytest.mark.timeout(60)
def test_429_is_transient_on_submit_and_on_poll(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    # Too many requests: wait as told and ask again; never a failure, never a second job.
    seen: dict[str, int] = {}

    def script(op: str, job: FakeJob | None) -> Reply | None:
        seen[op] = seen.get(op, 0) + 1
        if op in ("run", "status-sync") and seen[op] == 1:
            return Reply(429, {"error": "slow down"}, headers=(("Retry-After", "0"),))
        return None

    endpoint = fake_endpoint(script)
    run, src, out = scripted_batch(tmp_path, endpoint, ["a"], "--max-wait", "20")
    assert run.code == 0, run.stderr
    assert (out / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert endpoint.calls["run"] == 2 and endpoint.calls["status-sync"] >= 2
    assert job_records(out)["a.png"]["attempts"] == 1  # one job, its /run asked twice


# --- the user's --rate ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_users_rate_paces_submissions_end_to_end(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    # --rate 2/1: two jobs a second, no burst, so 4 images take 1.5 s to submit at the least.
    # Without it, RunPod's own limit would send all four at once.
    arrivals: list[float] = []

    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op == "run":
            arrivals.append(time.monotonic())
        return None

    endpoint = fake_endpoint(script)
    run, _, _ = scripted_batch(tmp_path, endpoint, ["a", "b", "c", "d"], "--rate", "2/1",
                               "--concurrency", "4")
    assert run.code == 0, run.stderr
    assert len(arrivals) == 4
    # Measured at the server: the first request may be late by its trip, never the others early.
    assert arrivals[-1] - arrivals[0] >= 1.5 - 0.25
    assert arrivals[2] - arrivals[0] >= 1.0 - 0.25
