"""The ETA comes from recent throughput and the work still to do, not the run's average."""

from __future__ import annotations

from rpq.eta import Eta


def test_no_estimate_before_two_jobs_have_finished() -> None:
    eta = Eta()
    assert eta.estimate(now=5.0, remaining=10) is None
    eta.finished(30.0)
    assert eta.estimate(now=30.0, remaining=10) is None


def test_a_cold_start_does_not_inflate_the_estimate() -> None:
    # 30 s of cold start, then one job every 0.5 s: 20 left take about 10 s, not minutes.
    eta = Eta()
    for i in range(5):
        eta.finished(30.0 + 0.5 * i)
    estimate = eta.estimate(now=32.0, remaining=20)
    assert estimate is not None
    assert 9.0 <= estimate <= 11.0
    # The cumulative average (5 jobs in 32 s) would have said 128 s.


def test_it_follows_a_change_of_pace() -> None:
    eta = Eta(window=10.0)
    for i in range(20):  # slow: one every 2 s
        eta.finished(2.0 * i)
    for i in range(1, 41):  # then fast: four a second
        eta.finished(38.0 + 0.25 * i)
    estimate = eta.estimate(now=48.0, remaining=40)
    assert estimate is not None and 9.0 <= estimate <= 11.5


def test_a_stall_lengthens_it() -> None:
    eta = Eta(window=10.0)
    for i in range(11):
        eta.finished(float(i))  # one a second
    steady = eta.estimate(now=10.0, remaining=10)
    stalled = eta.estimate(now=25.0, remaining=10)
    assert steady is not None and stalled is not None
    assert 9.0 <= steady <= 11.0
    assert stalled > steady * 2


def test_nothing_left_is_zero_and_unknown_total_is_none() -> None:
    eta = Eta()
    eta.finished(1.0)
    eta.finished(2.0)
    assert eta.estimate(now=2.0, remaining=0) == 0.0
    assert eta.estimate(now=2.0, remaining=None) is None
