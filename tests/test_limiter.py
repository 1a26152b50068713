"""Rate limiter: bursts, even refill, FIFO booking, pauses; with a fake clock."""

from __future__ import annotations

import pytest
from helpers import FakeClock
from hypothesis import given
from hypothesis import strategies as st

from rpq.errors import UsageError
from rpq.limiter import Limiter, Rate


def test_parse_rate() -> None:
    assert Rate.parse("5/60") == Rate(5, 60.0)
    assert Rate.parse("10") == Rate(10, 1.0)
    assert Rate.parse("3/10s") == Rate(3, 10.0)
    for bad in ("x", "0/10", "5/0", "-1/3", ""):
        with pytest.raises(UsageError, match="--rate"):
            Rate.parse(bad)


def test_burst_then_even_spacing() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(Rate(5, 60), burst=1, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        limiter.acquire()
    # The first goes at once, then one every 12 s: the guide's 5 jobs a minute.
    assert clock.slept == pytest.approx([12.0, 12.0, 12.0])


def test_full_burst_allowed_when_idle() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(Rate(10, 10), burst=10, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limiter.acquire()
    assert clock.slept == []
    limiter.acquire()
    assert clock.slept == pytest.approx([1.0])


def test_reservations_queue_up_in_order() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(Rate(1, 2), burst=1, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(4)]
    assert waits == pytest.approx([0.0, 2.0, 4.0, 6.0])


def test_pause_holds_everyone() -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(Rate(100, 1), clock=clock, sleep=clock.sleep)
    limiter.pause(3.0)
    assert limiter.reserve() == pytest.approx(3.0)


@given(count=st.integers(1, 50), per=st.floats(0.5, 120), n=st.integers(1, 200))
def test_never_exceeds_rate(count: int, per: float, n: int) -> None:
    clock = FakeClock(100.0)
    limiter = Limiter(Rate(count, per), clock=clock, sleep=clock.sleep)
    start = clock.now
    times = []
    for _ in range(n):
        limiter.acquire()
        times.append(clock.now - start)
    # Any window of length `per` holds at most `count` plus the burst.
    for i, t in enumerate(times):
        inside = sum(1 for u in times[i:] if u < t + per - 1e-9)
        assert inside <= count + limiter.capacity
