"""rpq serve --worker: real worker processes running the runpod SDK's loop against the server."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from batchkit import batch_args, endpoint_env, rpq
from helpers import wait_for
from imaging import make_images

from rpq.local import LocalEndpoint

pytest.importorskip("runpod")

# Short SDK timings so no test waits for a default interval.
FAST: dict[str, Any] = {
    "ping_interval": 1.0,
    "heartbeat_timeout": 15.0,
    "stop_grace": 1.0,
    "take_hold": 2.0,
    "idle_timeout": 60.0,
    "crash_downtime": 0.2,
    "rate_limits": {},
}
START = 30.0  # a worker process imports the SDK first: seconds, more under load

Workers = Callable[..., LocalEndpoint]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """workers(SOURCE, **config) -> a started endpoint whose workers run SOURCE as a file."""
    started: list[LocalEndpoint] = []

    def make(source: str, **config: Any) -> LocalEndpoint:
        path = tmp_path / f"worker_{len(started)}.py"
        path.write_text(textwrap.dedent(source))
        command = f"{sys.executable} {path}"
        endpoint = LocalEndpoint(worker_command=command, **{**FAST, **config}).start()
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        endpoint.stop()


def run(http: requests.Session, ep: LocalEndpoint, inp: dict[str, Any], **extra: Any) -> str:
    r = http.post(f"{ep.url}/run", json={"input": inp, **extra}, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def finished(http: requests.Session, ep: LocalEndpoint, job_id: str) -> dict[str, Any]:
    """Wait until the job is terminal; its /status document."""
    def done() -> dict[str, Any] | None:
        doc: dict[str, Any] = http.get(f"{ep.url}/status/{job_id}", timeout=5).json()
        terminal = doc["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
        return doc if terminal else None

    return wait_for(done, timeout=START, message=f"job {job_id} to finish")


def status(http: requests.Session, ep: LocalEndpoint, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = http.get(f"{ep.url}/status/{job_id}", timeout=5).json()
    return doc


ECHO = """
    import os
    import pathlib
    import time
    import runpod

    calls = 0

    def handler(job):
        global calls
        calls += 1
        hold = job["input"].get("hold")
        deadline = time.monotonic() + 60
        while hold and not pathlib.Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"echo": job["input"], "pid": os.getpid(), "calls": calls}

    runpod.serverless.start({"handler": handler})
"""


def test_each_worker_is_a_process_with_its_own_globals(
    http: requests.Session, workers: Workers, tmp_path: Path
) -> None:
    ep = workers(ECHO, workers_max=2)
    hold = tmp_path / "go"
    held = [run(http, ep, {"n": n, "hold": str(hold)}) for n in range(2)]
    # Both run at once, so each is on its own worker.
    wait_for(lambda: all(status(http, ep, i)["status"] == "IN_PROGRESS" for i in held),
             timeout=START)
    hold.write_text("")
    docs = [finished(http, ep, i) for i in held]
    docs += [finished(http, ep, run(http, ep, {"n": n})) for n in range(2, 8)]
    assert {d["status"] for d in docs} == {"COMPLETED"}
    assert docs[2]["output"]["echo"] == {"n": 2}
    by_worker: dict[str, list[int]] = {}
    for doc in docs:
        by_worker.setdefault(doc["workerId"], []).append(doc["output"]["calls"])
    assert len(by_worker) == 2 and len({d["output"]["pid"] for d in docs}) == 2
    assert os.getpid() not in {d["output"]["pid"] for d in docs}
    # Each worker counts only its own calls: shared globals would count across workers.
    for counts in by_worker.values():
        assert counts == list(range(1, len(counts) + 1)), by_worker
    assert ep.health()["jobs"]["completed"] == 8


def test_worker_routes_need_the_worker_key(http: requests.Session, workers: Workers) -> None:
    # With this file the SDK sends the client key on job calls: the key in the URL still works.
    config = Path(os.environ["HOME"]) / ".runpod" / "config.toml"
    config.parent.mkdir()
    config.write_text('[default]\napi_key = "client-key"\n')
    ep = workers(ECHO, api_key="client-key")
    auth = {"Authorization": "Bearer client-key"}
    job_id = http.post(f"{ep.url}/run", json={"input": {"a": 1}}, headers=auth).json()["id"]
    for route in ("job-take/w1?job_in_progress=0", "job-stop/w1", "ping/w1?job_id=x"):
        for headers in ({}, auth, {"Authorization": "client-key"}):
            r = http.get(f"{ep.url}/{route}", headers=headers, timeout=5)
            assert r.status_code == 401, (route, headers, r.text)
    r = http.post(f"{ep.url}/job-done/w1/{job_id}?isStream=false", data='{"output": 1}',
                  headers=auth, timeout=5)
    assert r.status_code == 401
    # The worker itself has the key, so the job is done by it and not by the calls above.
    def completed() -> dict[str, Any] | None:
        doc = http.get(f"{ep.url}/status/{job_id}", headers=auth, timeout=5).json()
        return doc if doc["status"] == "COMPLETED" else None

    doc = wait_for(completed, timeout=START)
    assert doc["output"]["echo"] == {"a": 1}


def test_generator_streams_without_aggregate(http: requests.Session, workers: Workers) -> None:
    ep = workers("""
        import runpod

        def handler(job):
            for i in range(3):
                yield f"part {i}"

        runpod.serverless.start({"handler": handler})
    """)
    job_id = run(http, ep, {})
    doc = finished(http, ep, job_id)
    assert doc["status"] == "COMPLETED" and doc["output"] == []
    stream = http.get(f"{ep.url}/stream/{job_id}", timeout=15).json()
    assert [c["output"] for c in stream["stream"]] == ["part 0", "part 1", "part 2"]
    sync = http.post(f"{ep.url}/runsync", json={"input": {}}, timeout=60).json()
    assert sync["status"] == "COMPLETED" and sync["output"] == []


def test_generator_with_aggregate_and_error_chunk(http: requests.Session,
                                                  workers: Workers) -> None:
    ep = workers("""
        import runpod

        def handler(job):
            yield {"step": 1}
            if job["input"].get("fail"):
                yield {"error": "out of memory"}
                yield {"step": "never"}
            yield {"step": 2}

        runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
    """)
    good = finished(http, ep, run(http, ep, {}))
    assert good["status"] == "COMPLETED" and good["output"] == [{"step": 1}, {"step": 2}]
    bad_id = run(http, ep, {"fail": True})
    bad = finished(http, ep, bad_id)
    assert bad["status"] == "FAILED" and bad["error"] == "out of memory"
    chunks = http.get(f"{ep.url}/stream/{bad_id}", timeout=15).json()["stream"]
    assert [c["output"] for c in chunks] == [{"step": 1}]


def test_async_handler_with_concurrency_four_overlaps_on_one_worker(
    http: requests.Session, workers: Workers
) -> None:
    ep = workers("""
        import asyncio
        import runpod

        running = 0
        all_in = asyncio.Event()

        async def handler(job):
            global running
            running += 1
            if running == 4:
                all_in.set()
            # Returns only once four jobs run at the same time on this one worker.
            await asyncio.wait_for(all_in.wait(), timeout=60)
            return {"together": running}

        runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda c: 4})
    """, workers_max=1)
    ids = [run(http, ep, {"n": n}) for n in range(4)]
    docs = [finished(http, ep, i) for i in ids]
    assert [d["status"] for d in docs] == ["COMPLETED"] * 4, docs
    assert {d["output"]["together"] for d in docs} == {4}
    assert len({d["workerId"] for d in docs}) == 1


def test_refresh_worker_gives_a_new_process_per_job(http: requests.Session,
                                                    workers: Workers) -> None:
    ep = workers("""
        import os
        import runpod

        def handler(job):
            return {"pid": os.getpid(), "refresh_worker": True}

        runpod.serverless.start({"handler": handler})
    """, workers_max=1)
    first = finished(http, ep, run(http, ep, {}))
    second = finished(http, ep, run(http, ep, {}))
    assert first["status"] == second["status"] == "COMPLETED"
    assert first["output"] == {"pid": first["output"]["pid"]}  # refresh_worker is not output
    assert first["output"]["pid"] != second["output"]["pid"]
    assert first["workerId"] != second["workerId"]
    wait_for(lambda: not _alive(first["output"]["pid"]), timeout=10, message="old process gone")


CANCELLABLE = """
    import asyncio
    import pathlib
    import runpod

    async def handler(job):
        marker = pathlib.Path(job["input"]["marker"])
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            marker.write_text("stopped")
            raise
        return {"slept": True}

    runpod.serverless.start({"handler": handler})
"""


def test_cancel_and_timeout_stop_a_running_async_handler(
    http: requests.Session, workers: Workers, tmp_path: Path
) -> None:
    ep = workers(CANCELLABLE, workers_max=1)
    cancelled = tmp_path / "cancelled"
    job_id = run(http, ep, {"marker": str(cancelled)})
    wait_for(lambda: status(http, ep, job_id)["status"] == "IN_PROGRESS", timeout=START)
    assert http.post(f"{ep.url}/cancel/{job_id}", timeout=5).json()["status"] == "CANCELLED"
    wait_for(cancelled.exists, timeout=15, message="the handler saw the cancel")
    timed_out = tmp_path / "timed_out"
    job_id = run(http, ep, {"marker": str(timed_out)}, policy={"executionTimeout": 1500})
    assert finished(http, ep, job_id)["status"] == "TIMED_OUT"
    wait_for(timed_out.exists, timeout=15, message="the handler saw the timeout")
    # The same worker goes on with the next job: it stopped the handler, so nothing was killed.
    quick = tmp_path / "never"
    job_id = run(http, ep, {"marker": str(quick)})
    wait_for(lambda: status(http, ep, job_id)["status"] == "IN_PROGRESS", timeout=START)
    assert ep.health()["jobs"]["retried"] == 0


def test_handler_that_ignores_cancel_is_killed(http: requests.Session, workers: Workers) -> None:
    ep = workers("""
        import os
        import time
        import runpod

        def handler(job):
            if job["input"].get("block"):
                time.sleep(120)  # a sync handler: the SDK cannot interrupt it
            return {"pid": os.getpid()}

        runpod.serverless.start({"handler": handler})
    """, workers_max=1)
    pid = finished(http, ep, run(http, ep, {}))["output"]["pid"]
    job_id = run(http, ep, {"block": True})
    wait_for(lambda: status(http, ep, job_id)["status"] == "IN_PROGRESS", timeout=START)
    http.post(f"{ep.url}/cancel/{job_id}", timeout=5)
    wait_for(lambda: not _alive(pid), timeout=15, message="the blocked worker is killed")
    after = finished(http, ep, run(http, ep, {}))
    assert after["status"] == "COMPLETED" and after["output"]["pid"] != pid


def test_validator_import_progress_and_raise(http: requests.Session, workers: Workers,
                                             tmp_path: Path) -> None:
    ep = workers("""
        import pathlib
        import time
        import runpod
        from runpod.serverless.utils.rp_validator import validate

        SCHEMA = {"n": {"type": int, "required": True}, "go": {"type": str, "required": False,
                                                                "default": ""}}

        def handler(job):
            checked = validate(job["input"], SCHEMA)
            if "errors" in checked:
                return {"error": checked["errors"]}
            n = checked["validated_input"]["n"]
            if n < 0:
                raise ValueError("n must not be negative")
            if checked["validated_input"]["go"]:
                runpod.serverless.progress_update(job, "half way")
                go = pathlib.Path(checked["validated_input"]["go"])
                deadline = time.monotonic() + 60
                while not go.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            return {"double": 2 * n}

        runpod.serverless.start({"handler": handler})
    """)
    assert finished(http, ep, run(http, ep, {"n": 21}))["output"] == {"double": 42}
    invalid = finished(http, ep, run(http, ep, {"n": "x"}))
    assert invalid["status"] == "FAILED" and "n" in invalid["error"]
    raised = finished(http, ep, run(http, ep, {"n": -1}))
    assert raised["status"] == "FAILED"
    error = json.loads(raised["error"])
    assert error["error_type"] == "<class 'ValueError'>"
    assert error["error_message"] == "n must not be negative"
    assert "Traceback" in error["error_traceback"] and error["runpod_version"] == "1.12.0"
    go = tmp_path / "go"
    job_id = run(http, ep, {"n": 1, "go": str(go)})
    wait_for(lambda: status(http, ep, job_id).get("output") == "half way", timeout=START)
    assert status(http, ep, job_id)["status"] == "IN_PROGRESS"
    go.write_text("")
    assert finished(http, ep, job_id)["output"] == {"double": 2}


def test_worker_crash_mid_job_requeues_and_restarts(
    http: requests.Session, workers: Workers, tmp_path: Path
) -> None:
    ep = workers("""
        import os
        import pathlib
        import runpod

        def handler(job):
            once = pathlib.Path(job["input"]["once"])
            if not once.exists():
                once.write_text(str(os.getpid()))
                os._exit(3)
            return {"pid": os.getpid()}

        runpod.serverless.start({"handler": handler})
    """, workers_max=1, crash_downtime=1.0)
    once = tmp_path / "crashed"
    job_id = run(http, ep, {"once": str(once)})
    wait_for(lambda: ep.health()["workers"]["unhealthy"] == 1, timeout=START)
    doc = finished(http, ep, job_id)
    assert doc["status"] == "COMPLETED"
    assert doc["output"]["pid"] != int(once.read_text())
    health = ep.health()
    assert health["jobs"]["retried"] == 1 and health["workers"]["unhealthy"] == 0


def test_missed_heartbeats_mark_the_worker_unhealthy(
    http: requests.Session, workers: Workers
) -> None:
    ep = workers(ECHO, workers_max=1, heartbeat_timeout=4.0)
    pid = finished(http, ep, run(http, ep, {}))["output"]["pid"]
    os.killpg(pid, signal.SIGSTOP)  # a frozen worker: no pings, no job-takes
    job_id = run(http, ep, {"n": 1})
    wait_for(lambda: ep.health()["workers"]["unhealthy"] == 1, timeout=20)
    doc = finished(http, ep, job_id)
    assert doc["status"] == "COMPLETED" and doc["output"]["pid"] != pid
    assert not _alive(pid)


def test_size_limits_on_results_and_chunks(http: requests.Session, workers: Workers) -> None:
    ep = workers("""
        import runpod

        def handler(job):
            for _ in range(3):
                yield "é" * 750  # 1,500 bytes of UTF-8

        runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
    """, max_result=4000, max_chunk=1000)
    job_id = run(http, ep, {})
    doc = finished(http, ep, job_id)
    # The aggregate is over the result limit: RunPod completes such a job without output.
    assert doc["status"] == "COMPLETED" and "output" not in doc
    chunks = [c["output"] for c in http.get(f"{ep.url}/stream/{job_id}", timeout=15)
              .json()["stream"]]
    assert "".join(chunks) == "é" * 2250
    assert len(chunks) == 6 and all(len(c.encode()) <= 1000 for c in chunks)


def test_rpq_batch_against_worker_processes_with_faults(tmp_path: Path,
                                                        workers: Workers) -> None:
    # The first job crashes its worker for certain (the random faults hit whichever requests
    # the timing of the run gives them), so a job is always put back in the queue.
    crashed = tmp_path / "crashed"
    ep = workers(f"""
        import os, pathlib, runpod

        def handler(job):
            marker = pathlib.Path({str(crashed)!r})
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return {{"image": job["input"]["image"]}}

        runpod.serverless.start({{"handler": handler}})
    """, workers_max=2, faults="500=0.1,drop=0.05,fail=0.1,crash=0.1", seed=4)
    src = tmp_path / "in"
    make_images(src, 8)
    out = tmp_path / "out"
    run_ = rpq(*batch_args(src, out, "--max-retries", "8", "--retry-failed"),
               env=endpoint_env(ep))
    for _ in range(3):  # injected handler failures are final for a run; rerun as users do
        if run_.code == 0:
            break
        run_ = rpq(*batch_args(src, out, "--max-retries", "8", "--retry-failed"),
                   env=endpoint_env(ep))
    assert run_.code == 0, run_.stderr
    for path in sorted(src.iterdir()):
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert ep.health()["jobs"]["retried"] >= 1  # a crash put a job back in the queue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


PLAIN_WORKER = """
    # A worker without the SDK: the routes and environment are the whole contract.
    import json, os, sys, urllib.error, urllib.request

    env = os.environ
    take = env["RUNPOD_WEBHOOK_GET_JOB"]

    def call(url, data=None, key=env["RUNPOD_AI_API_KEY"], method=None):
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": key})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    batch = take.replace("/job-take/", "/job-take-batch/") + "&batch_size=2&job_in_progress=0"
    jobs = []
    while len(jobs) < 2:
        status, body = call(batch)
        if status == 200:
            jobs += json.loads(body)
    done = env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$ID", jobs[0]["id"]) + "&isStream=false"
    call(done, json.dumps({"output": {"got": len(jobs)}}).encode())
    report = {
        "inputs": sorted(j["input"]["n"] for j in jobs),
        "wrong_key": call(take + "&job_in_progress=1", key="nope")[0],
        "wrong_method": call(take + "&job_in_progress=1", data=b"", method="POST")[0],
        "bad_batch": call(batch.replace("batch_size=2", "batch_size=x"))[0],
        "unknown_worker": call(take.replace(env["RUNPOD_POD_ID"], "someone-else"))[0],
    }
    while True:
        status, body = call(take.replace("/job-take/", "/job-stop/"))
        if status == 200:
            report["stop"] = json.loads(body)["jobsToStop"]
            break
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""


def test_the_worker_contract_without_the_sdk(
    http: requests.Session, tmp_path: Path
) -> None:
    path = tmp_path / "plain_worker.py"
    path.write_text(textwrap.dedent(PLAIN_WORKER))
    report = tmp_path / "report.json"
    ep = LocalEndpoint(worker_command=f"{sys.executable} {path} {report}",
                       **{**FAST, "workers_max": 1}).start()
    try:
        ep.pause()
        first, second = run(http, ep, {"n": 1}), run(http, ep, {"n": 2})
        ep.resume()
        assert finished(http, ep, first)["output"] == {"got": 2}  # one batch took both
        assert status(http, ep, second)["status"] == "IN_PROGRESS"
        http.post(f"{ep.url}/cancel/{second}", timeout=5)
        wait_for(report.exists, timeout=START, message="the worker's report")
        assert json.loads(report.read_text()) == {
            "inputs": [1, 2], "wrong_key": 401, "wrong_method": 405, "bad_batch": 400,
            "unknown_worker": 404, "stop": [second],
        }
    finally:
        ep.stop()


def test_rpq_serve_worker_on_the_command_line(tmp_path: Path) -> None:
    import subprocess

    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(ECHO))
    logs = tmp_path / "logs"
    env = {**os.environ, "RPQ_SERVE_API_KEY": "cli-key"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("rpq")), "serve", "--port", "0",
         "--worker", f"{sys.executable} {worker}", "--worker-logs", str(logs),
         "--ping-interval", "1", "--stop-grace", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        assert announced["worker"] == f"{sys.executable} {worker}"
        base = announced["base_url"]
        headers = {"Authorization": "Bearer cli-key"}
        r = requests.post(f"{base}/local/runsync", json={"input": {"hi": 1}}, headers=headers,
                          timeout=60)
        doc = r.json()
        assert doc["status"] == "COMPLETED" and doc["output"]["echo"] == {"hi": 1}
        pid = doc["output"]["pid"]
        log = logs / f"{doc['workerId']}.log"
        assert "Starting Serverless Worker" in log.read_text()
        r = requests.get(f"{base}/local/job-take/{doc['workerId']}?job_in_progress=0",
                         headers=headers, timeout=5)
        assert r.status_code == 401  # the client's key does not take jobs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not _alive(pid)  # the worker process went with the server
        assert proc.stderr is not None and "cli-key" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("command", "words"),
    [("", "--worker is empty"), ("no-such-program-xyz w.py", "not a program"),
     ("python 'unclosed", "cannot be parsed")],
)
def test_bad_worker_commands_are_refused_at_start(command: str, words: str) -> None:
    from typer.testing import CliRunner

    from rpq.cli import app

    result = CliRunner().invoke(app, ["serve", "--port", "0", "--worker", command])
    assert result.exit_code == 2
    assert words in result.stderr
