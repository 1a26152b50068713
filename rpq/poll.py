"""Polling a job to its end: long polls where the endpoint holds them, adaptive polls otherwise."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpq.api import is_transient
from rpq.errors import APIError
from rpq.limiter import Clock, Sleep
from rpq.metrics import ms_to_seconds
from rpq.states import KNOWN, STARTED, TERMINAL, Outcome, Status
from rpq.submit import Caller

log = logging.getLogger("rpq.poll")

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
                if status in STARTED or status == Status.COMPLETED:
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
        sec = ms_to_seconds(ms)
        if sec is None:
            return old
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

    outcome: Outcome
    body: dict[str, Any] | None
    reason: str = ""
    started_at: float | None = None  # monotonic time the job was first seen started


class Poller:
    """Waits for one job at a time (call from many threads); one instance per batch.

    `wait` is one loop over three concerns, each in its own place: when to give up
    (`_give_up`), how to ask (`_Route`: long poll or /status) and how long to pause between
    asks (`_ErrorBackoff` after a failure, `_next_delay` or `_Route.pause_after` otherwise).
    """

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
        self._route = _Route(mode, clock)
        self._clock = clock
        self._sleep = sleep

    def wait(
        self,
        caller: Caller,
        job_id: str,
        submitted_at: float,
        *,
        on_status: Callable[[str], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> PollResult:
        watch = _Watch(submitted_at, submitted_at, on_status)
        backoff = _ErrorBackoff()
        delay = 0.0
        while True:
            ended = self._give_up(watch, backoff.last_error, stop)
            if ended is not None:
                return ended
            if delay > 0:
                self._sleep(delay)
            step = self._poll_once(caller, job_id, watch, backoff, delay)
            if isinstance(step, PollResult):
                return step
            delay = step

    def _give_up(self, watch: _Watch, last_error: str | None,
                 stop: Callable[[], bool] | None) -> PollResult | None:
        """The end of the wait when rpq should stop: past --max-wait, told to stop, or stalled."""
        if self._clock() - watch.submitted_at >= self.max_wait:
            reason = f"no result within --max-wait {self.max_wait:.0f}s"
            return watch.ended(Outcome.MAX_WAIT, _explain(reason, watch.status, last_error))
        if stop is not None and stop():
            return watch.ended(Outcome.INTERRUPTED, "interrupted")
        if watch.status not in STARTED:
            stuck = self.detector.stuck(watch.queued_since)
            if stuck:
                return watch.ended(Outcome.STALLED, _explain(stuck, watch.status, last_error))
        return None

    def _poll_once(self, caller: Caller, job_id: str, watch: _Watch, backoff: _ErrorBackoff,
                   delay: float) -> PollResult | float:
        """Ask once; the end of the wait, or the pause before asking again."""
        try:
            answer = self._route.ask(caller, job_id, lambda: self._hold(watch.submitted_at))
        except APIError as exc:
            if exc.status == 404:
                return watch.ended(Outcome.EXPIRED, "the endpoint no longer knows the job "
                                   "(404: its ttl or result retention expired)")
            pause = backoff.failed(exc)
            return watch.ended(Outcome.ERROR, str(exc)) if pause is None else pause
        if answer is None:  # the route changed under this ask: ask again the new way
            return delay
        backoff.succeeded()
        self.detector.observed(watch.submitted_at, str(answer.body.get("status", "")))
        watch.saw(answer.body, self._clock)
        if watch.status in TERMINAL:
            self.timing.learn(answer.body)
            return PollResult(Outcome.TERMINAL, answer.body, "", watch.started_at)
        if answer.long_poll:
            return self._route.pause_after(answer)
        return self._next_delay(watch.queued_since, watch.started_at, delay)

    # -- schedule ---------------------------------------------------------------------------

    def _hold(self, submitted_at: float) -> float:
        """How long to ask the endpoint to hold a long poll."""
        remaining = self.max_wait - (self._clock() - submitted_at)
        wait = min(MAX_LONG_POLL, self.detector.max_queue_time / 2, remaining)
        return max(1.0, wait)

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


class _Watch:
    """What one wait has seen of its job: the last answer, the status, when it started."""

    def __init__(self, submitted_at: float, queued_since: float,
                 on_status: Callable[[str], None] | None) -> None:
        self.submitted_at = submitted_at
        self.queued_since = queued_since
        self.on_status = on_status
        self.status: str = Status.IN_QUEUE
        self.last: dict[str, Any] | None = None
        self.started_at: float | None = None

    def saw(self, body: dict[str, Any], clock: Clock) -> None:
        status = str(body.get("status", ""))
        self.last = body
        if status != self.status and self.on_status is not None:
            self.on_status(status)
        if status in STARTED and self.started_at is None:
            self.started_at = clock()
        elif status == Status.IN_QUEUE and self.status in STARTED:
            self.queued_since = clock()  # the endpoint put it back (worker lost)
        self.status = status

    def ended(self, outcome: Outcome, reason: str) -> PollResult:
        return PollResult(outcome, self.last, reason, self.started_at)


class _ErrorBackoff:
    """Failed polls: which are worth asking again, and how long to pause before that."""

    def __init__(self) -> None:
        self.failures = 0
        self.last_error: str | None = None  # why the latest poll failed, while it did

    def failed(self, exc: APIError) -> float | None:
        """The pause before the next poll, or None when asking again cannot help."""
        # A success status whose body is no job (a proxy's page, a torn body) is a glitch
        # like a 502: asking again is harmless.
        unreadable = exc.status is not None and 200 <= exc.status < 300
        if not is_transient(exc) and not unreadable:
            return None
        self.failures += 1
        self.last_error = str(exc)
        pause = min(30.0, 0.5 * 2 ** min(self.failures, 6)) if exc.retry_after is None \
            else min(exc.retry_after, 60.0)
        log.info("polling again in %.1fs after: %s", pause, exc)
        return pause

    def succeeded(self) -> None:
        self.failures = 0
        self.last_error = None


@dataclass(frozen=True)
class _Answer:
    """A job object, and how it was asked for (a long poll held up to `hold` seconds)."""

    body: dict[str, Any]
    long_poll: bool
    hold: float
    asked: float


class _Route:
    """Long poll (status-sync) or plain /status; shared by every wait of a batch.

    "auto" long polls until the endpoint shows it cannot: the route is missing or refused, or
    long polls keep coming back early with nothing new. "sync" never falls back; "status"
    never long polls.
    """

    UNHELD_LIMIT = 3

    def __init__(self, mode: str, clock: Clock) -> None:
        self._mode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self._long_polls = mode in ("auto", "sync")
        self._unheld = 0

    def ask(self, caller: Caller, job_id: str, hold: Callable[[], float]) -> _Answer | None:
        """One status request; None when the long-poll route turned out missing or refused."""
        long_poll = self._long_polls
        wait_s = hold() if long_poll else 0.0
        asked = self._clock()
        wait_ms = int(wait_s * 1000) if long_poll else None
        try:
            body = caller.status(job_id, wait_ms=wait_ms, attempts=1)
        except APIError as exc:
            if long_poll and self._refused(exc, caller, job_id):
                return None
            raise
        return _Answer(body, long_poll, wait_s, asked)

    def pause_after(self, answer: _Answer) -> float:
        """No pause after a held long poll; a short one after a long poll back early."""
        if self._clock() - answer.asked >= answer.hold * 0.5:
            return 0.0
        # Back early with nothing new: the endpoint may not hold long polls at all.
        with self._lock:
            self._unheld += 1
            unheld = self._unheld
        if unheld >= self.UNHELD_LIMIT:
            self._fall_back()
        return min(1.0, answer.hold)

    def _refused(self, exc: APIError, caller: Caller, job_id: str) -> bool:
        """Whether a failed long poll says the endpoint has no long polls (then fall back)."""
        if exc.status == 404:
            return self._sync_route_missing(caller, job_id)
        if exc.status in (400, 405, 501):
            self._fall_back()
            return True
        return False

    def _sync_route_missing(self, caller: Caller, job_id: str) -> bool:
        """status-sync said 404: if /status knows the job, the route is what is missing."""
        try:
            caller.status(job_id, attempts=2)
        except APIError:
            return False
        self._fall_back()
        return not self._long_polls

    def _fall_back(self) -> None:
        if self._mode == "auto":
            with self._lock:
                self._long_polls = False


def _explain(reason: str, status: str, last_error: str | None) -> str:
    """A stall or timeout reason, plus what the endpoint last said when that is the cause."""
    if last_error:
        return f"{reason}; last poll failed: {last_error}"
    if status not in KNOWN:
        return f"{reason}; the endpoint answered status {status[:40]!r}, not a RunPod job status"
    return reason
