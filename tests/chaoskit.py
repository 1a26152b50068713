"""Chaos and crash scenarios for `rpq batch`, shared by tests/test_chaos.py, tests/test_crashes.py
and bench/chaos.py (which runs them at scale and writes RELIABILITY.md).

Each scenario returns an Outcome: the figures worth publishing and the list of invariants that
did not hold (empty when everything held).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchkit import batch_args, endpoint_env, rpq
from helpers import wait_for
from imaging import decodes, make_images
from PIL import Image

from rpq.journal import JOURNAL_NAME, Journal
from rpq.local import LocalEndpoint
from rpq.metrics import ERROR_KINDS

#: The issue's fault mix: 10% HTTP 500, 5% 429, 2% dropped connections, 10% slow answers,
#: 5% handler failures, 2% stuck jobs.
CHAOS_FAULTS = "500=0.1,429=0.05,drop=0.02,fail=0.05,stuck=0.02,slow=0.1"
ACTIVE = ("IN_QUEUE", "IN_PROGRESS")


@dataclass
class Outcome:
    """What one scenario run did (figures) and which invariants failed (violations)."""

    scenario: str
    seed: int
    images: int
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    checks: int = 0

    def check(self, ok: bool, message: str) -> None:
        self.checks += 1
        if not ok:
            self.violations.append(message)


# --- inputs -----------------------------------------------------------------------------------


def _images(src: Path, count: int) -> dict[str, bytes]:
    """`count` distinct images in `src`: file name -> the bytes sent."""
    return {path.name: path.read_bytes() for path in make_images(src, count)}


def count_http_faults(ep: LocalEndpoint) -> Counter[str]:
    """Count the HTTP faults the endpoint injects from now on (wraps its dice, test only)."""
    dice = ep._fleet.dice
    draw = dice.http_fault
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def counting() -> tuple[str | None, bool]:
        fault, slow = draw()
        with lock:
            counts[fault or "answered"] += 1
            if slow:
                counts["slow"] += 1
        return fault, slow

    dice.http_fault = counting  # type: ignore[method-assign]
    return counts


def output_files(out: Path) -> list[Path]:
    """What rpq wrote as results: every file but its own hidden files and the metrics."""
    return sorted(p for p in out.rglob("*") if p.is_file()
                  and not p.name.startswith(".") and p.name != "job_metrics.json")


def leftover_parts(out: Path) -> list[Path]:
    return sorted(out.rglob("*.part"))


# --- chaos at scale ---------------------------------------------------------------------------


def chaos_batch(work: Path, *, images: int, seed: int, faults: str = CHAOS_FAULTS,
                workers: int = 8, cold_start: float = 0.2, idle_timeout: float = 0.5,
                slow_delay: float = 0.2, process_time: tuple[float, float] = (0.0, 0.05),
                concurrency: int = 16, max_queue_time: float = 2.0, max_retries: int = 6,
                job_retries: int = 2) -> Outcome:
    """One batch through every fault at once, then every invariant of the issue checked."""
    outcome = Outcome("chaos", seed, images)
    src, out = work / "in", work / "out"
    sent = _images(src, images)
    ep = LocalEndpoint(handler="echo", workers_max=workers, cold_start=cold_start,
                       idle_timeout=idle_timeout, process_time=process_time, faults=faults,
                       slow_delay=slow_delay, seed=seed, rate_limits={}).start()
    try:
        injected = count_http_faults(ep)
        started = time.monotonic()
        run = rpq(*batch_args(src, out, "--concurrency", str(concurrency), "--max-queue-time",
                              str(max_queue_time), "--max-retries", str(max_retries),
                              "--job-retries", str(job_retries)), env=endpoint_env(ep))
        outcome.seconds = round(time.monotonic() - started, 2)
        _check_chaos(outcome, ep, run.code, out, sent, injected)
        # A plain rerun sends nothing new; --retry-failed finishes what failed.
        before = ep.calls()["run"]
        again = rpq(*batch_args(src, out, "--concurrency", str(concurrency)), env=endpoint_env(ep))
        outcome.check(ep.calls()["run"] == before,
                      f"a plain rerun sent {ep.calls()['run'] - before} /run request(s)")
        outcome.check(again.code == run.code,
                      f"a plain rerun exited {again.code}, the run {run.code}")
        _finish_failures(outcome, ep, src, out, sent, concurrency, max_queue_time)
    finally:
        ep.stop()
    return outcome


def _check_chaos(outcome: Outcome, ep: LocalEndpoint, code: int, out: Path,
                 sent: dict[str, bytes], injected: Counter[str]) -> None:
    check = outcome.check
    data = json.loads((out / "job_metrics.json").read_text())
    records = data["jobs"]
    by_input: dict[str, dict[str, Any]] = {}
    for rec in records:
        check(rec["input"] not in by_input, f"{rec['input']}: two records")
        by_input[rec["input"]] = rec
    check(set(by_input) == set(sent),
          f"records for {len(by_input)} images, {len(sent)} sent; missing "
          f"{sorted(set(sent) - set(by_input))[:5]}")
    completed = [r for r in records if r["status"] == "COMPLETED"]
    failed = [r for r in records if r["status"] != "COMPLETED"]
    # Every image has an output or a recorded failure with its cause.
    for rec in completed:
        outs = rec["outputs"]
        check(len(outs) == 1, f"{rec['input']}: {len(outs)} outputs")
        for name in outs:
            path = out / name
            ok = path.is_file() and path.read_bytes() == sent.get(rec["input"])
            check(ok, f"{rec['input']}: output {name} missing or not the image sent")
    for rec in failed:
        check(bool(rec["error"]) and rec["error_kind"] in ERROR_KINDS,
              f"{rec['input']}: {rec['status']} without a cause")
    # No image has two outputs; nothing but outputs of completed jobs was written.
    written = {p.relative_to(out).as_posix() for p in output_files(out)}
    expected = {name for rec in completed for name in rec["outputs"]}
    check(written == expected, f"files written {len(written)}, outputs recorded "
          f"{len(expected)}: extra {sorted(written - expected)[:5]}")
    check(not leftover_parts(out), f"temp files left: {leftover_parts(out)[:3]}")
    check(code == (0 if not failed else 1), f"exit code {code} with {len(failed)} failures")
    # The server shows nothing left queued or running that rpq started.
    jobs = ep.jobs()
    active = [j["id"] for j in jobs if j["status"] in ACTIVE]
    check(not active, f"{len(active)} job(s) still queued or running on the endpoint")
    # /run calls == images submitted + retries rpq recorded (resubmissions via attempts).
    run = data["run"]
    calls = ep.calls()
    attempts = sum(int(r["attempts"] or 0) for r in records)
    retries = int(run["run_request_retries"])
    check(calls["run"] == attempts + retries,
          f"/run calls {calls['run']} != attempts {attempts} + retries {retries}")
    # rpq's request counts agree with the server's own.
    for op, n in run["requests"].items():
        check(calls.get(op) == n, f"{op}: rpq sent {n}, the server saw {calls.get(op)}")
    for op, n in calls.items():
        check(n == 0 or op in run["requests"], f"{op}: the server saw {n}, rpq counted none")
    # Each job the server made is a record's job or an earlier attempt rpq cancelled.
    server = {j["id"]: j for j in jobs}
    submit_failed = sum(1 for r in failed if (r["error"] or "").startswith("submit failed"))
    check(len(server) == attempts - submit_failed,
          f"server has {len(server)} jobs, rpq made {attempts - submit_failed}")
    journal = Journal(out / JOURNAL_NAME)
    cancelled_ids = {c["job_id"] for e in journal.entries.values() for c in e.cancels}
    record_ids = {r["job_id"] for r in records if r["job_id"]}
    stray = set(server) - record_ids - cancelled_ids
    check(not stray, f"{len(stray)} server job(s) neither recorded nor cancelled by rpq")
    want = {"COMPLETED": "COMPLETED", "worker_error": "FAILED", "stalled": "CANCELLED",
            "timed_out": "CANCELLED", "no_output": "COMPLETED"}
    for rec in records:
        job = server.get(rec["job_id"]) if rec["job_id"] else None
        if rec["job_id"]:
            check(job is not None, f"{rec['input']}: job {rec['job_id']} unknown to the server")
        if job is None:
            continue
        kind = "COMPLETED" if rec["status"] == "COMPLETED" else rec["error_kind"]
        if kind in want:
            check(job["status"] == want[kind],
                  f"{rec['input']}: rpq says {kind}, the server {job['status']}")
    server_completed = sum(1 for j in jobs if j["status"] == "COMPLETED")
    server_failed = sum(1 for j in jobs if j["status"] == "FAILED")
    worker_errors = sum(1 for r in failed if r["error_kind"] == "worker_error")
    check(server_completed == len(completed),
          f"server completed {server_completed}, rpq {len(completed)}")
    check(server_failed == worker_errors,
          f"server failed {server_failed}, rpq worker errors {worker_errors}")
    stats = data["stats"]
    check(stats["total_jobs"] == len(sent) and stats["completed"] == len(completed),
          f"stats say {stats['total_jobs']} jobs, {stats['completed']} completed")
    # The journal reads back whole and has nothing left in flight.
    check(journal.torn_lines == 0, f"journal: {journal.torn_lines} unreadable line(s)")
    check(not journal.in_flight() and not journal.orphans(),
          f"journal: {len(journal.in_flight())} in flight, {len(journal.orphans())} orphans")
    kinds = Counter(r["error_kind"] for r in failed)
    outcome.figures.update(
        completed=len(completed), failed=len(failed),
        failed_by_kind=dict(sorted(kinds.items())),
        run_calls=calls["run"], run_retries=retries,
        resubmissions=sum(max(0, int(r["attempts"] or 0) - 1) for r in records),
        server_jobs=len(server),
        stuck_jobs=sum(1 for j in jobs if j.get("stuck")),
        server_failed=server_failed,
        status_calls=calls["status"] + calls["status-sync"], cancels=calls["cancel"],
        injected={k: injected[k] for k in ("500", "429", "drop", "slow")},
        requests_seen=sum(injected.values()) - injected["slow"],
    )


def _finish_failures(outcome: Outcome, ep: LocalEndpoint, src: Path, out: Path,
                     sent: dict[str, bytes], concurrency: int, max_queue_time: float) -> None:
    """Rerun with --retry-failed until nothing is left (faults still on; at most 5 reruns)."""
    reruns = 0
    for _ in range(5):
        records = json.loads((out / "job_metrics.json").read_text())["jobs"]
        if all(r["status"] == "COMPLETED" for r in records):
            break
        reruns += 1
        rpq(*batch_args(src, out, "--retry-failed", "--concurrency", str(concurrency),
                        "--max-queue-time", str(max_queue_time), "--max-retries", "6",
                        "--job-retries", "2"), env=endpoint_env(ep))
    records = json.loads((out / "job_metrics.json").read_text())["jobs"]
    done = {r["input"] for r in records if r["status"] == "COMPLETED"}
    outcome.check(done == set(sent), f"after {reruns} --retry-failed rerun(s), "
                  f"{len(set(sent) - done)} image(s) still not done")
    for name, data in sent.items():
        path = out / name
        outcome.check(path.is_file() and path.read_bytes() == data,
                      f"{name}: final output missing or wrong")
    outcome.check(len(output_files(out)) == len(sent),
                  f"{len(output_files(out))} output files for {len(sent)} images")
    outcome.figures["reruns_to_finish"] = reruns


# --- SIGKILL at random moments ----------------------------------------------------------------

MOMENTS = ("submit", "poll", "write", "journal")


def _rpq_child(args: list[str], env: dict[str, str], log: Path,
               preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("rpq")
    with log.open("ab") as fh:
        return subprocess.Popen([str(exe), *args], env={**os.environ, **env},
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                preexec_fn=preexec_fn)


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def resubmitted_while_held(path: Path) -> list[str]:
    """Journal lines that show a job sent again while the endpoint had its earlier one: an
    `intent` after a `submitted` with no end, loss or confirmed cancel in between."""
    problems = []
    last: dict[str, str] = {}
    with path.open("rb") as fh:
        for raw in fh:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a line torn by a kill
            key, kind = event.get("key"), event.get("event")
            if kind == "intent" and last.get(key) in ("submitted", "end"):
                problems.append(f"{event.get('rel')}: sent again after {last[key]}")
            if kind in ("intent", "submitted", "end", "lost"):
                last[key] = kind
            elif kind == "cancel" and _said_cancelled(event.get("answer")):
                last[key] = "cancelled"
    return problems


def kill_loop(work: Path, *, images: int, seed: int, kills: int = 20, workers: int = 4,
              process_time: tuple[float, float] = (0.02, 0.1)) -> Outcome:
    """SIGKILL `rpq batch` at `kills` seeded moments (after k more /run calls, status polls,
    output files or journal lines), rerunning the same command each time, then once to the
    end; check that every image was done once and nothing the server had was sent again."""
    outcome = Outcome("sigkill", seed, images)
    rng = random.Random(seed)
    src, out = work / "in", work / "out"
    sent = _images(src, images)
    b64_to_name = {base64.b64encode(data).decode(): name for name, data in sent.items()}
    log = work / "rpq.log"
    ep = LocalEndpoint(handler="echo", workers_max=workers, process_time=process_time,
                       seed=seed, rate_limits={}).start()
    args = [str(a) for a in batch_args(src, out, "--concurrency", "8")]
    orphaned: set[tuple[str, int]] = set()  # (image, attempt) of each submit cut off
    moments: Counter[str] = Counter()
    killed = finished_early = temp_after_kills = 0
    started = time.monotonic()
    try:
        for _ in range(kills):
            kind = rng.choice(MOMENTS)
            k = rng.randint(1, 6)
            calls = ep.calls()
            base = {"submit": calls["run"], "poll": calls["status-sync"] + calls["status"],
                    "write": len(output_files(out)) if out.exists() else 0,
                    "journal": _lines(out / JOURNAL_NAME)}[kind]

            def reached(kind: str = kind, target: int = base + k) -> bool:
                c = ep.calls()
                now = {"submit": lambda: c["run"],
                       "poll": lambda: c["status-sync"] + c["status"],
                       "write": lambda: len(output_files(out)) if out.exists() else 0,
                       "journal": lambda: _lines(out / JOURNAL_NAME)}[kind]()
                return now >= target

            proc = _rpq_child(args, endpoint_env(ep), log)
            try:
                wait_for(lambda p=proc: p.poll() is not None or reached(), timeout=60,
                         interval=0.002, message=f"moment {kind}+{k}")
                if proc.poll() is None:
                    proc.kill()
                    killed += 1
                    moments[kind] += 1
                else:
                    finished_early += 1
            finally:
                proc.wait(timeout=30)
            if out.exists():
                temp_after_kills += len(leftover_parts(out))  # the rerun must remove them
            if (out / JOURNAL_NAME).exists():
                for entry in Journal(out / JOURNAL_NAME).orphans():
                    orphaned.add((entry.rel, entry.attempts))  # the next run resends it
        final = _rpq_child(args, endpoint_env(ep), log)
        code = final.wait(timeout=120)
        outcome.seconds = round(time.monotonic() - started, 2)
        check = outcome.check
        check(code == 0, f"the final run exited {code}: see {log}")
        # Every image done once: one output each, the image sent back, decodable.
        for name, data in sent.items():
            path = out / name
            check(path.is_file() and path.read_bytes() == data and decodes(data),
                  f"{name}: output missing, wrong or corrupt")
        files = output_files(out)
        check(len(files) == len(sent), f"{len(files)} output files for {len(sent)} images")
        check(all(decodes(p.read_bytes()) for p in files), "an output file does not decode")
        check(not leftover_parts(out), f"temp files left at the end: {leftover_parts(out)}")
        # No job resubmitted that the server already had: only submits cut off between
        # /run and its answer (orphans in the journal) may have been sent twice.
        jobs = ep.jobs()
        per_image = Counter(b64_to_name.get(j["input"]["image"], "?") for j in jobs)
        check(set(per_image) == set(sent), "the server has jobs for unknown images")
        cut_off = Counter(rel for rel, _ in orphaned)
        for name, n in per_image.items():
            check(n <= 1 + cut_off[name],
                  f"{name}: {n} jobs on the server, {cut_off[name]} orphaned submit(s)")
        check(not [j for j in jobs if j["status"] in ACTIVE], "jobs left queued or running")
        for problem in resubmitted_while_held(out / JOURNAL_NAME):
            check(False, problem)
        journal = Journal(out / JOURNAL_NAME)
        check(all(e.state == "done" for e in journal.entries.values())
              and len(journal.entries) == len(sent),
              f"journal: {Counter(e.state for e in journal.entries.values())}")
        records = json.loads((out / "job_metrics.json").read_text())["jobs"]
        check(sorted(r["input"] for r in records) == sorted(sent)
              and all(r["status"] == "COMPLETED" for r in records),
              "the final metrics do not show every image completed once")
        outcome.figures.update(
            kills=killed, finished_before_kill=finished_early,
            moments=dict(sorted(moments.items())),
            server_jobs=len(jobs), duplicates=sum(n - 1 for n in per_image.values()),
            orphaned_submits=len(orphaned), torn_journal_lines=journal.torn_lines,
            temp_files_after_kills=temp_after_kills,
        )
    finally:
        ep.stop()
    return outcome


def _said_cancelled(answer: object) -> bool:
    return isinstance(answer, dict) and answer.get("status") == "CANCELLED"


# --- running the CLI as an unprivileged user ---------------------------------------------------

NOBODY = 65534


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A folder the user `nobody` can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rpq-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for parent, dirs, _files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(parent, name), 0o755)
        shutil.rmtree(path)


def in_a_fork_as_nobody(work: Callable[[], Any], *, log: Path | None = None,
                        timeout: float = 60) -> Any:
    """Run `work` in a forked child, as the unprivileged user `nobody` when we are root (root
    ignores file modes), and return what it returned (anything JSON can carry). The parent's
    threads (an endpoint) keep serving. Every module the child needs must be imported
    already: it cannot read root's files. With `log`, the child's stdout and stderr go there.
    An exception in the child, or a child that does not end in time, fails the test."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() with threads; the child runs only `work`.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        said = {"error": "the child ended early"}
        try:
            os.close(read_end)
            if log is not None:  # opened while still root: nobody may not create files here
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            said = {"result": work()}
        except BaseException:
            said = {"error": traceback.format_exc()}
        finally:
            os.write(write_end, json.dumps(said).encode())
            os._exit(0)
    os.close(write_end)

    def reaped() -> bool:
        return os.waitpid(pid, os.WNOHANG)[0] != 0

    try:
        wait_for(reaped, timeout=timeout, message="the unprivileged child to end")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        with os.fdopen(read_end) as pipe:
            answer = pipe.read()
    said = json.loads(answer) if answer else {"error": "the child ended without an answer"}
    assert "result" in said, said["error"]
    return said["result"]


def as_nobody_in_a_fork(argv: list[str], env: dict[str, str], log: Path,
                        timeout: float = 60) -> int:
    """Run the CLI with `argv` and `env` by in_a_fork_as_nobody; its exit code. Stdout and
    stderr go to `log`."""
    import rpq.cli

    def run_cli() -> int:
        os.environ.update(env)
        sys.argv = ["rpq", *argv]
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
        try:
            rpq.cli.main()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0

    code: int = in_a_fork_as_nobody(run_cli, log=log, timeout=timeout)
    return code


# --- writes that fail -------------------------------------------------------------------------


def noise_png(path: Path, side: int, seed: int) -> bytes:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    rng = random.Random(seed)
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(path, "PNG")
    return path.read_bytes()


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def failing_writes(work: Path, *, seed: int, small: int = 8, big: int = 4,
                   limit: int = 64 << 10) -> Outcome:
    """rpq may not write files over `limit` (EFBIG, as a full disk would refuse them): the big
    results cannot be saved, the small ones and the journal can. Then a plain rerun with room
    must save the big ones without sending them again."""
    outcome = Outcome("failing_writes", seed, small + big)
    check = outcome.check
    src, out = work / "in", work / "out"
    images = _images(src, small)
    bigs = {f"big_{i}.png": noise_png(src / f"big_{i}.png", 160, seed * 100 + i)
            for i in range(big)}
    images.update(bigs)
    ep = LocalEndpoint(handler="echo", workers_max=4, seed=seed).start()
    try:
        exe = Path(sys.executable).with_name("rpq")
        started = time.monotonic()
        child = subprocess.run([str(exe), *map(str, batch_args(src, out))],
                               env={**os.environ, **endpoint_env(ep)}, capture_output=True,
                               text=True, timeout=120, preexec_fn=_limit_file_size(limit))
        check(child.returncode == 1, f"exit code {child.returncode}")
        check("Traceback" not in child.stderr, "a traceback on stderr")
        jobs = {j["input"]: j for j in json.loads((out / "job_metrics.json").read_text())["jobs"]}
        for name, data in images.items():
            if name in bigs:
                job = jobs.get(name, {})
                check(job.get("status") == "FAILED" and "File too large" in (job.get("error")
                                                                             or ""),
                      f"{name}: {job.get('status')} {job.get('error')}")
                check(f"{name}: could not save the result: File too large" in child.stderr,
                      f"{name}: no line on stderr")
                check(not (out / name).exists(), f"{name}: a file was left")
            else:
                check((out / name).is_file() and (out / name).read_bytes() == data,
                      f"{name}: not saved whole")
        check(not leftover_parts(out), "temp files left")
        runs = ep.calls()["run"]
        check(runs == len(images), f"{runs} /run for {len(images)} images")
        rerun = rpq(*batch_args(src, out), env=endpoint_env(ep))
        check(rerun.code == 0, f"the rerun exited {rerun.code}")
        check(ep.calls()["run"] == runs,
              f"the rerun sent {ep.calls()['run'] - runs} image(s) again")
        for name, data in images.items():
            check((out / name).is_file() and (out / name).read_bytes() == data,
                  f"{name}: not saved by the rerun")
        outcome.seconds = round(time.monotonic() - started, 2)
        outcome.figures.update(images=len(images), unsaved_first=len(bigs),
                               saved_by_rerun=len(bigs), resent=ep.calls()["run"] - runs)
    finally:
        ep.stop()
    return outcome


# --- the endpoint killed and restarted --------------------------------------------------------


def _serve(port: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = Path(sys.executable).with_name("rpq")
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--handler", "echo", "--workers-max", "2",
             "--process-time", "0.15", "--rate-limits", "off"],
            stdout=subprocess.PIPE, stderr=fh, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/v2", line)
    if not match:
        _stop(proc)
        raise RuntimeError(f"rpq serve did not start: {line!r}; see {log}")
    return proc, int(match.group(1))


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.kill()
    server.wait(10)
    if server.stdout:
        server.stdout.close()


def restart_endpoint(work: Path, *, seed: int, images: int = 30) -> Outcome:
    """`rpq serve` in its own process, SIGKILLed while jobs are in flight (its queue lives in
    memory) and started again on the same port. rpq must report the lost jobs as expired, one
    line each, and the same command again must finish exactly those."""
    outcome = Outcome("endpoint_restart", seed, images)
    check = outcome.check
    rng = random.Random(seed)
    log = work / "serve.log"
    server, port = _serve(0, log)
    src, out = work / "in", work / "out"
    sent = _images(src, images)
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": f"http://127.0.0.1:{port}/v2",
           "RUNPOD_ENDPOINT_ID": "local"}
    exe = Path(sys.executable).with_name("rpq")
    args = [str(exe), *map(str, batch_args(src, out, "--concurrency", "6"))]
    batch_log = work / "batch.log"
    started = time.monotonic()
    try:
        after = rng.randint(2, images // 3)
        with batch_log.open("wb") as fh:
            batch = subprocess.Popen(args, env=env, stdout=fh, stderr=fh)
        try:
            wait_for(lambda: len(output_files(out)) >= after and
                     len(Journal(out / JOURNAL_NAME).in_flight()) >= 2, timeout=60)
            _stop(server)  # its queue and jobs live in memory: all gone
            server, _ = _serve(port, log)
            code = batch.wait(120)
        finally:
            if batch.poll() is None:
                batch.kill()
                batch.wait()
        stderr = batch_log.read_text()
        check(code == 1, f"the batch exited {code}")
        check("Traceback" not in stderr, "a traceback on stderr")
        jobs = {j["input"]: j for j in json.loads((out / "job_metrics.json").read_text())["jobs"]}
        check(sorted(jobs) == sorted(sent), "not one record per image")
        expired = {name for name, j in jobs.items() if j["status"] != "COMPLETED"}
        check(bool(expired), "no job was lost: the restart came too late")
        for name in expired:
            check(jobs[name]["error_kind"] == "expired"
                  and "no longer knows the job" in (jobs[name]["error"] or ""),
                  f"{name}: {jobs[name]['error_kind']}: {jobs[name]['error']}")
            check(re.search(rf"expired +{re.escape(name)}: the endpoint no longer knows the job",
                            stderr) is not None, f"{name}: no line on stderr")
        for name, job in jobs.items():
            if job["status"] == "COMPLETED":
                check((out / name).read_bytes() == sent[name], f"{name}: wrong output")
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        check(rerun.returncode == 0, f"the rerun exited {rerun.returncode}")
        for name, data in sent.items():
            check((out / name).is_file() and (out / name).read_bytes() == data,
                  f"{name}: not done after the rerun")
        resent = json.loads((out / "job_metrics.json").read_text())["run"]["requests"]["run"]
        check(resent == len(expired), f"the rerun sent {resent} for {len(expired)} lost jobs")
        outcome.seconds = round(time.monotonic() - started, 2)
        outcome.figures.update(killed_after_outputs=after, lost_jobs=len(expired),
                               resent_by_rerun=resent)
    finally:
        _stop(server)
    return outcome
