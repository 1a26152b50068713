"""The batch's endpoints: primary and fallback, which takes new work, the jobs live on each."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rpq.api import RunPodClient
from rpq.errors import APIError, RpqError, UsageError
from rpq.health import diagnose
from rpq.journal import Journal
from rpq.limiter import Limiters, Rate
from rpq.metrics import now_iso
from rpq.settings import BatchSettings, check_base_url
from rpq.states import ENDED, Status
from rpq.submit import Caller

#: Seconds between two looks at the primary endpoint's /health while a batch runs.
HEALTH_EVERY = 5.0

#: Most seconds a run's end waits for the cancels a stop has started (see Endpoints.settle).
CANCEL_SETTLE = 10.0

#: A job rpq is waiting for: (job id, journal key, endpoint).
Live = tuple[str, str, str]


class Endpoints:
    """Where jobs go and how to reach them: one Caller per endpoint, the live jobs, failover.

    New work goes to `active`: the primary until a failover makes it the fallback. Every job
    being waited for is in the live table with its last status, so a stop can cancel the queued
    ones and a failover can move them. Cancels are written to the journal.
    """

    def __init__(
        self,
        callers: dict[str, Caller],
        journal: Journal,
        *,
        say: Callable[[str], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.callers = callers
        self.primary = next(iter(callers))
        self.active = self.primary
        self.failovers: list[dict[str, Any]] = []
        self._journal = journal
        self._say = say
        self._wall = wall
        self._lock = threading.Lock()
        self._live: dict[str, tuple[str, str, str]] = {}  # job id -> (key, status, endpoint)
        self._moving: set[str] = set()  # job ids to move to the fallback endpoint
        self._cancelling: list[threading.Thread] = []

    def caller(self, endpoint: str) -> Caller:
        """The caller for a job's endpoint; the primary's for one no longer configured."""
        return self.callers.get(endpoint) or self.callers[self.primary]

    def check(self) -> dict[str, Any]:
        """One /health per endpoint before any work: 401/404/unreachable end the run here."""
        health = self.callers[self.primary].client.health()
        workers = health.get("workers") if isinstance(health, dict) else None
        if isinstance(workers, dict):
            warm = sum(int(workers.get(k) or 0) for k in ("idle", "ready", "running"))
            if warm == 0:
                self._say("warning: the endpoint has no idle or ready worker; expect a cold "
                          "start before the first results.")
        for name, caller in self.callers.items():
            if name != self.primary:
                caller.client.health()  # a bad fallback is better found now than mid-run
        return health

    def on_big_body(self, hook: Callable[[int], object]) -> None:
        """Tell `hook` the size of every large answer, before it is read (any endpoint)."""
        for caller in self.callers.values():
            caller.client.on_big_body = hook

    def requests_sent(self) -> dict[str, dict[str, int]]:
        return {name: dict(c.client.requests_sent) for name, c in self.callers.items()}

    # -- the live jobs ----------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, job_id: str, key: str, endpoint: str) -> Iterator[None]:
        """A job in the live table while it is waited for."""
        with self._lock:
            self._live[job_id] = (key, Status.IN_QUEUE, endpoint)
        try:
            yield
        finally:
            with self._lock:
                self._live.pop(job_id, None)

    def saw(self, job_id: str, status: str) -> None:
        with self._lock:
            if job_id in self._live:
                key, _, endpoint = self._live[job_id]
                self._live[job_id] = (key, status, endpoint)

    def live(self, *, queued_only: bool = False) -> list[Live]:
        with self._lock:
            return [(jid, key, ep) for jid, (key, st, ep) in self._live.items()
                    if not queued_only or st == Status.IN_QUEUE]

    def moving(self, job_id: str) -> bool:
        """Whether the job is to leave its endpoint for the active one (after a failover)."""
        with self._lock:
            return job_id in self._moving

    def moved(self, job_id: str) -> None:
        with self._lock:
            self._moving.discard(job_id)

    # -- cancel and fetch -------------------------------------------------------------------

    def cancel(self, key: str, job_id: str, endpoint: str, reason: str) -> str:
        """Cancel a job and journal the answer; returns the status it answered, in words."""
        try:
            answer: Any = self.caller(endpoint).cancel(job_id)
            text = str(answer.get("status", answer)) if isinstance(answer, dict) else str(answer)
        except APIError as exc:
            answer, text = {"error": str(exc)}, f"failed ({exc})"
        self._journal.cancelled(key, job_id, answer, reason)
        return text

    def cancel_later(self, targets: list[Live], reason: str, *, queued_only: bool) -> None:
        """Cancel jobs from a thread of their own: a stop must not wait on the network."""
        thread = threading.Thread(target=self._cancel_all, args=(targets, reason, queued_only),
                                  name="rpq-cancel", daemon=True)
        with self._lock:
            self._cancelling.append(thread)
        thread.start()

    def settle(self, timeout: float = CANCEL_SETTLE) -> None:
        """Wait, `timeout` seconds at most in all, for the cancels started so far to answer.

        A job's poll can see it cancelled before the cancel's own answer is read: without
        this, the run could close its journal and exit with that cancel still unrecorded.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._cancelling)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _cancel_all(self, targets: list[Live], reason: str, queued_only: bool) -> None:
        for job_id, key, endpoint in targets:
            if queued_only:
                # Our last view may be a long poll old: ask before cancelling a running job.
                try:
                    body = self.caller(endpoint).status(job_id)
                except APIError:
                    continue
                if body.get("status") != Status.IN_QUEUE:
                    continue
            self.cancel(key, job_id, endpoint, reason)

    def fetch_ended(self, job_id: str, endpoint: str) -> dict[str, Any] | None:
        """The job object of a job that ended, or None when it did not (or cannot be read)."""
        try:
            body = self.caller(endpoint).status(job_id)
        except APIError:
            return None
        return body if body.get("status") in ENDED else None

    # -- failover ---------------------------------------------------------------------------

    def fail_over(self, reason: str) -> None:
        """Switch new work to the fallback endpoint; move jobs still queued on the primary."""
        fallback = next((name for name in self.callers if name != self.primary), None)
        with self._lock:
            if fallback is None or self.active == fallback:
                return
            self.active = fallback
            queued = [jid for jid, (_, st, ep) in self._live.items()
                      if ep == self.primary and st == Status.IN_QUEUE]
            self.failovers.append({"from": self.primary, "to": fallback, "reason": reason,
                                   "at": now_iso(self._wall()), "moved": len(queued)})
            self._moving.update(queued)
        self._say(f"failing over to {fallback}: {reason}; moving {len(queued)} queued job(s)")

    def watch_health(self, done: threading.Event, show: Callable[[dict[str, Any]], None],
                     every: float = HEALTH_EVERY) -> None:
        """Until `done`: show the primary's /health, and fail over when no worker can work."""
        caller = self.callers[self.primary]
        while not done.wait(every):
            with contextlib.suppress(RpqError):
                health = caller.health(attempts=1)
                show(health)
                diagnosis = diagnose(health)
                w = diagnosis.workers
                if len(self.callers) > 1 and (w["unhealthy"] or w["throttled"]) and \
                        not (w["idle"] + w["ready"] + w["running"]) and diagnosis.jobs["inQueue"]:
                    self.fail_over("the endpoint has no working worker: " + diagnosis.findings[0])


def build_callers(
    settings: BatchSettings,
    client: RunPodClient,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[str, BaseException, float], None] | None = None,
) -> dict[str, Caller]:
    """A Caller per endpoint, primary first; each paced by its own limiters."""
    run_rate = Rate.parse(settings.rate) if settings.rate else None
    callers: dict[str, Caller] = {}
    for client_ in [client, *_fallback_clients(settings)]:
        limiters = Limiters(run_rate, clock=clock, sleep=sleep)
        callers[client_.endpoint_id] = Caller(client_, limiters, max_retries=settings.max_retries,
                                              sleep=sleep, on_retry=on_retry)
    return callers


def _fallback_clients(settings: BatchSettings) -> list[RunPodClient]:
    fb = settings.fallback_endpoint
    if not fb:
        return []
    if fb == settings.endpoint.endpoint_id:
        raise UsageError("--fallback-endpoint is the same as the endpoint: name another one.")
    ep = settings.endpoint
    base = ep.base_url
    if fb.startswith(("http://", "https://")):
        # A full endpoint URL, e.g. another `rpq serve`: BASE/ID.
        base, _, fb = fb.rstrip("/").rpartition("/")
        base = check_base_url(base)
    return [RunPodClient(base, fb, ep.api_key, pool_size=settings.most_jobs_out + 8)]
