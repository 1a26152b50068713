"""The fleet for `rpq serve --worker`: each worker is a process that pulls jobs over HTTP."""

from __future__ import annotations

import json
from typing import Any

from rpq.local.config import EndpointConfig
from rpq.local.fleet import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    RUNNING,
    UNHEALTHY,
    WAITING,
    Fleet,
    Job,
    note,
)
from rpq.local.handlers import Handler, resolve_handler, runpod_error, split_chunk
from rpq.local.supervise import ProcessSupervisor, ProcWorker
from rpq.local.threads import ThreadFleet

# Seconds before a stop signal the worker has not acted on is sent again.
REDELIVER = 1.0


def worker_base_url(host: str, port: int) -> str:
    """Where a worker on this machine reaches the endpoint (a wildcard host is not an address)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v2"


class ProcessFleet(ProcessSupervisor):
    """A Fleet whose workers are OS processes running the runpod SDK's worker loop.

    The processes call the worker routes (see worker_routes.py): take jobs, post chunks and
    results, long-poll stop signals, ping. This part hands out jobs and takes their results.
    """

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
            # A ping made before the job started does not list it either: only one that no
            # longer lists a job an earlier ping did says its handler has stopped.
            for job_id, delivered in list(w.stopping.items()):
                if delivered is not None and job_id not in job_ids and job_id in w.listed:
                    del w.stopping[job_id]  # the handler has stopped
            w.listed = frozenset(job_ids)
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

    def _give_locked(self, w: ProcWorker) -> dict[str, Any]:
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

    def _release_locked(self, w: ProcWorker, job_id: str) -> Job | None:
        """Take job_id off the worker; the job when its result still counts."""
        job = self._current_locked(w, job_id)
        w.jobs.pop(job_id, None)
        if not w.jobs and w.state == RUNNING:
            w.state = WAITING
            self._idle_locked(w)
        if job is not None:
            self._in_progress -= 1
        return job

    def _conclude_locked(self, w: ProcWorker, job: Job, doc: dict[str, Any]) -> None:
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

    def _stops_over_locked(self, w: ProcWorker) -> None:
        # job_in_progress=0: whatever the worker was told to stop has stopped.
        w.stopping.clear()

def make_fleet(config: EndpointConfig) -> Fleet:
    """The fleet a config asks for: worker processes with worker_command, else in-process."""
    if config.worker_command is not None:
        return ProcessFleet(config, Handler(func=_no_handler, name=config.worker_command))
    return ThreadFleet(config, resolve_handler(config.handler))


def _no_handler(job: dict[str, Any]) -> Any:
    raise RuntimeError("worker processes run their own handler")
