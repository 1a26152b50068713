"""`rpq health`, `rpq cancel`, `rpq purge` against the local endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchkit import endpoint_env, in_flight, rpq, rpq_process, stop
from helpers import Gate, wait_for
from imaging import make_images

from rpq.journal import JOURNAL_NAME, Journal


def _submit(ep: Any, n: int, **input: Any) -> list[str]:
    import requests

    with requests.Session() as s:
        return [s.post(f"{ep.url}/run", json={"input": {"i": i, **input}}, timeout=5).json()["id"]
                for i in range(n)]


def test_health_table_and_json(make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_min=1, workers_max=1)
    wait_for(lambda: ep.health()["workers"]["idle"] + ep.health()["workers"]["ready"] >= 1)
    run = rpq("health", env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert "workers" in run.stdout and "healthy" in run.stdout
    run = rpq("health", "--json", env=endpoint_env(ep))
    data = json.loads(run.stdout)
    assert data["healthy"] is True and "workers" in data["health"]


def test_health_diagnoses_no_capacity(make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2, throttled=2)
    _submit(ep, 2)
    wait_for(lambda: ep.health()["jobs"]["inQueue"] == 2)
    run = rpq("health", "--json", env=endpoint_env(ep))
    assert run.code == 1
    findings = " ".join(json.loads(run.stdout)["findings"])
    assert "throttled" in findings and "GPU capacity" in findings


def test_health_crash_loop_is_unhealthy(make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1, faults="crash=1.0", seed=3,
                       crash_downtime=5.0)
    _submit(ep, 1)
    wait_for(lambda: ep.health()["workers"]["unhealthy"] >= 1, timeout=10)
    run = rpq("health", ep.endpoint_id, "--base-url", ep.base_url)
    assert run.code == 1
    assert "crash-looping" in run.stdout


def test_health_needs_an_endpoint_and_reports_auth(make_endpoint) -> None:
    run = rpq("health")
    assert run.code == 2 and "rpq serve" in run.stderr
    ep = make_endpoint(handler="echo", api_key="k-secret-1")
    run = rpq("health", env=endpoint_env(ep, key="bad-key"))
    assert run.code == 3 and "401" in run.stderr


def test_cancel_by_id(make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    ep.pause()
    ids = _submit(ep, 2)
    run = rpq("cancel", *ids, env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert run.stdout.count("CANCELLED") == 2
    assert all(ep.job(i)["status"] == "CANCELLED" for i in ids)
    run = rpq("cancel", "no-such-job", env=endpoint_env(ep))
    assert run.code == 1 and "404" in run.stdout


def test_cancel_leftovers_of_a_crashed_batch(tmp_path: Path, make_endpoint) -> None:
    gate = Gate(timeout=30)
    ep = make_endpoint(handler=gate, workers_max=1)
    src = tmp_path / "in"
    make_images(src, 3)
    out = tmp_path / "out"
    proc = rpq_process("batch", src, "--out", out, "--no-progress", env=endpoint_env(ep))
    try:
        wait_for(lambda: in_flight(out) == 3, timeout=20)
        proc.kill()
        proc.communicate(timeout=10)
        run = rpq("cancel", "--journal", out, env=endpoint_env(ep))
    finally:
        gate.open_all()
    assert run.code == 0, run.stderr
    assert sum(j["status"] == "CANCELLED" for j in ep.jobs()) == 3
    assert all(e.cancels for e in Journal(out / JOURNAL_NAME).entries.values())
    run = rpq("cancel", "--journal", out, env=endpoint_env(ep))
    assert run.code == 0 and "nothing to cancel" in run.stderr


def test_purge_asks_then_empties_the_queue(make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    ep.pause()
    _submit(ep, 3)
    run = rpq("purge", env=endpoint_env(ep))
    assert run.code == 2 and "--yes" in run.stderr  # not a terminal: refuses to guess
    assert ep.health()["jobs"]["inQueue"] == 3
    run = rpq("purge", "--yes", env=endpoint_env(ep))
    assert run.code == 0
    assert run.stdout == f"removed 3 queued job(s) from {ep.endpoint_id}\n"
    assert ep.health()["jobs"]["inQueue"] == 0
    _submit(ep, 2)
    run = rpq("purge", "-e", ep.endpoint_id, "--base-url", ep.base_url, "--yes", "--json")
    assert run.code == 0
    assert json.loads(run.stdout) == {"removed": 2, "status": "completed"}


def test_health_watch_refreshes_until_ctrl_c(make_endpoint) -> None:
    import signal

    ep = make_endpoint(handler="echo", workers_max=1)
    proc = rpq_process("health", "--watch", "0.5", env=endpoint_env(ep))
    try:
        wait_for(lambda: ep.calls().get("health", 0) >= 3, timeout=60)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode in (0, 1)
    assert "diagnosis" in stdout
