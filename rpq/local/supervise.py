"""Worker processes under supervision: start, environment, idle stop, crash and restart."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpq.local.config import EndpointConfig
from rpq.local.fleet import (
    IN_PROGRESS,
    INITIALIZING,
    UNHEALTHY,
    WAITING,
    Fleet,
    Job,
    _Worker,
    log,
    note,
)
from rpq.local.handlers import Handler
from rpq.local.procs import WorkerProcess, split_command

# The longest a crash-looping worker waits before its next start.
MAX_BACKOFF = 60.0


@dataclass(eq=False, slots=True)
class ProcWorker(_Worker):
    generation: int = 0
    proc: WorkerProcess | None = None
    jobs: dict[str, tuple[Job, int]] = field(default_factory=dict)  # id -> (job, attempt)
    faults: dict[str, str] = field(default_factory=dict)
    stopping: dict[str, float | None] = field(default_factory=dict)  # id -> last delivered
    listed: frozenset[str] = frozenset()  # the job ids the last ping said were running
    taken: bool = False
    leaving: bool = False
    pings: int = 0
    idle_rev: int = 0


class ProcessSupervisor(Fleet):
    """A Fleet whose workers are OS processes; this part starts, watches and stops them.

    A worker is initializing from its start until its first job-take; idle ones get SIGTERM
    after idle_timeout (SIGKILL after stop_grace); a process that exits on its own or misses
    heartbeats is unhealthy, its jobs go back to the queue and it restarts after a backoff
    that doubles on each crash in a row. The jobs side is ProcessFleet (workers.py).
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
        self._by_id: dict[str, ProcWorker] = {}
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

    def _current_locked(self, w: ProcWorker, job_id: str) -> Job | None:
        entry = w.jobs.get(job_id)
        if entry is None:
            return None
        job, attempt = entry
        if job.attempt != attempt or job.status != IN_PROGRESS or job.deleted:
            return None
        return job

    def _requeue_all_locked(self, w: ProcWorker) -> None:
        now = self._clock()
        for job_id in list(w.jobs):
            job = self._current_locked(w, job_id)
            w.jobs.pop(job_id, None)
            if job is not None:
                self._in_progress -= 1
                self._requeue_locked(job, now, front=True)
        w.faults.clear()
        w.stopping.clear()
        w.listed = frozenset()

    # ---- processes ---------------------------------------------------------------------

    def _spawn_locked(self, *, always_on: bool) -> None:
        worker = ProcWorker(id=self.dice.token(14), always_on=always_on)
        self._workers.append(worker)
        self._by_id[worker.id] = worker
        self._launch_locked(worker)

    def _launch_locked(self, w: ProcWorker) -> None:
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

    def _exited(self, w: ProcWorker, generation: int, code: int) -> None:
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

    def _crashed_locked(self, w: ProcWorker, why: str) -> None:
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

    def _retire_locked(self, w: ProcWorker, why: str) -> None:
        """Stop a worker on purpose: SIGTERM now, SIGKILL after stop_grace."""
        if w.leaving:
            return
        log.debug("worker %s stops (%s)", w.id, why)
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

    def _idle_locked(self, w: ProcWorker) -> None:
        w.idle_rev += 1
        if not w.always_on:
            self._push_locked(self._clock() + self.config.idle_timeout, "idle", w, w.idle_rev)

    def _on_timer_locked(self, kind: str, subject: Any, token: Any, now: float) -> None:
        w: ProcWorker = subject
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

    def _restart_locked(self, w: ProcWorker, generation: int) -> None:
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


def _has_runpod_config(env: dict[str, str]) -> bool:
    home = env.get("HOME") or os.path.expanduser("~")
    return (Path(home) / ".runpod" / "config.toml").exists()
