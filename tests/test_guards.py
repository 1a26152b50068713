"""Halting rules and alert rate limits, with an injected clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import FakeClock

from rpq.errors import UsageError
from rpq.guards import HALT_MIN_SAMPLE, Alerter, Guards, GuardSettings, HaltRule
from rpq.metrics import JobRecord


def test_halt_rule_parse_and_trip() -> None:
    assert HaltRule.parse("5") == HaltRule(count=5)
    assert HaltRule.parse("20%") == HaltRule(percent=20.0)
    for bad in ("0", "-1", "x", "0%", "120%"):
        with pytest.raises(UsageError):
            HaltRule.parse(bad)
    rule = HaltRule(percent=50)
    assert rule.tripped(HALT_MIN_SAMPLE - 1, HALT_MIN_SAMPLE - 1) is None  # too few to judge
    assert rule.tripped(HALT_MIN_SAMPLE, HALT_MIN_SAMPLE // 2) is not None
    assert HaltRule(count=2).tripped(3, 2) is not None


def test_bad_input_does_not_count_toward_halting() -> None:
    guards = Guards(GuardSettings(halt=HaltRule(count=1)), None)
    assert guards.observe(JobRecord(input="a", status="FAILED", error_kind="bad_input")) is None
    assert guards.observe(JobRecord(input="b", status="FAILED", error_kind="worker_error"))


def test_budget_from_execution_time() -> None:
    guards = Guards(GuardSettings(cost_per_hour=36.0, budget=0.02), None)
    assert guards.observe(JobRecord(input="a", status="COMPLETED", process_time=1.0)) is None
    assert guards.spend == pytest.approx(0.01)
    assert "budget" in (guards.observe(JobRecord(input="b", status="COMPLETED",
                                                 process_time=1.0)) or "")


def test_alerter_once_a_minute_per_kind() -> None:
    clock = FakeClock()
    sent: list[dict[str, Any]] = []
    done = threading.Event()

    def post(url: str, message: dict[str, Any]) -> int:
        sent.append(message)
        if message["kind"] == "summary":
            done.set()
        return 200

    alerter = Alerter("http://127.0.0.1:1/x", post, clock=clock)
    assert alerter.alert("queue_time", "slow")
    assert not alerter.alert("queue_time", "slow again")
    assert alerter.alert("process_time", "other kind")
    clock.now = 61.0
    assert alerter.alert("queue_time", "a minute later")
    assert alerter.alert("summary", "end", force=True)
    assert done.wait(5)
    alerter.close()
    assert [m["kind"] for m in sent] == ["queue_time", "process_time", "queue_time", "summary"]
    assert all(m["text"] == m["content"] for m in sent)
