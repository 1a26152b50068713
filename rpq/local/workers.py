"""The fleet for `rpq serve --worker`: each worker is a process that pulls jobs over HTTP."""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpq.local.config import EndpointConfig
from rpq.local.fleet import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    INITIALIZING,
    RUNNING,
    UNHEALTHY,
    WAITING,
    Fleet,
    Job,
    _Worker,
    note,
)
from rpq.local.handlers import Handler, resolve_handler, runpod_error, split_chunk
from rpq.local.procs import WorkerProcess, split_command
from rpq.local.threads import ThreadFleet

# The longest a crash-looping worker waits before its next start.
MAX_BACKOFF = 60.0
# Seconds before a stop signal the worker has not acted on is sent again.
REDELIVER = 1.0


@dataclass(eq=False, slots=True)
class _ProcWorker(_Worker):
    generation: int = 0
    proc: WorkerProcess | None = None
    jobs: dict[str, tuple[Job, int]] = field(default_factory=dict)  # id -> (job, attempt)
    faults: dict[str, str] = field(default_factory=dict)
    stopping: dict[str, float | None] = field(default_factory=dict)  # id -> last delivered
    taken: bool = False
    leaving: bool = False
    pings: int = 0
    idle_rev: int = 0


def worker_base_url(host: str, port: int) -> str:
    """Where a worker on this machine reaches the endpoint (a wildcard host is not an address)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v2"


class ProcessFleet(Fleet):
    """A Fleet whose workers are OS processes running the runpod SDK's worker loop.

    The processes call the worker routes (see worker_routes.py): take jobs, post chunks and
    results, long-poll stop signals, ping. A worker is initializing from its start until its
    first job-take; idle ones get SIGTERM after idle_timeout (SIGKILL after stop_grace); a
    process that exits on its own or misses heartbeats is unhealthy, its jobs go back to the
    queue and it restarts after a backoff that doubles on each crash in a row.
    """

    def __init__(
        self, config: EndpointConfig, handler: Handler, *, clock: Callable[[], float] | None = None
    ) -> None:
        if clock is None:
            super().__init__(config, handler)
        else:
            super().__init__(config, handler, clock=clock)
        assert config.worker_command is not None
        self._argv = split_command(config.worker_command)
        self._log_dir = Path(config.worker_log_dir) if config.worker_log_dir else None
        self._key = secrets.token_urlsafe(32)
        self._base = ""
        self._by_id: dict[str, _ProcWorker] = {}
        self._stops = threading.Condition(self._lock)
        self._crash_streak = 0

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, worker_base_url: str = "") -> None:
        self._base = worker_base_url.rstrip("/")
        super().start(worker_base_url)

    def stop(self) -> None:
        super().stop()
        with self._lock:
            procs = [w.proc for w in self._by_id.values() if w.proc is not None]
            self._stops.notify_all()
        for proc in procs:
            proc.terminate()
        deadline = self._clock() + self.config.stop_grace
        for proc in procs:
            if not proc.wait(max(0.0, deadline - self._clock())):
                proc.kill()
        for proc in procs:
            proc.wait(1.0)

    def worker_key_matches(self, token: str) -> bool:
        return secrets.compare_digest(token.encode("utf-8", "replace"), self._key.encode())

    # ---- the worker routes -------------------------------------------------------------

    def take(self, worker_id: str, count: int, in_progress: bool) -> list[dict[str, Any]] | None:
        """Jobs for a job-take call, held up to take_hold while there are none; None: unknown."""
        with self._lock:
            w = self._by_id.get(worker_id)
            if w is None:
                return None
            if not w.taken and not w.leaving:
                w.taken = True  # the cold start ends at the first job-take
                w.state = WAITING
                self._idle_locked(w)
            if not in_progress:
                self._stops_over_locked(w)
            deadline = self._clock() + self.config.take_hold
            while not (w.leaving or self._stopping or w.state == UNHEALTHY):
                if self._queue and not self._paused:
                    return [self._give_locked(w) for _ in range(min(count, len(self._queue)))]
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._work.wait(remaining)
            return []

    def stop_signals(self, worker_id: str) -> list[str] | None:
        """Job ids the worker must stop (job-stop long poll); None: unknown worker."""
        with self._lock:
            w = self._by_id.get(worker_id)
            if w is None:
                return None
            deadline = self._clock() + self.config.take_hold
            while not w.leaving and not self._stopping:
                now = self._clock()
                # A signal is sent again until the worker reports the job gone: the SDK
                # ignores one that comes before the job's task has started.
                due = [t + REDELIVER for t in w.stopping.values() if t is not None]
                ids = [j for j, t in w.stopping.items() if t is None or t + REDELIVER <= now]
                if ids:
                    for job_id in ids:
                        w.stopping[job_id] = now
                    return ids
                if deadline <= now:
                    return []
                self._stops.wait(min([deadline, *due]) - now)
            return []

    def ping(self, worker_id: str, job_ids: list[str], unhealthy: str | None) -> bool:
        with self._lock:
            w = self._by_id.get(worker_id)
            if w is None:
                return False
            now = self._clock()
            w.pings += 1
            for job_id, delivered in list(w.stopping.items()):
                if delivered is not None and job_id not in job_ids:
                    del w.stopping[job_id]  # the handler has stopped
            self._push_locked(now + self.config.heartbeat_timeout, "beat", w, (w.generation,
                              w.pings))
            if unhealthy is not None and w.proc is not None:
                note(f"worker {w.id} reports itself unhealthy: {unhealthy}")
            return True

    def job_done(self, worker_id: str, job_id: str, doc: Any) -> bool:
        """A job-done post: a progress update, a result, or an error; False: unknown worker."""
        with self._lock:
            w = self._by_id.get(worker_id)
            if w is None:
                return False
            if not isinstance(doc, dict):
                doc = {"output": doc}
            if doc.get("status") == IN_PROGRESS:
                job = self._current_locked(w, job_id)
                if job is not None:
                    job.output = doc.get("output")
                    job.rev += 1
                    self._changed.notify_all()
                return True
            w.stopping.pop(job_id, None)
            job = self._release_locked(w, job_id)
            if job is not None:
                self._conclude_locked(w, job, doc)
            if doc.get("stopPod"):
                self._retire_locked(w, "refresh_worker")
            return True

    def job_too_big(self, worker_id: str, job_id: str) -> bool:
        """A result over max_result: RunPod completes such a job without its output."""
        with self._lock:
            w = self._by_id.get(worker_id)
            if w is None:
                return False
            job = self._release_locked(w, job_id)
            if job is not None:
                note(f"worker {w.id}: the result of job {job_id} is over the "
                      f"{self.config.max_result} byte limit; the job completes without output")
                self._finish_locked(job, COMPLETED, self._clock())
            return True

    def job_stream(self, worker_id: str, job_id: str, doc: Any) -> bool:
        with self._lock:
            w = self._by_id.get(worker_id)
            if w is None:
                return False
            job = self._current_locked(w, job_id)
            if job is not None and isinstance(doc, dict) and "output" in doc:
                job.streamed = True
                job.chunks.extend(split_chunk(doc["output"], self.config.max_chunk))
                self._changed.notify_all()
            return True

    # ---- jobs on workers ---------------------------------------------------------------

    def _give_locked(self, w: _ProcWorker) -> dict[str, Any]:
        job = self._pop_job_locked(w)
        w.jobs[job.id] = (job, job.attempt)
        w.idle_rev += 1
        fault = self.dice.job_fault(self.dice.job_rng(job.seq, job.attempt), ("fail", "crash"))
        if fault == "crash":
            self._push_locked(self._clock(), "crash", w, w.generation)
        elif fault is not None:
            w.faults[job.id] = fault
        payload: dict[str, Any] = {"id": job.id, "input": job.input}
        if job.s3_config is not None:
            payload["s3Config"] = job.s3_config
        return payload

    def _current_locked(self, w: _ProcWorker, job_id: str) -> Job | None:
        entry = w.jobs.get(job_id)
        if entry is None:
            return None
        job, attempt = entry
        if job.attempt != attempt or job.status != IN_PROGRESS or job.deleted:
            return None
        return job

    def _release_locked(self, w: _ProcWorker, job_id: str) -> Job | None:
        """Take job_id off the worker; the job when its result still counts."""
        job = self._current_locked(w, job_id)
        w.jobs.pop(job_id, None)
        if not w.jobs and w.state == RUNNING:
            w.state = WAITING
            self._idle_locked(w)
        if job is not None:
            self._in_progress -= 1
        return job

    def _conclude_locked(self, w: _ProcWorker, job: Job, doc: dict[str, Any]) -> None:
        error = doc.get("error")
        if w.faults.pop(job.id, None) == "fail":
            message = "injected fault: the handler failed"
            error = runpod_error("<class 'RuntimeError'>", message,
                                 f"Traceback (most recent call last):\nRuntimeError: {message}\n",
                                 w.id)
        if "output" in doc:
            job.output = doc["output"]
        if error:
            job.error = error if isinstance(error, str) else json.dumps(error)
            self._finish_locked(job, FAILED, self._clock())
        else:
            self._crash_streak = 0
            self._finish_locked(job, COMPLETED, self._clock())

    def _abandon_locked(self, job: Job) -> None:
        # The caller has done the job's own bookkeeping; this tells the worker to stop it.
        w = self._by_id.get(job.worker_id or "")
        if w is None or w.jobs.pop(job.id, None) is None:
            return
        w.faults.pop(job.id, None)
        if not w.jobs and w.state == RUNNING:
            w.state = WAITING
            self._idle_locked(w)
        w.stopping[job.id] = None
        self._stops.notify_all()
        # The worker fetches the signal within one job-stop poll (plus the SDK's 1 s pause)
        # and reports the handler gone at its next job-take or ping; then stop_grace counts.
        cfg = self.config
        allowed = cfg.take_hold + 1.0 + cfg.ping_interval + cfg.stop_grace
        self._push_locked(self._clock() + allowed, "stopcheck", w, (w.generation, job.id))

    def _stops_over_locked(self, w: _ProcWorker) -> None:
        # job_in_progress=0: whatever the worker was told to stop has stopped.
        w.stopping.clear()

    def _requeue_all_locked(self, w: _ProcWorker) -> None:
        now = self._clock()
        for job_id in list(w.jobs):
            job = self._current_locked(w, job_id)
            w.jobs.pop(job_id, None)
            if job is not None:
                self._in_progress -= 1
                self._requeue_locked(job, now, front=True)
        w.faults.clear()
        w.stopping.clear()

    # ---- processes ---------------------------------------------------------------------

    def _spawn_locked(self, *, always_on: bool) -> None:
        worker = _ProcWorker(id=self.dice.token(14), always_on=always_on)
        self._workers.append(worker)
        self._by_id[worker.id] = worker
        self._launch_locked(worker)

    def _launch_locked(self, w: _ProcWorker) -> None:
        w.generation += 1
        w.state = INITIALIZING
        w.taken = w.leaving = False
        generation = w.generation
        try:
            w.proc = WorkerProcess(
                w.id, self._argv, self._environment(w.id),
                on_exit=lambda code: self._exited(w, generation, code),
                log_dir=self._log_dir,
            )
        except ValueError as exc:
            note(str(exc))
            w.proc = None
            self._crashed_locked(w, "could not start")

    def _environment(self, worker_id: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPQ_")}
        ep = f"{self._base}/{self.config.endpoint_id}"
        # The SDK sends ~/.runpod/config.toml's key instead of RUNPOD_AI_API_KEY when that
        # file exists; only then does the key also travel in the URLs (which the SDK logs).
        key = f"?key={self._key}" if _has_runpod_config(env) else "?rpq=1"
        env.update(
            RUNPOD_POD_ID=worker_id,
            RUNPOD_POD_HOSTNAME=worker_id,
            RUNPOD_ENDPOINT_ID=self.config.endpoint_id,
            RUNPOD_WEBHOOK_GET_JOB=f"{ep}/job-take/{worker_id}{key}",
            RUNPOD_WEBHOOK_POST_OUTPUT=f"{ep}/job-done/{worker_id}/$ID{key}",
            RUNPOD_WEBHOOK_POST_STREAM=f"{ep}/job-stream/{worker_id}/$ID{key}",
            RUNPOD_WEBHOOK_PING=f"{ep}/ping/{worker_id}{key}",
            RUNPOD_AI_API_KEY=self._key,
            RUNPOD_PING_INTERVAL=str(int(self.config.ping_interval * 1000)),
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
        env.setdefault("RUNPOD_LOG_LEVEL", "INFO")
        local = "127.0.0.1,localhost,::1"
        for name in ("NO_PROXY", "no_proxy"):
            env[name] = f"{env[name]},{local}" if env.get(name) else local
        return env

    def _exited(self, w: _ProcWorker, generation: int, code: int) -> None:
        with self._lock:
            if w.generation != generation or self._stopping:
                return
            if w.leaving:
                self._requeue_all_locked(w)
                self._by_id.pop(w.id, None)
                self._scale_locked()
                return
            if w.state != UNHEALTHY:
                self._crashed_locked(w, f"exited with code {code}")

    def _crashed_locked(self, w: _ProcWorker, why: str) -> None:
        running = len(w.jobs)
        self._requeue_all_locked(w)
        w.state = UNHEALTHY
        self._crash_streak += 1
        backoff = min(MAX_BACKOFF, self.config.crash_downtime * 2 ** (self._crash_streak - 1))
        back = f", {running} job(s) back in the queue" if running else ""
        note(f"worker {w.id} {why}{back}; unhealthy, restarting in {backoff:g} s")
        self._work.notify_all()
        self._stops.notify_all()
        self._push_locked(self._clock() + backoff, "restart", w, w.generation)
        if w.proc is not None:
            w.proc.kill()

    def _retire_locked(self, w: _ProcWorker, why: str) -> None:
        """Stop a worker on purpose: SIGTERM now, SIGKILL after stop_grace."""
        if w.leaving:
            return
        w.leaving = True
        if w in self._workers:
            self._workers.remove(w)
        self._work.notify_all()
        self._stops.notify_all()
        if w.proc is None:
            self._by_id.pop(w.id, None)
        else:
            w.proc.terminate()
            self._push_locked(self._clock() + self.config.stop_grace, "kill", w, w.generation)
        self._scale_locked()

    def _idle_locked(self, w: _ProcWorker) -> None:
        w.idle_rev += 1
        if not w.always_on:
            self._push_locked(self._clock() + self.config.idle_timeout, "idle", w, w.idle_rev)

    def _on_timer_locked(self, kind: str, subject: Any, token: Any, now: float) -> None:
        w: _ProcWorker = subject
        if kind == "idle":
            if token == w.idle_rev and not w.jobs and not w.leaving and w.state == WAITING:
                self._retire_locked(w, "idle")
        elif kind == "kill":
            if token == w.generation and w.proc is not None:
                w.proc.kill()
        elif kind == "restart":
            self._restart_locked(w, token)
        elif kind == "crash":
            if token == w.generation and w.state != UNHEALTHY and not w.leaving:
                self._crashed_locked(w, "crashed (injected fault)")
        elif kind == "beat":
            generation, pings = token
            if generation == w.generation and pings == w.pings and w.state not in (
                UNHEALTHY,
            ) and not w.leaving:
                self._crashed_locked(
                    w, f"sent no heartbeat for {self.config.heartbeat_timeout:g} s")
        elif kind == "stopcheck":
            generation, job_id = token
            if generation == w.generation and job_id in w.stopping and not w.leaving:
                note(f"worker {w.id}: the handler of job {job_id} did not stop when told; "
                      f"killing the worker")
                self._requeue_all_locked(w)
                self._retire_locked(w, "stop")
                if w.proc is not None:
                    w.proc.kill()

    def _restart_locked(self, w: _ProcWorker, generation: int) -> None:
        if generation != w.generation or w.state != UNHEALTHY or self._stopping:
            return
        waiting = sum(1 for x in self._workers if x.state in (INITIALIZING, WAITING))
        if w.always_on or self._scalable > waiting:
            self._launch_locked(w)
            return
        if w in self._workers:
            self._workers.remove(w)
        self._by_id.pop(w.id, None)
        self._scale_locked()

    def _remove_worker_locked(self, worker: _Worker) -> None:
        self._by_id.pop(worker.id, None)
        super()._remove_worker_locked(worker)

    def _enqueue_locked(self, job: Job, *, front: bool) -> None:
        super()._enqueue_locked(job, front=front)
        self._work.notify_all()  # held job-takes of several workers wait on the same queue


def make_fleet(config: EndpointConfig) -> Fleet:
    """The fleet a config asks for: worker processes with worker_command, else in-process."""
    if config.worker_command is not None:
        return ProcessFleet(config, Handler(func=_no_handler, name=config.worker_command))
    return ThreadFleet(config, resolve_handler(config.handler))


def _no_handler(job: dict[str, Any]) -> Any:
    raise RuntimeError("worker processes run their own handler")


def _has_runpod_config(env: dict[str, str]) -> bool:
    home = env.get("HOME") or os.path.expanduser("~")
    return (Path(home) / ".runpod" / "config.toml").exists()
