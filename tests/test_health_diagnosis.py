"""The health diagnosis in words, from every shape of /health reply."""

from __future__ import annotations

from rpq.health import diagnose


def test_every_key_optional() -> None:
    d = diagnose({})
    assert d.workers["idle"] == 0 and d.jobs["inQueue"] == 0
    assert any("cold start" in f for f in d.findings)
    assert diagnose(None).workers["unhealthy"] == 0
    assert diagnose({"workers": {"idle": "x", "running": True}}).workers["idle"] == 0


def test_healthy() -> None:
    d = diagnose({"workers": {"idle": 2, "running": 1}, "jobs": {"inProgress": 1}})
    assert not d.degraded
    assert d.findings == ["healthy: workers are ready and nothing is stuck."]


def test_unhealthy_means_crash_loop() -> None:
    d = diagnose({"workers": {"unhealthy": 2, "idle": 1}})
    assert d.degraded and any("crash-looping" in f for f in d.findings)


def test_throttled_means_no_capacity() -> None:
    d = diagnose({"workers": {"throttled": 3}})
    assert d.degraded and any("GPU capacity" in f for f in d.findings)


def test_queue_with_no_worker() -> None:
    d = diagnose({"workers": {}, "jobs": {"inQueue": 4}})
    assert d.degraded and any("no worker at all" in f for f in d.findings)


def test_initializing_is_a_cold_start() -> None:
    d = diagnose({"workers": {"initializing": 1}, "jobs": {"inQueue": 1}})
    assert not d.degraded and any("cold start is in progress" in f for f in d.findings)


def test_queue_with_idle_workers_is_stuck() -> None:
    d = diagnose({"workers": {"idle": 2}, "jobs": {"inQueue": 5}})
    assert d.degraded and any("stuck" in f for f in d.findings)
