"""Time left in a run, from the pace of recent completions and the work still to do."""

from __future__ import annotations

from collections import deque


class Eta:
    """Estimates seconds left; the clock is the caller's (pass `now`), so it is pure.

    The run's average would count a cold start (minutes before the first result) against every
    later job; only completions in the last `window` seconds (at least the last two) count.
    """

    def __init__(self, window: float = 30.0, keep: int = 500) -> None:
        self.window = window
        self._times: deque[float] = deque(maxlen=keep)

    def finished(self, at: float) -> None:
        self._times.append(at)

    def estimate(self, now: float, remaining: int | None) -> float | None:
        """Seconds until `remaining` more jobs finish at the recent pace; None if unknown."""
        if remaining is None:
            return None
        if remaining <= 0:
            return 0.0
        times = self._times
        if len(times) < 2:
            return None
        recent = [t for t in times if t >= now - self.window]
        if len(recent) < 2:
            recent = list(times)[-2:]
        # The time since the last completion counts too: a stall slows the pace down.
        span = now - recent[0]
        if span <= 0:
            return None
        rate = (len(recent) - 1) / span
        return remaining / rate
