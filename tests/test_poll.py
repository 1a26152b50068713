"""Waiting for a job: when rpq gives up, long poll versus /status, backoff after errors.

The poller runs on a fake clock against a scripted endpoint on 127.0.0.1; an answer that
"takes" time moves the fake clock, as a held long poll would.
"""

from __future__ import annotations

from typing import Any

import pytest
from endpointkit import DONE, QUEUED, RUNNING, Say, ScriptedEndpoint, poller
from helpers import FakeClock

from rpq.poll import Poller, PollResult, StallDetector, Timing
from rpq.submit import Caller


def wait(poll: Poller, caller: Caller, clock: FakeClock, **kwargs: Any) -> PollResult:
    return poll.wait(caller, "j1", clock(), **kwargs)


# -- long poll versus /status ---------------------------------------------------------------


def test_a_held_long_poll_is_asked_again_at_once(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(200, QUEUED, takes=20.0), Say(200, RUNNING, takes=20.0),
                Say(200, DONE, takes=3.0))
    timing = Timing()
    seen: list[str] = []
    result = wait(poller(clock, timing=timing), caller, clock, on_status=seen.append)
    assert result.outcome == "terminal"
    assert result.body == DONE
    assert result.started_at == 1040.0  # first seen running after two 20 s long polls
    assert seen == ["IN_PROGRESS", "COMPLETED"]
    # Each long poll asks the endpoint to hold it 20 s (MAX_LONG_POLL), with no pause between.
    assert scripted.asked == [("status-sync", 20000)] * 3
    assert clock.slept == []
    assert (timing.delay, timing.execution) == (2.0, 3.0)


def test_a_long_poll_is_held_no_longer_than_half_the_queue_limit_nor_past_max_wait(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(200, RUNNING, takes=3.0), Say(200, RUNNING, takes=3.0),
                Say(200, DONE))
    wait(poller(clock, max_queue_time=6.0, max_wait=8.0), caller, clock)
    assert [ms for _, ms in scripted.asked] == [3000, 3000, 2000]


def test_long_polls_that_come_back_early_switch_the_batch_to_status(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(200, QUEUED))
    scripted.on("status", Say(200, QUEUED), Say(200, DONE))
    poll = poller(clock)
    result = wait(poll, caller, clock)
    assert result.outcome == "terminal"
    # Three unheld long polls, each followed by a one-second pause, then /status for good.
    assert scripted.routes() == ["status-sync"] * 3 + ["status"] * 2
    assert clock.slept[:3] == [1.0, 1.0, 1.0]
    scripted.asked.clear()
    wait(poll, caller, clock)
    assert scripted.routes() == ["status"]


def test_a_long_poll_held_half_its_time_counts_as_held(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(200, QUEUED, takes=10.0), Say(200, QUEUED, takes=9.9),
                Say(200, DONE))
    wait(poller(clock), caller, clock)
    assert clock.slept == [1.0]  # only after the one back before half of its 20 s


def test_in_sync_mode_early_long_polls_never_switch_to_status(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", *[Say(200, QUEUED)] * 5, Say(200, DONE))
    result = wait(poller(clock, mode="sync"), caller, clock)
    assert result.outcome == "terminal"
    assert scripted.routes() == ["status-sync"] * 6


def test_status_mode_never_long_polls(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, QUEUED), Say(200, QUEUED), Say(200, QUEUED), Say(200, DONE))
    result = wait(poller(clock, mode="status"), caller, clock)
    assert result.outcome == "terminal"
    assert scripted.asked == [("status", None)] * 4
    assert clock.slept == [0.5, 0.75, 1.125]  # nothing learnt yet: a gentle backoff


def test_status_polls_land_just_after_the_expected_end(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    timing = Timing()
    timing.learn({"delayTime": 1000, "executionTime": 4000})  # a finished job took 1 s + 4 s
    scripted.on("status", Say(200, QUEUED), Say(200, RUNNING), Say(200, RUNNING),
                Say(200, DONE))
    result = wait(poller(clock, mode="status", timing=timing), caller, clock)
    assert result.outcome == "terminal"
    # Due at 5 s: look at 5.05 s; seen running then, so due 4 s after that: 4.05 s; then
    # overdue: look again soon (growing by half, at most 2 s).
    assert clock.slept == pytest.approx([5.05, 4.05, 2.0])


@pytest.mark.parametrize("code", [400, 405, 501])
def test_a_refused_long_poll_falls_back_to_status(
        code: int, scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(code, {"error": "no"}))
    scripted.on("status", Say(200, DONE))
    result = wait(poller(clock), caller, clock)
    assert result.outcome == "terminal"
    assert scripted.routes() == ["status-sync", "status"]
    assert clock.slept == []


def test_a_missing_long_poll_route_falls_back_when_status_knows_the_job(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(404, {"error": "no route"}))
    scripted.on("status", Say(200, QUEUED), Say(200, DONE))
    result = wait(poller(clock), caller, clock)
    assert result.outcome == "terminal"
    # The 404 is checked against /status, which knows the job; from then on /status only.
    assert scripted.routes() == ["status-sync", "status", "status"]


def test_in_sync_mode_a_missing_long_poll_route_ends_the_wait(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(404, {"error": "no route"}))
    scripted.on("status", Say(200, QUEUED))
    result = wait(poller(clock, mode="sync"), caller, clock)
    assert result.outcome == "expired"  # it may not fall back, and asking again cannot help
    assert scripted.routes() == ["status-sync", "status"]


def test_a_job_unknown_to_both_routes_has_expired(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(200, QUEUED, takes=20.0), Say(404, {"error": "gone"}))
    scripted.on("status", Say(404, {"error": "gone"}))
    result = wait(poller(clock), caller, clock)
    assert result.outcome == "expired"
    assert "404" in result.reason and "no longer knows the job" in result.reason
    assert result.body == QUEUED  # the last job object seen
    assert scripted.routes() == ["status-sync", "status-sync", "status"]


# -- errors ---------------------------------------------------------------------------------


def test_transient_errors_back_off_doubling_and_reset_after_an_answer(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    bad = Say(502, "<html><title>502 Bad Gateway</title></html>")
    scripted.on("status", bad, bad, bad, Say(200, QUEUED), bad, Say(200, DONE))
    result = wait(poller(clock, mode="status"), caller, clock)
    assert result.outcome == "terminal"
    assert clock.slept == [1.0, 2.0, 4.0, 5.0, 1.0]  # 5.0: the gentle schedule's cap


def test_backoff_is_capped_at_30_seconds(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", *[Say(503, {"error": "busy"})] * 8, Say(200, DONE))
    wait(poller(clock, mode="status", max_queue_time=1000.0), caller, clock)
    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_retry_after_is_honoured_up_to_a_minute(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(429, {"error": "slow down"}, headers=(("Retry-After", "7"),)),
                Say(429, {"error": "slow down"}, headers=(("Retry-After", "600"),)),
                Say(200, DONE))
    wait(poller(clock, mode="status", max_queue_time=1000.0), caller, clock)
    assert clock.slept == [7.0, 60.0]


def test_an_answer_that_is_no_job_is_asked_again(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, "<html>captive portal</html>"), Say(200, DONE))
    result = wait(poller(clock, mode="status"), caller, clock)
    assert result.outcome == "terminal"
    assert clock.slept == [1.0]


def test_a_final_error_ends_the_wait_at_once(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, RUNNING), Say(403, {"error": "forbidden"}))
    result = wait(poller(clock, mode="status"), caller, clock)
    assert result.outcome == "error"
    assert "403" in result.reason and "forbidden" in result.reason
    assert result.body == RUNNING
    assert result.started_at == 1000.0
    assert len(scripted.asked) == 2


# -- when to give up ------------------------------------------------------------------------


def test_max_wait_ends_the_wait_and_says_why_the_last_poll_failed(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, RUNNING), Say(500, {"error": "worker exploded"}))
    result = wait(poller(clock, mode="status", max_wait=100.0), caller, clock)
    assert result.outcome == "max_wait"
    assert result.reason.startswith("no result within --max-wait 100s; last poll failed: ")
    assert "worker exploded" in result.reason
    assert result.body == RUNNING
    assert sum(clock.slept) >= 100.0
    assert sum(clock.slept[:-1]) < 100.0  # it gave up at the first look past the limit


def test_max_wait_names_a_status_that_is_not_a_runpod_one(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, {"id": "j1", "status": "PONDERING"}))
    result = wait(poller(clock, mode="status", max_wait=30.0), caller, clock)
    assert result.outcome == "max_wait"
    assert "'PONDERING', not a RunPod job status" in result.reason


def test_a_queued_job_with_no_progress_is_stalled(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, QUEUED))
    result = wait(poller(clock, mode="status", max_queue_time=10.0), caller, clock)
    assert result.outcome == "stalled"
    assert "no progress" in result.reason
    assert 10.0 <= sum(clock.slept) < 15.0


def test_a_running_job_is_never_stalled(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    # Running for far longer than the queue limit, while a job sent 3 s later has started:
    # a queued job would count as overtaken, a running one has its worker.
    detector = StallDetector(10.0, clock)
    detector.observed(clock() + 3.0, "IN_PROGRESS")
    scripted.on("status", Say(200, RUNNING))
    poll = poller(clock, mode="status", max_wait=60.0, detector=detector)
    seen: list[str] = []
    result = wait(poll, caller, clock, on_status=seen.append)
    assert result.outcome == "max_wait"  # not "stalled": it was running all along
    assert seen == ["IN_PROGRESS"]


def test_a_job_put_back_in_the_queue_waits_its_turn_again(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    detector = StallDetector(10.0, clock)
    detector.observed(clock() + 3.0, "IN_PROGRESS")  # a job sent 3 s after ours has started
    scripted.on("status", *[Say(200, RUNNING)] * 6, Say(200, QUEUED), Say(200, DONE))
    seen: list[str] = []
    result = wait(poller(clock, mode="status", detector=detector), caller, clock,
                  on_status=seen.append)
    # Overtaken since its submission, but it lost its worker: its queue time starts again.
    assert result.outcome == "terminal"
    assert seen == ["IN_PROGRESS", "IN_QUEUE", "COMPLETED"]
    assert result.started_at == 1000.0
    assert clock() - 1000.0 > 15.0  # past the queue limit since submission, not since requeued


def test_stop_interrupts_the_wait_before_the_next_poll(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, RUNNING))
    result = wait(poller(clock, mode="status"), caller, clock,
                  stop=lambda: len(scripted.asked) >= 2)
    assert result.outcome == "interrupted"
    assert result.body == RUNNING
    assert len(scripted.asked) == 2
