"""How much of a batch is out at once: jobs on the endpoint, and image data in memory."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from rpq.bodies import Bodies, Prepare
from rpq.budget import MB, Budget
from rpq.concurrency import Concurrency, Gate
from rpq.endpoints import HEALTH_EVERY, Endpoints
from rpq.errors import APIError
from rpq.progress import Tracker
from rpq.settings import BatchSettings
from rpq.template import RequestTemplate

#: Starts a job in a thread once the gate lets it out; False when it was given up on.
Launch = Callable[..., bool]


class Flow:
    """The batch's flow control (--concurrency, --memory-budget), built from its settings.

    Jobs out on the endpoint pass a `Gate` under the `Concurrency` target, which follows what
    the batch sees (/health, the time jobs wait to start, 429s) and is shown on the tracker.
    Image data held at once (pixels, request bodies, results) is counted against a `Budget`;
    `bodies` makes each job's request under it. `stopping()` says the run submits nothing
    new: whoever waits for room gives up, once `wake()` (or the next recheck) lets them look.
    """

    def __init__(
        self,
        settings: BatchSettings,
        template: RequestTemplate,
        tracker: Tracker,
        endpoints: Endpoints,
        *,
        policy: dict[str, Any] | None,
        prepare: Prepare,
        stopping: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        health_every: float | None = None,
    ) -> None:
        self.concurrency = Concurrency(settings.concurrency, clock=clock)
        self.gate = Gate(self.concurrency)
        self.budget = Budget(settings.memory_budget * MB)
        self.bodies = Bodies(template, self.budget, policy=policy, max_side=settings.max_side,
                             fmt=settings.fmt, give_up=stopping, prepare=prepare)
        self.most_out = settings.most_jobs_out
        # Auto concurrency steers by /health: look often enough to follow a scaling endpoint.
        self.health_every = health_every or (HEALTH_EVERY if settings.concurrency else 1.0)
        self._stopping = stopping
        self._tracker = tracker
        tracker.target = self.concurrency.target
        # A result inline in a status reply (any endpoint's) waits in the socket for room in
        # the budget; counted three times over: the raw reply, its text, and the parsed JSON.
        endpoints.on_big_body(lambda n: self.budget.charge_here(3 * n))

    @contextlib.contextmanager
    def threads(self) -> Iterator[Launch]:
        """`launch(fn, *args)`: a thread per job out, started as the target first needs it;
        on leaving, waits until every job launched has ended."""
        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(self.most_out, thread_name_prefix="rpq-job") as pool:
            def launch(fn: Callable[..., None], *args: Any) -> bool:
                if not self.gate.enter(self._stopping):
                    return False
                fut = pool.submit(fn, *args)
                pending.add(fut)

                def done(f: Future[None]) -> None:
                    self.gate.leave()
                    pending.discard(f)

                fut.add_done_callback(done)
                return True

            yield launch
            while pending:
                wait(list(pending), timeout=0.2)

    # -- what the batch sees, which moves the target -----------------------------------------

    def health(self, doc: dict[str, Any]) -> None:
        """A /health reply: shown on the tracker, and an auto target follows it."""
        self._tracker.observe_health(doc)
        if isinstance(doc, dict):
            self._steer(self.concurrency.health(doc))

    def started(self, queue_time: float | None) -> None:
        """One of the batch's jobs ended, having waited `queue_time` s to start (None: unknown)."""
        if queue_time is not None:
            self._steer(self.concurrency.started(queue_time, self.gate.out))

    def retried(self, exc: BaseException) -> None:
        """A request is retried after `exc`: a 429 means fewer jobs out."""
        if isinstance(exc, APIError) and exc.status == 429:
            self._tracker.target = self.concurrency.throttled()

    def wake(self) -> None:
        """The run is stopping: jobs waiting for memory or for the gate give up now."""
        self.budget.wake()
        self.gate.poke()

    def _steer(self, target: int) -> None:
        self._tracker.target = target
        self.gate.poke()


__all__ = ["Flow", "Launch"]
