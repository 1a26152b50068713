"""Jobs and their queue: states, deadlines, retention and timers behind the local endpoint."""

from __future__ import annotations

import heapq
import json
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rpq.local.config import EndpointConfig
from rpq.local.webhook import post_webhook

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})

BODY_CACHE_LIMIT = 64 * 1024


@dataclass(frozen=True)
class JobRequest:
    """A validated /run or /runsync body. Times in seconds; None means the endpoint default."""

    input: Any
    webhook: str | None = None
    execution_timeout: float | None = None
    ttl: float | None = None
    low_priority: bool = False
    s3_config: Any = None


class JobNotFound(LookupError):
    """No such job, or it expired."""


class JobConflict(ValueError):
    """The job exists but is in the wrong state for the operation."""


@dataclass(eq=False, slots=True)
class Job:
    id: str
    seq: int
    input: Any
    sync: bool
    created: float
    ttl_at: float
    execution_timeout: float
    low_priority: bool
    webhook: str | None
    s3_config: Any
    queued: float
    gone_at: float
    status: str = IN_QUEUE
    started: float | None = None
    finished: float | None = None
    timeout_at: float = math.inf
    worker_id: str | None = None
    output: Any = None
    error: str | None = None
    retried: int = 0
    attempt: int = 0
    stuck: bool = False
    deleted: bool = False
    chunks: list[Any] = field(default_factory=list)
    streamed: bool = False
    final_streamed: bool = False
    rev: int = 0
    body: bytes | None = None


class JobQueue:
    """Jobs, the FIFO queue and the timer heap; callers hold the lock (methods end in _locked)."""

    def __init__(self, config: EndpointConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._timer = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._stopping = False
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._scalable = 0  # queued jobs allowed to trigger scale-up (not lowPriority)
        self._heap: list[tuple[float, int, str, Any, Any]] = []
        self._heap_seq = 0
        self._seq = 0
        self._in_queue = 0
        self._in_progress = 0
        self._completed = 0
        self._failed = 0
        self._retried = 0

    def _get_locked(self, job_id: str, now: float) -> Job | None:
        # Deadlines are also applied here so a client never sees a job past its deadline,
        # however late the housekeeper wakes up.
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.gone_at <= now:
            self._delete_locked(job)
            return None
        if job.status == IN_PROGRESS and job.timeout_at <= now:
            self._time_out_locked(job, now)
        return job

    def _doc_locked(self, job: Job, now: float) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.started is not None:
            end = job.finished if job.finished is not None else now
            doc["delayTime"] = int((job.started - job.queued) * 1000)
            doc["executionTime"] = int((end - job.started) * 1000)
        if job.output is not None:
            doc["output"] = job.output
        if job.error is not None:
            doc["error"] = job.error
        if job.worker_id is not None:
            doc["workerId"] = job.worker_id
        return doc

    def _snapshot_locked(self, job: Job, now: float) -> dict[str, Any]:
        snap = self._doc_locked(job, now)
        snap.update(
            input=job.input,
            output=job.output,
            error=job.error,
            workerId=job.worker_id,
            created=job.created,
            queued=job.queued,
            started=job.started,
            finished=job.finished,
            retried=job.retried,
            attempts=job.attempt,
            sync=job.sync,
            lowPriority=job.low_priority,
            webhook=job.webhook,
            stuck=job.stuck,
        )
        return snap

    def _enqueue_locked(self, job: Job, *, front: bool) -> None:
        if front:
            self._queue.appendleft(job)
        else:
            self._queue.append(job)
        if not job.low_priority:
            self._scalable += 1
        self._work.notify()
        self._scale_locked()

    def _unqueue_locked(self, job: Job) -> None:
        self._in_queue -= 1
        if job.stuck:
            return
        self._queue.remove(job)
        if not job.low_priority:
            self._scalable -= 1

    def _requeue_locked(self, job: Job, now: float, *, front: bool) -> None:
        self._retried += 1
        job.retried += 1
        job.status = IN_QUEUE
        job.queued = now
        job.started = job.finished = job.worker_id = job.output = job.error = None
        job.timeout_at = math.inf
        job.chunks = []
        job.streamed = job.final_streamed = False
        job.gone_at = job.ttl_at
        job.body = None
        job.rev += 1
        self._in_queue += 1
        self._enqueue_locked(job, front=front)
        self._changed.notify_all()

    def _delete_locked(self, job: Job) -> None:
        if job.deleted:
            return
        if job.status == IN_QUEUE:
            self._unqueue_locked(job)
        elif job.status == IN_PROGRESS:
            self._in_progress -= 1
            self._abandon_locked(job)
            job.attempt += 1
        job.deleted = True
        # Heap entries may still point at the job until its ttl; keep only a small husk.
        job.input = job.output = job.s3_config = job.body = None
        job.chunks = []
        self._jobs.pop(job.id, None)
        self._changed.notify_all()

    def _finish_locked(self, job: Job, status: str, now: float) -> None:
        job.status = status
        job.finished = now
        job.timeout_at = math.inf
        job.body = None
        job.rev += 1
        if status == COMPLETED:
            self._completed += 1
        elif status in (FAILED, TIMED_OUT):
            self._failed += 1
        retention = self.config.sync_retention if job.sync else self.config.run_retention
        job.gone_at = min(job.ttl_at, now + retention)
        self._push_locked(job.gone_at, "expire", job, 0)
        self._changed.notify_all()
        if job.webhook:
            post_webhook(job.webhook, _dumps(self._doc_locked(job, now)), self.config, self._stop)

    def _time_out_locked(self, job: Job, now: float) -> None:
        self._in_progress -= 1
        self._abandon_locked(job)
        job.attempt += 1
        job.error = f"job exceeded its execution timeout of {int(job.execution_timeout * 1000)} ms"
        self._finish_locked(job, TIMED_OUT, now)

    def _abandon_locked(self, job: Job) -> None:
        """Hook: a running job's result is no longer wanted (cancel, timeout, expiry)."""

    def _on_timer_locked(self, kind: str, subject: Any, token: Any, now: float) -> None:
        """Hook: a timer pushed by a subclass is due."""

    def _push_locked(self, when: float, kind: str, subject: Any, token: Any) -> None:
        self._heap_seq += 1
        heapq.heappush(self._heap, (when, self._heap_seq, kind, subject, token))
        if self._heap[0][1] == self._heap_seq:
            self._timer.notify()

    def _housekeep(self) -> None:
        with self._lock:
            while not self._stopping:
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    _, _, kind, job, token = heapq.heappop(self._heap)
                    if kind not in ("expire", "timeout"):
                        self._on_timer_locked(kind, job, token, now)
                        continue
                    if job.deleted:
                        continue
                    if kind == "expire" and job.gone_at <= now:
                        self._delete_locked(job)
                    elif kind == "timeout" and job.attempt == token and job.status == IN_PROGRESS:
                        self._time_out_locked(job, now)
                timeout = self._heap[0][0] - now if self._heap else None
                self._timer.wait(timeout)

    def _scale_locked(self) -> None:
        """Hook: the queue grew or a worker left; start workers if needed."""


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
