"""One image's job: submit, wait, decide, conclude; each step returns what happened to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rpq.api import is_transient
from rpq.bodies import Body
from rpq.budget import SMALL_OUTPUT, Budget, Downloads, result_cost
from rpq.endpoints import Endpoints
from rpq.errors import APIError, InputError
from rpq.extract import OutputError, decode_worker_error
from rpq.journal import Journal
from rpq.metrics import JobRecord, ms_to_seconds, now_iso, round3
from rpq.poll import Poller, PollResult
from rpq.progress import Tracker
from rpq.states import ABANDONED, ENDED, STARTED, Column, Kind, Outcome, Status
from rpq.template import RequestBody
from rpq.write import ResultWriter


@dataclass
class Job:
    """One image on its way through the endpoint(s)."""

    rel: str
    key: str
    attempts: int
    column: str = ""  # the tracker column it is counted in; "" for none
    cancelled: list[str] = field(default_factory=list)  # job ids given up on, to resubmit


@dataclass(frozen=True)
class Ticket:
    """One submit the endpoint accepted: the job id, where it runs, and when it was sent."""

    job_id: str
    endpoint: str
    wall: float
    mono: float


class Decision(Enum):
    """What to do after a wait ended."""

    CONCLUDE = "conclude"  # record how it ended
    COLLECT = "collect"  # it ended while being cancelled: wait again, for its paid result
    REQUEUE = "requeue"  # cancelled to move to the active endpoint: submit again, free
    RESUBMIT = "resubmit"  # cancelled as stuck: submit again, using one of --job-retries
    RETRY_LATER = "retry_later"  # the submit failed on a passing fault: pause, send again,
    # using one of --job-retries


@dataclass(frozen=True)
class Saved:
    """What saving a completed job gave: its files, or why there are none."""

    outputs: list[str]
    error: str | None = None
    refetch: bool = False  # the endpoint still has the result: a rerun fetches it again


@dataclass(frozen=True)
class Ending:
    """How a job ended: its record, or None when it was never sent (the run is stopping)."""

    record: JobRecord | None
    refetch: bool = False  # keep it in flight in the journal: a rerun fetches the result


class Runner:
    """Takes jobs from submit to record; one per batch, shared by its job threads."""

    def __init__(
        self,
        endpoints: Endpoints,
        poller: Poller,
        writer: ResultWriter,
        journal: Journal,
        tracker: Tracker,
        *,
        job_retries: int,
        budget: Budget,
        stopping: Callable[[], bool],
        halted: Callable[[], bool],
        pause: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.endpoints = endpoints
        self.poller = poller
        self.writer = writer
        self.journal = journal
        self.tracker = tracker
        self.job_retries = job_retries
        self.budget = budget
        self.stopping = stopping  # submit nothing new
        self.halted = halted  # stop waiting: everything in flight is being cancelled
        # Wait this long before sending again; True when the run stops meanwhile.
        self.pause = pause or threading.Event().wait
        self.clock, self.wall = clock, wall

    def send(self, job: Job, body: Body) -> Ending:
        """Submit the image to the active endpoint and follow it to its end.

        The body is made for each submit and dropped once it is sent: waiting on the endpoint
        holds no image data, and a resubmit makes it again from the file.
        """
        return self._follow(job, None, body)

    def resume(self, job: Job, job_id: str, endpoint: str) -> Ending:
        """Follow a job an earlier run submitted; it is never sent again."""
        return self._follow(job, Ticket(job_id, endpoint, self.wall(), self.clock()), None)

    def _follow(self, job: Job, ticket: Ticket | None, body: Body | None) -> Ending:
        """Submit when there is no ticket, wait, and act on each decision until one concludes."""
        since = ticket.wall if ticket else self.wall()
        retries = self.job_retries
        self._count(job, Column.QUEUED)
        try:
            while True:
                if ticket is None:
                    if body is None or self.stopping():
                        return Ending(None)
                    sent = self._send_body(job, body, since, retries)
                    if sent is Decision.RETRY_LATER:
                        retries -= 1
                        self._count(job, "")
                        self.pause(min(30.0, 2.0 ** (self.job_retries - retries)))
                        self._count(job, Column.QUEUED)
                        continue
                    if sent is None or isinstance(sent, JobRecord):
                        return Ending(sent)
                    assert isinstance(sent, Ticket)
                    ticket, since = sent, sent.wall
                result = self._wait(job, ticket)
                decision = self._decide(job, ticket, result, body is not None, retries)
                if decision is Decision.CONCLUDE:
                    self._count(job, "")
                    return self._conclude(job, ticket, result)
                if decision is Decision.RESUBMIT:
                    retries -= 1
                if decision is not Decision.COLLECT:
                    ticket = None  # that attempt was cancelled: send the image again
        finally:
            self._count(job, "")
            self.budget.release_here()  # the last status reply read for this job

    # -- steps ------------------------------------------------------------------------------

    def _send_body(self, job: Job, body: Body, since: float,
                   retries: int) -> Ticket | JobRecord | Decision | None:
        """Make the body, submit it, drop it. None: the run stopped while waiting for memory."""
        self.budget.release_here()  # an earlier attempt's last reply: never wait while holding
        try:
            data = body.open()
        except InputError as exc:
            return JobRecord(input=job.rel, status=Status.FAILED, error=str(exc),
                             error_kind=Kind.BAD_INPUT, attempts=job.attempts,
                             timestamp=now_iso(self.wall()))
        if data is None:
            return None
        try:
            return self._submit(job, data, since, retries)
        finally:
            del data
            body.close()

    def _submit(self, job: Job, body: RequestBody, since: float,
                retries: int) -> Ticket | JobRecord | Decision:
        """POST /run to the active endpoint: the ticket, the record of a failed submit, or
        RETRY_LATER when it failed on a passing fault and --job-retries allows another go."""
        endpoint = self.endpoints.active
        caller = self.endpoints.caller(endpoint)
        job.attempts += 1
        self.journal.intent(job.key, job.rel, job.attempts)
        try:
            reply = caller.submit(body)
        except APIError as exc:
            self.journal.lost(job.key, "", "submit failed")
            if retries > 0 and is_transient(exc):
                self.tracker.add(Column.RETRIED)
                self.tracker.error(f"{job.rel}: submit failed ({exc}); sending it again after "
                                   "a pause (--job-retries)")
                return Decision.RETRY_LATER
            return submit_failed(job, endpoint, exc, since, now_iso(self.wall()))
        job_id = str(reply["id"])
        self.journal.submitted(job.key, job_id, endpoint, caller.client.base_url)
        return Ticket(job_id, endpoint, self.wall(), self.clock())

    def _wait(self, job: Job, ticket: Ticket) -> PollResult:
        def on_status(status: str) -> None:
            self.endpoints.saw(ticket.job_id, status)
            if status in STARTED:
                self._count(job, Column.RUNNING)
            elif status == Status.IN_QUEUE:
                self._count(job, Column.QUEUED)

        def stop() -> bool:
            return self.halted() or self.endpoints.moving(ticket.job_id)

        with self.endpoints.watching(ticket.job_id, job.key, ticket.endpoint):
            return self.poller.wait(self.endpoints.caller(ticket.endpoint), ticket.job_id,
                                    self.clock(), on_status=on_status, stop=stop)

    def _decide(self, job: Job, ticket: Ticket, result: PollResult, resubmittable: bool,
                retries: int) -> Decision:
        """Conclude, or give up on this attempt to send the image again (it has its bytes)."""
        if not resubmittable:
            return Decision.CONCLUDE
        if result.outcome is Outcome.INTERRUPTED and self.endpoints.moving(ticket.job_id):
            answer = self.endpoints.cancel(job.key, ticket.job_id, ticket.endpoint,
                                           f"moved to {self.endpoints.active}")
            self.endpoints.moved(ticket.job_id)
            if answer in ENDED:
                return Decision.COLLECT  # it ended before it could be moved
            job.cancelled.append(ticket.job_id)
            return Decision.REQUEUE
        if result.outcome is Outcome.STALLED and not self.stopping():
            return self._unstick(job, ticket, result.reason, retries)
        return Decision.CONCLUDE

    def _unstick(self, job: Job, ticket: Ticket, reason: str, retries: int) -> Decision:
        """A stalled job: fail over if the endpoint looks broken, else resubmit while allowed."""
        self.endpoints.fail_over(f"a job stalled on {ticket.endpoint}: {reason}")
        same = self.endpoints.active == ticket.endpoint
        if same and retries <= 0:
            return Decision.CONCLUDE
        answer = self.endpoints.cancel(job.key, ticket.job_id, ticket.endpoint,
                                       f"stalled: {reason}")
        if answer in ENDED:
            # It ran after all, since our last look (a poll may have failed): collect that
            # result rather than pay for the image twice.
            return Decision.COLLECT
        job.cancelled.append(ticket.job_id)
        self.tracker.add(Column.RETRIED)
        self.tracker.error(f"{job.rel}: {reason}; cancelled and resubmitted to "
                           f"{self.endpoints.active}")
        return Decision.RESUBMIT if same else Decision.REQUEUE

    def _conclude(self, job: Job, ticket: Ticket, result: PollResult) -> Ending:
        """Cancel what is given up on, save what completed, and say how it ended."""
        answer = ""
        if result.outcome in ABANDONED:
            result, answer = self._settle(job, ticket, result)
        total, timestamp = round(self.clock() - ticket.mono, 3), now_iso(self.wall())
        saved = self._save(job.rel, result)
        record = record_of(job, ticket, result, saved, answer, total=total, timestamp=timestamp)
        return Ending(record, refetch=saved is not None and saved.refetch)

    def _settle(self, job: Job, ticket: Ticket, result: PollResult) -> tuple[PollResult, str]:
        """Cancel a job given up on; if it ended meanwhile, its end (it is paid for)."""
        answer = self.endpoints.cancel(job.key, ticket.job_id, ticket.endpoint, result.reason)
        if answer in ENDED:
            ended = self.endpoints.fetch_ended(ticket.job_id, ticket.endpoint)
            if ended is not None:
                return PollResult(Outcome.TERMINAL, ended, "", result.started_at), answer
        return result, answer

    def _save(self, rel: str, result: PollResult) -> Saved | None:
        """Write a completed job's outputs; None when it did not complete."""
        body = result.body or {}
        if result.outcome is not Outcome.TERMINAL or body.get("status") != Status.COMPLETED:
            return None
        # A large status reply was counted before it was read (RunPodClient.on_big_body);
        # count what it did not cover (a reply sent without its length), so new images wait
        # to be prepared until the result is written. Images given as URLs are counted as
        # they are downloaded; a job holding nothing counted waits for room to read them.
        cost = result_cost(body.get("output"))
        held = max(0, cost - self.budget.held_here()) if cost >= SMALL_OUTPUT else 0
        self.budget.admit(held)
        downloads = Downloads(self.budget,
                              may_wait=held == 0 and self.budget.held_here() == 0)
        try:
            return Saved(self.writer.write(rel, body, downloads))
        except OutputError as exc:
            return Saved([], f"completed without a usable image: {exc}")
        except OSError as exc:
            return Saved([], f"could not save the result: {exc.strerror or exc}; a rerun "
                         "fetches it again", refetch=True)
        except APIError as exc:
            return Saved([], f"could not save the result: {exc}")
        finally:
            downloads.release()
            self.budget.release(held)

    def _count(self, job: Job, column: str) -> None:
        if job.column != column:
            self.tracker.move(job.column or None, column or None)
            job.column = column


# -- records: pure functions of what happened -------------------------------------------------


def submit_failed(job: Job, endpoint: str, exc: APIError, since: float,
                  timestamp: str) -> JobRecord:
    """The record of an image the endpoint never accepted."""
    four_xx = exc.status is not None and 400 <= exc.status < 500
    final = " (not retried: a 4xx is final)" if four_xx and not is_transient(exc) else ""
    return JobRecord(input=job.rel, status=Status.FAILED, attempts=job.attempts,
                     error_kind=Kind.HTTP_ERROR, error=f"submit failed: {exc}{final}",
                     submit_time=round3(since), endpoint=endpoint, timestamp=timestamp)


#: How a wait that rpq gave up on is recorded: (status, error kind).
_ABANDONED_AS = {
    Outcome.STALLED: (Status.CANCELLED, Kind.STALLED),
    Outcome.MAX_WAIT: (Status.TIMED_OUT, Kind.TIMED_OUT),
    Outcome.INTERRUPTED: (Status.CANCELLED, Kind.CANCELLED),
}


def record_of(job: Job, ticket: Ticket, result: PollResult, saved: Saved | None,
              cancel_answer: str, *, total: float, timestamp: str) -> JobRecord:
    """The record of a job the endpoint accepted, from how waiting for it ended."""
    record = _record(_facts(job, ticket, result, total, timestamp), result, saved,
                     cancel_answer)
    if job.cancelled and record.error:
        record.error += f" (earlier attempts cancelled: {', '.join(job.cancelled)})"
    return record


def _facts(job: Job, ticket: Ticket, result: PollResult, total: float,
           timestamp: str) -> dict[str, Any]:
    """What every record of an accepted job says, whatever its end."""
    body = result.body or {}
    worker = body.get("workerId")
    queue = ms_to_seconds(body.get("delayTime"))
    if queue is None and result.started_at is not None:
        queue = round3(result.started_at - ticket.mono)
    return dict(input=job.rel, job_id=ticket.job_id, submit_time=round3(ticket.wall),
                queue_time=queue, process_time=ms_to_seconds(body.get("executionTime")),
                total_time=total, attempts=job.attempts,
                worker_id=worker if isinstance(worker, str) else None,
                endpoint=ticket.endpoint, timestamp=timestamp)


def _record(base: dict[str, Any], result: PollResult, saved: Saved | None,
            cancel_answer: str) -> JobRecord:
    if result.outcome in _ABANDONED_AS:
        status, kind = _ABANDONED_AS[result.outcome]
        return JobRecord(status=status, error=f"{result.reason}; cancel: {cancel_answer}",
                         error_kind=kind, **base)
    if result.outcome is not Outcome.TERMINAL:
        kind = Kind.EXPIRED if result.outcome is Outcome.EXPIRED else Kind.HTTP_ERROR
        return JobRecord(status=Status.FAILED, error=result.reason, error_kind=kind, **base)
    body = result.body or {}
    status = str(body.get("status"))
    if saved is not None:  # it completed
        if saved.error is not None:
            return JobRecord(status=Status.FAILED, error=saved.error, error_kind=Kind.NO_OUTPUT,
                             **base)
        return JobRecord(status=Status.COMPLETED, outputs=saved.outputs, **base)
    if status == Status.FAILED:
        return JobRecord(status=Status.FAILED, error=decode_worker_error(body.get("error")),
                         error_kind=Kind.WORKER_ERROR, **base)
    if status == Status.TIMED_OUT:
        return JobRecord(status=Status.TIMED_OUT, error="the endpoint timed the job out "
                         "(executionTimeout or ttl)", error_kind=Kind.TIMED_OUT, **base)
    return JobRecord(status=Status.CANCELLED, error="cancelled", error_kind=Kind.CANCELLED,
                     **base)
