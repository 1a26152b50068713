"""Pinned decisions of the poller at its edges, on a fake clock against a scripted endpoint
(tests/endpointkit.py): stall and give-up boundaries, what feeds the stall detector, the
schedule of /status polls, the limits every poll keeps to, and the reasons it gives."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
from endpointkit import DONE, QUEUED, RUNNING, Say, ScriptedEndpoint, poller
from helpers import FakeClock, LoopbackServer, respond

from rpq.api import RunPodClient
from rpq.limiter import Limiters
from rpq.poll import Poller, StallDetector, Timing
from rpq.submit import Caller

START = 1000.0  # where the `clock` fixture starts
_poller = partial(poller, mode="status")


def _learnt(delay_ms: int | None, execution_ms: int) -> Timing:
    timing = Timing()
    body: dict[str, Any] = {"status": "COMPLETED", "executionTime": execution_ms}
    if delay_ms is not None:
        body["delayTime"] = delay_ms
    timing.learn(body)
    return timing


# --- the stall detector's boundaries ---------------------------------------------------------


def test_stuck_at_exactly_max_queue_time_without_progress() -> None:
    clock = FakeClock(0.0)
    detector = StallDetector(10.0, clock)
    clock.now = 9.5
    assert detector.stuck(queued_since=0.0) is None
    clock.now = 10.0
    assert detector.stuck(queued_since=0.0) == (
        "the endpoint made no progress on the batch for 10s")


def test_overtaken_only_by_a_job_sent_more_than_the_grace_later() -> None:
    clock = FakeClock(0.0)
    detector = StallDetector(10.0, clock)
    clock.now = 12.0
    detector.observed(1.0, "IN_PROGRESS")  # sent exactly OVERTAKE_GRACE after ours
    assert detector.stuck(queued_since=0.0) is None
    detector.observed(1.5, "RUNNING")
    assert detector.stuck(queued_since=0.0) == (
        "still queued after 12s while jobs submitted later have started")


def test_a_later_job_that_ended_without_running_did_not_overtake() -> None:
    # A cancelled or failed job may never have started; only a start or a result says the
    # queue moved past ours. Any end is still progress of the batch.
    clock = FakeClock(0.0)
    detector = StallDetector(10.0, clock)
    clock.now = 12.0
    for status in ("CANCELLED", "FAILED", "TIMED_OUT"):
        detector.observed(5.0, status)
    assert detector.last_progress == 12.0
    assert detector.stuck(queued_since=0.0) is None
    detector.observed(5.0, "IN_QUEUE")  # no progress either
    clock.now = 22.0
    assert "no progress" in (detector.stuck(queued_since=0.0) or "")


# --- timing learnt from finished jobs ---------------------------------------------------------


def test_timing_is_a_moving_average_weighted_to_the_latest_job() -> None:
    timing = Timing()
    timing.learn({"status": "COMPLETED", "delayTime": 1000, "executionTime": 4000})
    timing.learn({"status": "COMPLETED", "delayTime": 2000, "executionTime": 2000})
    assert timing.delay == pytest.approx(0.3 * 2.0 + 0.7 * 1.0)
    assert timing.execution == pytest.approx(0.3 * 2.0 + 0.7 * 4.0)


@pytest.mark.parametrize("bad", [None, True, -5, "3000", [1]])
def test_timing_ignores_figures_that_are_no_duration(bad: object) -> None:
    timing = _learnt(1000, 2000)
    timing.learn({"status": "COMPLETED", "delayTime": bad, "executionTime": bad})
    assert (timing.delay, timing.execution) == (1.0, 2.0)


def test_expected_end_with_no_queue_time_known() -> None:
    timing = _learnt(None, 3000)
    assert timing.expected_end(queued_since=10.0, started_at=None) == 13.0
    assert timing.expected_end(queued_since=10.0, started_at=20.0) == 23.0
    assert Timing().expected_end(queued_since=10.0, started_at=None) is None


# --- what the poller tells the detector -------------------------------------------------------


def test_a_job_seen_finishing_counts_as_progress_and_as_started(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    detector = StallDetector(10.0, clock)
    scripted.on("status", Say(200, DONE, takes=12.0))
    result = _poller(clock, detector=detector).wait(caller, "j1", START + 5.0)
    assert result.outcome == "terminal"
    assert detector.last_progress == START + 12.0
    # A job queued since START is now overtaken by this one, sent 5 s after it.
    assert "submitted later have started" in (detector.stuck(queued_since=START) or "")


def test_a_running_job_overtaken_by_later_ones_is_waited_for(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    detector = StallDetector(10.0, clock)
    detector.observed(START + 5.0, "IN_PROGRESS")  # a job sent 5 s after ours has started
    scripted.on("status", Say(200, RUNNING, takes=30.0), Say(200, RUNNING, takes=30.0),
                Say(200, DONE))
    result = _poller(clock, detector=detector).wait(caller, "j1", START)
    assert result.outcome == "terminal" and result.reason == ""


def test_back_in_the_queue_the_wait_counts_from_the_return(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    detector = StallDetector(10.0, clock)
    detector.observed(START + 5.0, "IN_PROGRESS")  # sent later, started: it "overtook" ours
    scripted.on("status", Say(200, RUNNING, takes=20.0), Say(200, QUEUED, takes=1.0),
                Say(200, QUEUED, takes=1.0), Say(200, DONE))
    result = _poller(clock, detector=detector).wait(caller, "j1", START)
    assert result.outcome == "terminal"
    assert scripted.routes() == ["status"] * 4


# --- when the wait ends -----------------------------------------------------------------------


def test_max_wait_ends_the_wait_at_exactly_its_limit(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    # Two polls of 10 s with a 0.5 s pause between them: exactly 20.5 s.
    scripted.on("status", Say(200, RUNNING, takes=10.0))
    result = _poller(clock, max_wait=20.5).wait(caller, "j1", START)
    assert result.outcome == "max_wait"
    assert result.reason == "no result within --max-wait 20s"
    assert len(scripted.asked) == 2 and clock.now == START + 20.5
    assert result.body == RUNNING and result.started_at == START + 10.0


def test_interrupted_before_any_answer(scripted: ScriptedEndpoint, caller: Caller,
                                       clock: FakeClock) -> None:
    result = _poller(clock).wait(caller, "j1", START, stop=lambda: True)
    assert (result.outcome, result.reason, result.body, result.started_at) == (
        "interrupted", "interrupted", None, None)
    assert scripted.asked == []


def test_a_stall_says_why_the_polls_failed(scripted: ScriptedEndpoint, caller: Caller,
                                           clock: FakeClock) -> None:
    scripted.on("status", Say(503, {"error": "upstream busy"}, takes=1.0))
    result = _poller(clock, max_queue_time=10.0).wait(caller, "j1", START)
    assert result.outcome == "stalled"
    assert result.reason.startswith("the endpoint made no progress on the batch for ")
    assert result.reason.endswith("; last poll failed: status: HTTP 503: upstream busy")


def test_an_expired_job_says_so(scripted: ScriptedEndpoint, caller: Caller,
                                clock: FakeClock) -> None:
    scripted.on("status", Say(404, {"error": "gone"}))
    result = _poller(clock).wait(caller, "j1", START)
    assert (result.outcome, result.reason) == (
        "expired", "the endpoint no longer knows the job (404: its ttl or result retention "
                   "expired)")


def test_a_status_that_is_no_runpod_one_is_named_in_40_characters(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    odd = "THINKING_" + "X" * 60
    scripted.on("status", Say(200, {"id": "j1", "status": odd}, takes=5.0))
    result = _poller(clock, max_wait=10.0).wait(caller, "j1", START)
    assert result.reason == (f"no result within --max-wait 10s; the endpoint answered status "
                             f"{odd[:40]!r}, not a RunPod job status")


def test_each_failed_poll_is_logged_with_the_pause_that_follows(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rpq.poll")
    scripted.on("status", Say(502, {"error": "bad gateway"}), Say(200, DONE))
    _poller(clock).wait(caller, "j1", START)
    assert [r.getMessage() for r in caplog.records if r.name == "rpq.poll"] == [
        "polling again in 1.0s after: status: HTTP 502: bad gateway"]


@pytest.mark.parametrize("code", [300, 304])
def test_a_3xx_answer_is_no_glitch(scripted: ScriptedEndpoint, caller: Caller,
                                   clock: FakeClock, code: int) -> None:
    scripted.on("status", Say(code, {"error": "moved"}))
    result = _poller(clock).wait(caller, "j1", START)
    assert result.outcome == "error" and len(scripted.asked) == 1


# --- the schedule of /status polls ------------------------------------------------------------


def test_an_overdue_job_is_polled_soon_then_less_often(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    # Expected to end at START - 5: overdue from the first poll.
    scripted.on("status", *[Say(200, QUEUED)] * 10, Say(200, DONE))
    timing = _learnt(2000, 3000)
    _poller(clock, timing=timing).wait(caller, "j1", START - 10.0)
    assert clock.slept == pytest.approx([0.2, 0.3, 0.45, 0.675, 1.0125, 1.51875, 2.0, 2.0,
                                         2.0, 2.0])


def test_polls_land_just_after_the_expected_end_at_most_10_s_away(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, QUEUED), Say(200, QUEUED), Say(200, QUEUED),
                Say(200, QUEUED), Say(200, DONE))
    timing = _learnt(2000, 20000)  # due at START + 22
    _poller(clock, timing=timing).wait(caller, "j1", START)
    assert clock.slept == pytest.approx([10.0, 10.0, 2.05, 2.0])


def test_a_job_due_in_under_a_second_is_polled_at_its_end(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status", Say(200, QUEUED), Say(200, QUEUED), Say(200, DONE))
    timing = _learnt(None, 500)  # due at START + 0.5
    _poller(clock, timing=timing).wait(caller, "j1", START)
    assert clock.slept == pytest.approx([0.55, 0.55 * 1.5])


def test_a_job_due_in_exactly_the_margin_counts_as_due() -> None:
    # 0.05 s is the margin past the expected end: at exactly that, poll as for an overdue job.
    clock = FakeClock(0.0)
    timing = _learnt(None, 50)
    poller = _poller(clock, timing=timing)
    seen: list[float] = []
    with LoopbackServer(lambda h: _answer_each(h, seen, clock)) as server:
        client = RunPodClient(server.url + "/v2", "ep", None)
        caller = Caller(client, Limiters(clock=clock, sleep=clock.sleep), sleep=clock.sleep)
        poller.wait(caller, "j1", 0.0)
        client.close()
    assert clock.slept == [0.2]


def _answer_each(h: Any, seen: list[float], clock: FakeClock) -> None:
    seen.append(clock())
    respond(h, 200, QUEUED if len(seen) == 1 else DONE)


# --- long polls --------------------------------------------------------------------------------


def test_a_poller_long_polls_by_default_and_falls_back_when_refused(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(405, {"error": "no"}))
    scripted.on("status", Say(200, DONE))
    poller = Poller(StallDetector(60.0, clock), Timing(), max_wait=600.0, clock=clock,
                    sleep=clock.sleep)
    assert poller.wait(caller, "j1", START).outcome == "terminal"
    assert scripted.routes() == ["status-sync", "status"]


def test_a_long_poll_is_held_at_least_a_second(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(200, RUNNING, takes=1.0), Say(200, DONE))
    _poller(clock, mode="auto", max_queue_time=1.0).wait(caller, "j1", START)
    assert [ms for _, ms in scripted.asked] == [1000, 1000]


@pytest.mark.parametrize("code", [403, 500, 429])
def test_a_failed_long_poll_other_than_a_refusal_is_no_reason_to_fall_back(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock, code: int) -> None:
    scripted.on("status-sync", Say(code, {"error": "no"}, headers=(("Retry-After", "1"),)),
                Say(200, DONE))
    result = _poller(clock, mode="auto").wait(caller, "j1", START)
    assert scripted.routes()[:2] == ["status-sync"] * (1 if code == 403 else 2)
    assert result.outcome == ("error" if code == 403 else "terminal")


def test_the_missing_route_probe_asks_status_twice_at_most(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    # /status-sync says 404; /status fails twice: the job cannot be told from a missing route,
    # so rpq takes it as expired rather than asking on and on.
    scripted.on("status-sync", Say(404, {"error": "no"}))
    scripted.on("status", Say(502, "bad"), Say(502, "bad"), Say(200, DONE))
    result = _poller(clock, mode="auto").wait(caller, "j1", START)
    assert result.outcome == "expired"
    assert scripted.routes() == ["status-sync", "status", "status"]


# --- the limits every poll keeps to -----------------------------------------------------------


def _drain(caller: Caller) -> None:
    """Use up the burst RunPod's /status limit allows at one instant."""
    for _ in range(180):
        caller.limiters.acquire("status")


@pytest.mark.parametrize("mode", ["status", "sync"])
def test_polls_keep_to_runpods_status_limit(scripted: ScriptedEndpoint, caller: Caller,
                                            clock: FakeClock, mode: str) -> None:
    scripted.on("status", Say(200, DONE))
    scripted.on("status-sync", Say(200, DONE))
    _drain(caller)
    assert clock.slept == []
    _poller(clock, mode=mode).wait(caller, "j1", START)
    assert clock.slept == [pytest.approx(10 / 1800)]


def test_the_missing_route_probe_keeps_to_the_status_limit(
        scripted: ScriptedEndpoint, caller: Caller, clock: FakeClock) -> None:
    scripted.on("status-sync", Say(404, {"error": "no"}))
    scripted.on("status", Say(200, DONE))
    _drain(caller)
    _poller(clock, mode="auto").wait(caller, "j1", START)
    assert scripted.routes() == ["status-sync", "status", "status"]
    assert clock.slept == pytest.approx([10 / 1800] * 3)


