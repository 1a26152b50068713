"""Alerts, failover, budget and halting, against local endpoints over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from batchkit import batch_args, endpoint_env, rpq
from helpers import WebhookReceiver
from imaging import make_images


@pytest.fixture
def hook(webhook: Callable[..., WebhookReceiver]) -> WebhookReceiver:
    return webhook()


def test_alerts_are_sent_rate_limited_with_a_summary(tmp_path: Path, make_endpoint,
                                                     hook: WebhookReceiver) -> None:
    ep = make_endpoint(handler="echo", workers_max=2, process_time=0.05)
    src = tmp_path / "in"
    make_images(src, 5)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--alert-webhook", hook.url, "--alert-process-time", "0.01"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    kinds = [m["kind"] for m in hook.bodies]
    assert kinds.count("process_time") == 1  # five slow jobs, one alert a minute
    assert kinds[-1] == "summary"
    summary = hook.bodies[-1]
    assert summary["text"] == summary["content"] and "5/5 done" in summary["text"]


def test_a_failing_webhook_never_stops_the_batch(tmp_path: Path, make_endpoint,
                                                 webhook: Callable[..., WebhookReceiver]) -> None:
    broken = webhook(status=500)
    ep = make_endpoint(handler="echo", workers_max=2, faults="fail=1.0", seed=1)
    src = tmp_path / "in"
    make_images(src, 12)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--alert-webhook", broken.url), env=endpoint_env(ep))
    assert run.code == 1
    assert run.metrics(out)["stats"]["total_jobs"] == 12
    assert [m["kind"] for m in broken.bodies] == ["failure_rate", "summary"]


def test_failover_moves_queued_jobs_to_the_fallback(tmp_path: Path, make_endpoint) -> None:
    primary = make_endpoint(handler="echo", workers_max=2, faults="stuck=1.0", seed=1)
    fallback = make_endpoint(handler="echo", workers_max=2, endpoint_id="backup")
    src = tmp_path / "in"
    make_images(src, 6)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--max-queue-time", "1", "--job-retries", "0",
                          "--fallback-endpoint", fallback.url),
              env=endpoint_env(primary))
    assert run.code == 0, run.stderr
    data = run.metrics(out)
    assert {j["endpoint"] for j in data["jobs"]} == {"backup"}
    assert data["run"]["failovers"] and data["run"]["failovers"][0]["to"] == "backup"
    assert all(j["status"] == "CANCELLED" for j in primary.jobs())
    assert len(primary.jobs()) == 6
    assert sorted(j["status"] for j in fallback.jobs()) == ["COMPLETED"] * 6
    assert "failing over to backup" in run.stderr


def test_budget_stops_submitting(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1, process_time=0.2)
    src = tmp_path / "in"
    make_images(src, 12)
    out = tmp_path / "out"
    # $3600/h is $1 per second of execution: 0.5 $ is reached after about 3 jobs.
    run = rpq(*batch_args(src, out, "--cost-per-hour", "3600", "--budget", "0.5",
                          "--concurrency", "1"), env=endpoint_env(ep))
    assert run.code == 1
    data = run.metrics(out)
    assert data["run"]["stop_reason"].startswith("budget reached")
    assert data["run"]["estimated_cost"] >= 0.5
    assert ep.calls()["run"] < 12 and data["run"]["not_started"] > 0
    assert "stopped early" in run.stderr
    # The rest is done on the next run.
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert len(list(out.glob("img_*.png"))) == 12


def test_halt_on_fail_count(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1, faults="fail=1.0", seed=1)
    src = tmp_path / "in"
    make_images(src, 20)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--halt-on-fail", "3", "--concurrency", "1"),
              env=endpoint_env(ep))
    assert run.code == 1
    data = run.metrics(out)
    assert data["run"]["stop_reason"].startswith("halted: 3 jobs failed")
    assert ep.calls()["run"] <= 4


def test_guard_options_are_checked(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq(*batch_args(src, tmp_path / "o", "--budget", "1"), env=endpoint_env(ep))
    assert run.code == 2 and "--cost-per-hour" in run.stderr
    run = rpq(*batch_args(src, tmp_path / "o", "--halt-on-fail", "lots"), env=endpoint_env(ep))
    assert run.code == 2 and "--halt-on-fail" in run.stderr
