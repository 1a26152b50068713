"""The local endpoint's fleet: public job operations, inspection and worker scaling."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpq.local.config import EndpointConfig
from rpq.local.faults import FaultDice, parse_faults
from rpq.local.handlers import Handler
from rpq.local.jobs import (
    BODY_CACHE_LIMIT,
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    TERMINAL,
    TIMED_OUT,
    Job,
    JobConflict,
    JobNotFound,
    JobQueue,
    JobRequest,
    _dumps,
)

__all__ = [
    "BODY_CACHE_LIMIT",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "IN_PROGRESS",
    "IN_QUEUE",
    "TERMINAL",
    "TIMED_OUT",
    "Fleet",
    "Job",
    "JobConflict",
    "JobNotFound",
    "JobRequest",
    "note",
]

log = logging.getLogger("rpq.serve")

# Worker states. "waiting" is reported as "ready" for always-on workers, else "idle".
INITIALIZING = "initializing"
WAITING = "waiting"
RUNNING = "running"
UNHEALTHY = "unhealthy"


@dataclass(eq=False, slots=True)
class _Worker:
    id: str
    always_on: bool
    state: str = INITIALIZING


class Fleet(JobQueue):
    """The queue and its workers; every public method is thread-safe."""

    def __init__(
        self,
        config: EndpointConfig,
        handler: Handler,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, clock=clock)
        self.handler = handler
        self.dice = FaultDice(parse_faults(config.faults), config.seed)
        self._process = config.process_range()
        self._paused = False
        self._workers: list[_Worker] = []
        self._housekeeper: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, worker_base_url: str = "") -> None:
        """Start the timers and the always-on workers; worker_base_url is where workers call."""
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="rpq-serve-housekeeper", daemon=True
        )
        self._housekeeper.start()
        with self._lock:
            self._scale_locked()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._changed.notify_all()
            self._timer.notify_all()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=1.0)
        # Workers are daemon threads; one may sit inside a user handler, so they are not
        # joined: handler_sleep and simulated delays end at once on the stop event.

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._scale_locked()
            self._work.notify_all()

    # ---- job operations ----------------------------------------------------------------

    def submit(self, request: JobRequest, *, sync: bool) -> Job:
        cfg = self.config
        now = self._clock()
        job_id = f"sync-{uuid.uuid4()}-u1" if sync else f"{uuid.uuid4()}-u1"
        ttl = cfg.ttl if request.ttl is None else request.ttl
        with self._lock:
            seq = self._seq
            self._seq += 1
            job = Job(
                id=job_id,
                seq=seq,
                input=request.input,
                sync=sync,
                created=now,
                ttl_at=now + ttl,
                execution_timeout=(
                    cfg.execution_timeout
                    if request.execution_timeout is None
                    else request.execution_timeout
                ),
                low_priority=request.low_priority,
                webhook=request.webhook,
                s3_config=request.s3_config,
                queued=now,
                gone_at=now + ttl,
            )
            job.stuck = self.dice.job_fault(self.dice.job_rng(seq, 0), ("stuck",)) is not None
            self._jobs[job_id] = job
            self._in_queue += 1
            if not job.stuck:
                self._enqueue_locked(job, front=False)
            self._push_locked(job.gone_at, "expire", job, 0)
        return job

    def status_body(self, job_id: str) -> bytes | None:
        """The /status JSON for a job, or None when it does not exist (any more)."""
        with self._lock:
            job = self._get_locked(job_id, self._clock())
            if job is None:
                return None
            if job.body is not None:
                return job.body
            doc = self._doc_locked(job, self._clock())
            rev = job.rev
            terminal = job.status in TERMINAL
        body = _dumps(doc)
        # Terminal bodies never change, so small ones are encoded once; big ones (images)
        # are rarely read twice and would double the memory each retained job holds.
        if terminal and len(body) <= BODY_CACHE_LIMIT:
            with self._lock:
                if job.rev == rev:
                    job.body = body
        return body

    def wait_terminal(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """Hold until the job is terminal or `timeout` passes; its current document."""
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                now = self._clock()
                job = self._get_locked(job_id, now)
                if job is None:
                    return None
                remaining = deadline - now
                if job.status in TERMINAL or remaining <= 0 or self._stopping:
                    return self._doc_locked(job, now)
                self._changed.wait(min(remaining, job.timeout_at - now, job.gone_at - now))

    def stream(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """Drain the job's new stream chunks, holding up to `timeout` while there are none."""
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                now = self._clock()
                job = self._get_locked(job_id, now)
                if job is None:
                    return None
                taken: list[Any] = []
                if job.chunks:
                    taken, job.chunks = job.chunks, []
                elif job.status in TERMINAL:
                    # A plain (non-generator) handler's output is streamed once, at the end.
                    if (
                        job.status == COMPLETED
                        and not job.streamed
                        and not job.final_streamed
                        and job.output is not None
                    ):
                        job.final_streamed = True
                        taken = [job.output]
                elif deadline - now > 0 and not self._stopping:
                    self._changed.wait(min(deadline - now, job.timeout_at - now, job.gone_at - now))
                    continue
                return {"status": job.status, "stream": [{"output": c} for c in taken]}

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            job = self._get_locked(job_id, now)
            if job is None:
                raise JobNotFound(job_id)
            if job.status == IN_QUEUE:
                self._unqueue_locked(job)
            elif job.status == IN_PROGRESS:
                self._in_progress -= 1
                self._abandon_locked(job)
            else:
                return {"id": job.id, "status": job.status}
            job.attempt += 1  # a later result from the handler is discarded
            self._finish_locked(job, CANCELLED, now)
            return {"id": job.id, "status": CANCELLED}

    def retry(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            job = self._get_locked(job_id, now)
            if job is None:
                raise JobNotFound(job_id)
            if job.status not in (FAILED, TIMED_OUT):
                raise JobConflict(
                    f"job {job.id} is {job.status}; only FAILED or TIMED_OUT jobs can be retried"
                )
            self._requeue_locked(job, now, front=False)
            return {"id": job.id, "status": IN_QUEUE}

    def purge_queue(self) -> int:
        with self._lock:
            queued = [j for j in self._jobs.values() if j.status == IN_QUEUE]
            for job in queued:
                self._delete_locked(job)
            return len(queued)

    # ---- inspection --------------------------------------------------------------------

    def health(self) -> dict[str, dict[str, int]]:
        """The /health document; every worker is counted once.

        workers: initializing = in cold start; running = busy with a job (also one whose
        job was cancelled or timed out while its handler still runs); ready = always-on
        (workers_min) workers waiting for a job; idle = other warm workers waiting, released
        after idle_timeout; unhealthy = crashed, until crash_downtime passes; throttled =
        the configured slots that never start.
        jobs: completed and failed (which includes TIMED_OUT) count since start; inQueue
        and inProgress are current; retried counts /retry calls and crash re-queues.
        """
        with self._lock:
            workers = {
                "idle": 0,
                "initializing": 0,
                "ready": 0,
                "running": 0,
                "throttled": self.config.throttled,
                "unhealthy": 0,
            }
            for w in self._workers:
                if w.state == WAITING:
                    workers["ready" if w.always_on else "idle"] += 1
                else:
                    workers[w.state] += 1
            jobs = {
                "completed": self._completed,
                "failed": self._failed,
                "inProgress": self._in_progress,
                "inQueue": self._in_queue,
                "retried": self._retried,
            }
        return {"jobs": jobs, "workers": workers}

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock()
            return [
                self._snapshot_locked(j, now)
                for j in list(self._jobs.values())
                if self._get_locked(j.id, now) is not None
            ]

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._clock()
            job = self._get_locked(job_id, now)
            return None if job is None else self._snapshot_locked(job, now)

    # ---- internals: workers ------------------------------------------------------------

    def _scale_locked(self) -> None:
        if self._stopping:
            return
        cfg = self.config
        capacity = cfg.workers_max - cfg.throttled
        alive = len(self._workers)
        always_on = sum(1 for w in self._workers if w.always_on)
        while always_on < cfg.workers_min and alive < capacity:
            self._spawn_locked(always_on=True)
            always_on += 1
            alive += 1
        if self._paused:
            return
        available = sum(1 for w in self._workers if w.state in (INITIALIZING, WAITING))
        need = self._scalable - available
        while need > 0 and alive < capacity:
            self._spawn_locked(always_on=False)
            need -= 1
            alive += 1

    def _spawn_locked(self, *, always_on: bool) -> None:
        """Start one worker (a thread in threads.py, a process in workers.py)."""
        raise NotImplementedError

    def _remove_worker_locked(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        self._scale_locked()

    def _pop_job_locked(self, worker: _Worker) -> Job:
        """Give the job at the head of the queue to worker; the queue must not be empty."""
        job = self._queue.popleft()
        if not job.low_priority:
            self._scalable -= 1
        now = self._clock()
        job.status = IN_PROGRESS
        job.started = now
        job.attempt += 1
        job.worker_id = worker.id
        job.timeout_at = now + job.execution_timeout
        job.rev += 1
        self._in_queue -= 1
        self._in_progress += 1
        worker.state = RUNNING
        self._push_locked(job.timeout_at, "timeout", job, job.attempt)
        self._changed.notify_all()
        return job


def note(message: str) -> None:
    """A line for the person running rpq serve."""
    sys.stderr.write(f"rpq serve: {message}\n")
    sys.stderr.flush()
