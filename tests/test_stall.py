"""Stall detection: waiting behind the batch's own jobs is not a stall."""

from __future__ import annotations

from helpers import FakeClock

from rpq.poll import StallDetector


def test_queued_job_behind_running_jobs_is_not_stuck() -> None:
    clock = FakeClock()
    det = StallDetector(60, clock)
    for t in range(0, 300, 10):  # the first job runs for 5 minutes, reported every 10 s
        clock.now = float(t)
        det.observed(0.0, "IN_PROGRESS")
        assert det.stuck(queued_since=0.0) is None


def test_no_progress_for_max_queue_time_is_a_stall() -> None:
    clock = FakeClock()
    det = StallDetector(60, clock)
    clock.now = 59.0
    assert det.stuck(queued_since=0.0) is None
    clock.now = 61.0
    assert "no progress" in (det.stuck(queued_since=0.0) or "")


def test_overtaken_job_is_stuck_even_while_others_progress() -> None:
    clock = FakeClock()
    det = StallDetector(10, clock)
    clock.now = 5.0
    det.observed(3.0, "COMPLETED")  # submitted 3 s after ours, already done
    assert det.stuck(queued_since=0.0) is None  # not waited long enough yet
    clock.now = 11.0
    det.observed(3.0, "COMPLETED")
    assert "later" in (det.stuck(queued_since=0.0) or "")


def test_jobs_sent_together_may_start_in_either_order() -> None:
    # A long queue: ours waits 90 s while a job sent in the same instant started first.
    clock = FakeClock()
    det = StallDetector(60, clock)
    for t in range(0, 90, 5):
        clock.now = float(t)
        det.observed(0.01, "IN_PROGRESS")
    assert det.stuck(queued_since=0.0) is None


def test_whole_endpoint_pause_shorter_than_limit_is_tolerated() -> None:
    clock = FakeClock()
    det = StallDetector(60, clock)
    clock.now = 20.0  # endpoint stalled for 20 s: nothing started
    assert det.stuck(queued_since=0.0) is None
