"""Thread-safe rate limiting for each API operation (clock and sleep injected)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rpq.errors import UsageError

Clock = Callable[[], float]
#: Seconds per unit in --rate: "5/60s", "5/min", "300/h".
_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
Sleep = Callable[[float], None]

#: RunPod's documented per-endpoint limits (requests per 10 s), with some headroom kept
#: because other clients of the same endpoint and account share them.
RUNPOD_LIMITS: dict[str, tuple[int, float]] = {
    "run": (900, 10.0),
    "status": (1800, 10.0),
    "cancel": (90, 10.0),
    "purge-queue": (2, 10.0),
    "health": (30, 10.0),
}


log = logging.getLogger("rpq.pacing")


@dataclass(frozen=True)
class Rate:
    """`count` events per `per` seconds."""

    count: int
    per: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse "N/SECONDS" ("5/60", "5/60s"), "N/UNIT" ("5/min", "300/h", "5/2m") or "N"
        (per second)."""
        count_text, slash, per_text = text.strip().partition("/")
        unit = re.fullmatch(r"\s*(\d+(?:\.\d+)?)?\s*([A-Za-z]*)\s*", per_text)
        try:
            count = int(count_text)
            if unit is None or unit.group(2).lower() not in _UNITS or (
                    slash and not (unit.group(1) or unit.group(2))):
                raise ValueError(text)
        except ValueError:
            raise UsageError(
                f"--rate {text!r} is not a rate. Write N/SECONDS, e.g. 5/60 or 5/60s for 5 jobs "
                "a minute, or N/UNIT with s, min or h, e.g. 5/min or 300/h."
            ) from None
        number = float(unit.group(1)) if unit.group(1) else 1.0
        rate = cls(count, number * _UNITS[unit.group(2).lower()])
        if rate.count < 1 or rate.per <= 0:
            raise UsageError(
                f"--rate {text!r} must allow at least 1 job in a positive time, e.g. 5/60."
            )
        return rate


class Limiter:
    """Token bucket: bursts up to `burst` (default a tenth of the count), refills evenly.

    Any window of `per` seconds then holds at most `count + burst` events; the RunPod limits
    below keep 10% headroom so that stays under the documented figure.

    `acquire()` blocks until a token is free; waiters are served in arrival order,
    because each one reserves its slot in the schedule before it sleeps.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        burst: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1, rate.count // 10))
        self._interval = rate.per / rate.count
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()
        self._paused_until = 0.0

    def reserve(self) -> float:
        """Take a token now or book the next free one; returns how long to wait for it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) / self._interval)
            self._stamp = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens * self._interval
            return max(wait, self._paused_until - now)

    def acquire(self) -> float:
        """Block until allowed; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (the server said 429 with Retry-After)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


class Limiters:
    """One limiter per operation: RunPod's limits, and the user's --rate on /run."""

    def __init__(self, run_rate: Rate | None = None, *, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep) -> None:
        self._by_op = {
            op: Limiter(Rate(count, per), clock=clock, sleep=sleep)
            for op, (count, per) in RUNPOD_LIMITS.items()
        }
        self._by_op["status-sync"] = self._by_op["status"]
        self._user_run = (
            Limiter(run_rate, burst=1, clock=clock, sleep=sleep) if run_rate else None
        )

    def acquire(self, op: str) -> None:
        if op == "run" and self._user_run is not None:
            waited = self._user_run.acquire()
            if waited > 0:
                log.info("pacing: waited %.2fs before submitting (--rate)", waited)
        limiter = self._by_op.get(op)
        if limiter is not None:
            waited = limiter.acquire()
            if waited > 0:
                log.info("pacing: waited %.2fs before %s (RunPod's rate limit)", waited, op)

    def pause(self, op: str, seconds: float) -> None:
        limiter = self._by_op.get(op)
        if limiter is not None:
            limiter.pause(seconds)
