"""How many jobs to keep out at once: pinned by --concurrency N, or following the endpoint."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rpq.health import diagnose
from rpq.limiter import Clock

#: --concurrency auto starts here, until the endpoint's /health says more.
AUTO_START = 8
#: The most jobs --concurrency auto ever keeps out (one thread each).
AUTO_CEILING = 256
#: The queue kept for the endpoint beyond its workers: at least this many of the batch's jobs
#: (so a scaler at zero workers has a queue to grow on) ...
QUEUE_MIN = 4
#: ... and at most this many (so stall detection stays sharp and Ctrl-C cancels little).
QUEUE_MAX = 8
#: Without /health: a job that waited at most this long in the queue found a free worker.
FAST_START = 1.0
#: Without /health: a job that waited this long says the batch's jobs are queueing up.
SLOW_START = 5.0
#: After a shrink, no further shrink on delays for this long: let the first one show.
SETTLE = 2.0
#: After a 429, no growth (and no further halving) for this long.
HOLD_AFTER_429 = 5.0
#: A /health snapshot older than this no longer steers; the delay times do.
HEALTH_STALE = 15.0


class Concurrency:
    """The target for the number of the batch's jobs out on the endpoint.

    Pinned (`--concurrency N`) it never moves. Auto, it follows what the batch sees:

    - /health: the target is the workers that can take a job now or soon (idle, ready,
      running, initializing) plus a queue of QUEUE_MIN..QUEUE_MAX jobs (about half a job per
      worker). That queue is what makes RunPod's scaler (queue delay or request count) start
      workers, so it is never below QUEUE_MIN, and QUEUE_MAX with no worker at all. Fewer
      workers (the batch's jobs queueing up) bring the target down at once: that only holds
      back new submissions. Queued jobs beyond what the free and starting workers and that
      queue account for (other clients') bring it down further, at most by half per snapshot.
    - Without /health (it fails, or the last answer is stale): each of the batch's jobs that
      started at once (queue time <= FAST_START) while the target was in use grows it by one
      (doubling per round of jobs, as TCP's slow start); a job that waited SLOW_START or more
      shrinks it by a quarter.
    - A 429 halves it (down to QUEUE_MIN), and holds it there for HOLD_AFTER_429.

    Thread-safe; pure apart from the injected clock.
    """

    def __init__(self, pinned: int | None = None, *, start: int = AUTO_START,
                 ceiling: int = AUTO_CEILING, clock: Clock = time.monotonic) -> None:
        if pinned is not None and pinned < 1:
            raise ValueError(f"concurrency must be at least 1, not {pinned}")
        self.pinned = pinned
        self.ceiling = pinned or ceiling
        self._clock = clock
        self._lock = threading.Lock()
        self._target = pinned or min(start, ceiling)
        self._health_at = -math.inf
        self._settled_at = -math.inf  # shrinking on delays waits until then
        self._held_until = -math.inf  # after a 429: no growth until then

    @property
    def auto(self) -> bool:
        return self.pinned is None

    @property
    def target(self) -> int:
        with self._lock:
            return self._target

    # -- inputs -----------------------------------------------------------------------------

    def health(self, doc: Mapping[str, Any]) -> int:
        """A /health reply; returns the new target."""
        if self.pinned is not None:
            return self.pinned
        d = diagnose(dict(doc))
        w, jobs = d.workers, d.jobs
        capacity = w["idle"] + w["ready"] + w["running"] + w["initializing"]
        # No worker at all: the longest queue we keep, for the scaler to start several.
        queue = QUEUE_MAX if capacity == 0 else min(QUEUE_MAX, max(QUEUE_MIN,
                                                                    math.ceil(capacity / 2)))
        wanted = capacity + queue
        # Queued jobs that neither a free or starting worker nor our allowance accounts for:
        # other clients' (or our own beyond the target). Come down by that, at most by half.
        excess = jobs["inQueue"] - (w["idle"] + w["ready"] + w["initializing"]) - queue
        now = self._clock()
        with self._lock:
            if excess > 0:
                wanted = min(wanted, max(self._target - excess, self._target // 2))
            self._health_at = now
            if now < self._held_until:
                wanted = min(wanted, self._target)
            self._set(max(QUEUE_MIN, wanted), now)
            return self._target

    def started(self, delay: float, out: int) -> int:
        """One of the batch's jobs started after `delay` s in the queue, with `out` jobs out.

        Steers only while /health does not (it failed, or is stale): a fresh snapshot counts
        the workers and the queue directly, which a delay only hints at.
        """
        if self.pinned is not None:
            return self.pinned
        now = self._clock()
        with self._lock:
            if now - self._health_at <= HEALTH_STALE or now < self._settled_at:
                return self._target
            if delay <= FAST_START and out >= self._target - 1 and now >= self._held_until:
                self._set(self._target + 1, now)
            elif delay >= SLOW_START:
                self._set(max(QUEUE_MIN, self._target - max(1, self._target // 4)), now)
            return self._target

    def throttled(self) -> int:
        """The endpoint answered 429: fewer jobs out means fewer requests."""
        if self.pinned is not None:
            return self.pinned
        now = self._clock()
        with self._lock:
            if now >= self._held_until:
                self._set(max(QUEUE_MIN, self._target // 2), now)
                self._held_until = now + HOLD_AFTER_429
            return self._target

    def _set(self, target: int, now: float) -> None:
        target = max(1, min(self.ceiling, target))
        if target < self._target:
            self._settled_at = now + SETTLE
        self._target = target


class Gate:
    """Lets a job out while fewer than the target are; the target may move at any time.

    Waiting is interruptible: `enter` gives up when `give_up()` says so (looked at every
    RECHECK seconds, and at once after `poke`). Thread-safe.
    """

    RECHECK = 0.25

    def __init__(self, concurrency: Concurrency) -> None:
        self.concurrency = concurrency
        self._cond = threading.Condition()
        self._out = 0
        self._waiting = 0

    @property
    def out(self) -> int:
        with self._cond:
            return self._out

    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    def enter(self, give_up: Callable[[], bool] | None = None) -> bool:
        """Wait for room under the target and take it; False (nothing taken) if given up."""
        with self._cond:
            self._waiting += 1
            try:
                while self._out >= self.concurrency.target:
                    if give_up is not None and give_up():
                        return False
                    self._cond.wait(self.RECHECK)
                self._out += 1
                return True
            finally:
                self._waiting -= 1

    def leave(self) -> None:
        with self._cond:
            self._out = max(0, self._out - 1)
            self._cond.notify_all()

    def poke(self) -> None:
        """The target (or a give-up condition) may have changed: waiters look again now."""
        with self._cond:
            self._cond.notify_all()


__all__ = ["AUTO_CEILING", "AUTO_START", "Concurrency", "Gate"]
