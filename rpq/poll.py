"""Polling a job to its end: long polls where the endpoint holds them, adaptive polls otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpq.api import is_transient
from rpq.errors import APIError
from rpq.limiter import Clock, Sleep
from rpq.submit import Caller

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
STARTED = frozenset({"IN_PROGRESS", "RUNNING"})
KNOWN = TERMINAL | STARTED | {"IN_QUEUE"}

#: Longest a single long poll is held; short enough to notice a stall and refresh the table.
MAX_LONG_POLL = 20.0


class StallDetector:
    """Tells a stalled queue from ordinary queueing behind the batch's own jobs.

    A queued job is stuck once it has waited `max_queue_time` and either the endpoint made no
    progress on the batch for that long (no job of the batch seen starting, running or
    finishing), or a job submitted clearly after it has already started (the queue moved past
    it). "Clearly": more than OVERTAKE_GRACE later, since requests sent at the same moment may
    reach the queue in either order.
    """

    OVERTAKE_GRACE = 1.0

    def __init__(self, max_queue_time: float, clock: Clock = time.monotonic) -> None:
        self.max_queue_time = max_queue_time
        self._clock = clock
        self._lock = threading.Lock()
        self._latest_started = float("-inf")  # submit time of the latest-submitted started job
        self.last_progress = clock()

    def observed(self, submitted_at: float, status: str) -> None:
        if status in STARTED or status in TERMINAL:
            with self._lock:
                self.last_progress = self._clock()
                if status in STARTED or status == "COMPLETED":
                    self._latest_started = max(self._latest_started, submitted_at)

    def stuck(self, queued_since: float) -> str | None:
        """Why the job counts as stuck, or None while it is only waiting its turn."""
        now = self._clock()
        waited = now - queued_since
        if waited < self.max_queue_time:
            return None
        with self._lock:
            idle = now - self.last_progress
            overtaken = self._latest_started > queued_since + self.OVERTAKE_GRACE
        if idle >= self.max_queue_time:
            return f"the endpoint made no progress on the batch for {idle:.0f}s"
        if overtaken:
            return f"still queued after {waited:.0f}s while jobs submitted later have started"
        return None


class Timing:
    """What the batch has learned of the endpoint: moving averages of queue and run times."""

    def __init__(self, alpha: float = 0.3) -> None:
        self._alpha = alpha
        self._lock = threading.Lock()
        self.execution: float | None = None
        self.delay: float | None = None

    def _mix(self, old: float | None, ms: object) -> float | None:
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0:
            return old
        sec = ms / 1000.0
        return sec if old is None else self._alpha * sec + (1 - self._alpha) * old

    def learn(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.execution = self._mix(self.execution, body.get("executionTime"))
            self.delay = self._mix(self.delay, body.get("delayTime"))

    def expected_end(self, queued_since: float, started_at: float | None) -> float | None:
        """When the job should be done, by what finished jobs took; None before any."""
        with self._lock:
            if self.execution is None:
                return None
            if started_at is not None:
                return started_at + self.execution
            return queued_since + (self.delay or 0.0) + self.execution


@dataclass
class PollResult:
    """How waiting for a job ended. `body` is the last job object seen (None if never)."""

    outcome: str  # terminal | stalled | max_wait | expired | error | interrupted
    body: dict[str, Any] | None
    reason: str = ""
    started_at: float | None = None  # monotonic time the job was first seen started


class Poller:
    """Waits for one job at a time (call from many threads); one instance per batch."""

    def __init__(
        self,
        detector: StallDetector,
        timing: Timing,
        *,
        max_wait: float,
        mode: str = "auto",
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.detector = detector
        self.timing = timing
        self.max_wait = max_wait
        self._long_polls = mode in ("auto", "sync")
        self._mode = mode
        self._clock = clock
        self._sleep = sleep
        self._unheld = 0
        self._lock = threading.Lock()

    @property
    def long_polls(self) -> bool:
        return self._long_polls

    def _fall_back(self) -> None:
        if self._mode == "auto":
            with self._lock:
                self._long_polls = False

    def wait(
        self,
        caller: Caller,
        job_id: str,
        submitted_at: float,
        *,
        on_status: Callable[[str], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> PollResult:
        client = caller.client
        queued_since = submitted_at
        started_at: float | None = None
        last: dict[str, Any] | None = None
        status = "IN_QUEUE"
        delay = 0.0
        errors = 0
        last_error: str | None = None  # why the latest poll failed, while it did
        while True:
            now = self._clock()
            if now - submitted_at >= self.max_wait:
                reason = f"no result within --max-wait {self.max_wait:.0f}s"
                return PollResult("max_wait", last, _explain(reason, status, last_error),
                                  started_at)
            if stop is not None and stop():
                return PollResult("interrupted", last, "interrupted", started_at)
            if status not in STARTED:
                stuck = self.detector.stuck(queued_since)
                if stuck:
                    return PollResult("stalled", last, _explain(stuck, status, last_error),
                                      started_at)
            if delay > 0:
                self._sleep(delay)
            long_poll = self._long_polls
            wait_s = self._long_poll_wait(submitted_at) if long_poll else 0.0
            asked = self._clock()
            wait_ms = int(wait_s * 1000) if long_poll else None
            try:
                body = caller.call(
                    "status-sync" if long_poll else "status",
                    lambda: client.status(job_id, wait_ms),  # noqa: B023 - called at once
                    attempts=1,
                )
            except APIError as exc:
                if exc.status == 404:
                    if long_poll and self._sync_route_missing(caller, job_id):
                        continue
                    return PollResult("expired", last, "the endpoint no longer knows the job "
                                      "(404: its ttl or result retention expired)", started_at)
                if long_poll and exc.status in (400, 405, 501):
                    self._fall_back()
                    continue
                # A success status whose body is no job (a proxy's page, a torn body) is a
                # glitch like a 502: asking again is harmless.
                unreadable = exc.status is not None and 200 <= exc.status < 300
                if not is_transient(exc) and not unreadable:
                    return PollResult("error", last, str(exc), started_at)
                errors += 1
                last_error = str(exc)
                delay = min(30.0, 0.5 * 2 ** min(errors, 6)) if exc.retry_after is None else min(
                    exc.retry_after, 60.0)
                continue
            errors = 0
            last_error = None
            last = body
            new_status = str(body.get("status", ""))
            self.detector.observed(submitted_at, new_status)
            if new_status != status and on_status is not None:
                on_status(new_status)
            if new_status in STARTED and started_at is None:
                started_at = self._clock()
            elif new_status == "IN_QUEUE" and status in STARTED:
                queued_since = self._clock()  # the endpoint put it back (worker lost)
            status = new_status
            if status in TERMINAL:
                self.timing.learn(body)
                return PollResult("terminal", body, "", started_at)
            if long_poll:
                held = self._clock() - asked
                delay = 0.0 if held >= wait_s * 0.5 else self._note_unheld(wait_s)
            else:
                delay = self._next_delay(queued_since, started_at, delay)

    # -- schedule ---------------------------------------------------------------------------

    def _long_poll_wait(self, submitted_at: float) -> float:
        remaining = self.max_wait - (self._clock() - submitted_at)
        wait = min(MAX_LONG_POLL, self.detector.max_queue_time / 2, remaining)
        return max(1.0, wait)

    def _note_unheld(self, wait_s: float) -> float:
        """A long poll came back early with nothing new: the endpoint does not hold them."""
        with self._lock:
            self._unheld += 1
            unheld = self._unheld
        if unheld >= 3:
            self._fall_back()  # takes the lock itself
        return min(1.0, wait_s)

    def _sync_route_missing(self, caller: Caller, job_id: str) -> bool:
        """status-sync said 404: if /status knows the job, the route is what is missing."""
        try:
            caller.call("status", lambda: caller.client.status(job_id), attempts=2)
        except APIError:
            return False
        self._fall_back()
        return not self._long_polls

    def _next_delay(self, queued_since: float, started_at: float | None,
                    previous: float) -> float:
        """Poll near the expected end of the job; back off gently while it is not due."""
        end = self.timing.expected_end(queued_since, started_at)
        if end is None:  # nothing learnt yet: a gentle exponential backoff
            return min(max(previous * 1.5, 0.5), 5.0)
        remaining = end - self._clock()
        if remaining > 0.05:
            # Land just after the expected end: one request usually finds the job done.
            return min(remaining + 0.05, 10.0)
        return min(max(previous * 1.5, 0.2), 2.0)  # overdue: look again soon


def _explain(reason: str, status: str, last_error: str | None) -> str:
    """A stall or timeout reason, plus what the endpoint last said when that is the cause."""
    if last_error:
        return f"{reason}; last poll failed: {last_error}"
    if status not in KNOWN:
        return f"{reason}; the endpoint answered status {status[:40]!r}, not a RunPod job status"
    return reason
