"""The in-process fleet (--handler): workers are threads calling the handler directly."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from rpq.local.fleet import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    UNHEALTHY,
    WAITING,
    Fleet,
    Job,
    _Worker,
    log,
    note,
)
from rpq.local.handlers import Outcome, Stopper, call_handler, runpod_error, split_chunk


@dataclass(eq=False, slots=True)
class _ThreadWorker(_Worker):
    threads: int = 1  # one per concurrent job (concurrency_modifier)
    busy: int = 0
    replaced: bool = False  # refresh_worker, or a stopped handler that ran on
    running: dict[str, Stopper] = field(default_factory=dict)


class ThreadFleet(Fleet):
    """A Fleet whose workers are threads in this process, one per job slot.

    It follows runpod-python's semantics where a thread can: concurrency_modifier gives a
    worker that many slots, refresh_worker replaces the worker after the job, cancel and
    executionTimeout stop an async handler (and a generator between chunks); a handler
    that runs on past stop_grace has its worker replaced, as a process would be killed.
    """

    def _spawn_locked(self, *, always_on: bool) -> None:
        worker = _ThreadWorker(id=self.dice.token(14), always_on=always_on)
        self._workers.append(worker)
        threading.Thread(
            target=self._worker_main, args=(worker,), name=f"rpq-worker-{worker.id}", daemon=True
        ).start()

    def _worker_main(self, worker: _ThreadWorker) -> None:
        if self.config.cold_start > 0 and self._stop.wait(self.config.cold_start):
            with self._lock:
                self._remove_worker_locked(worker)
            return
        slots = self._slots()
        with self._lock:
            worker.threads = slots
        for n in range(1, slots):
            threading.Thread(
                target=self._slot, args=(worker,), name=f"rpq-worker-{worker.id}-{n}", daemon=True
            ).start()
        self._slot(worker)

    def _slots(self) -> int:
        modifier = self.handler.concurrency
        if modifier is None:
            return 1
        try:
            # The SDK calls it before each job-take with the current value, so a modifier
            # that ramps up (c + 1 up to a cap) settles where the SDK's would.
            slots = 1
            for _ in range(64):
                wanted = max(1, int(modifier(slots)))
                if wanted == slots:
                    break
                slots = wanted
            return slots
        except Exception:
            log.exception("concurrency_modifier failed; running one job per worker")
            return 1

    def _slot(self, worker: _ThreadWorker) -> None:
        try:
            while True:
                with self._lock:
                    if worker.busy == 0 and worker.state != UNHEALTHY:
                        worker.state = WAITING
                    job = self._next_job_locked(worker)
                    if job is None:
                        return
                    worker.busy += 1
                    stopper = worker.running[job.id] = Stopper()
                try:
                    keep = self._execute(worker, job, job.attempt, stopper)
                finally:
                    with self._lock:
                        worker.busy -= 1
                        worker.running.pop(job.id, None)
                if not keep:
                    return
        except Exception:
            log.exception("worker %s stopped on an internal error", worker.id)
        finally:
            with self._lock:
                worker.threads -= 1
                if worker.threads <= 0:
                    self._remove_worker_locked(worker)

    def _next_job_locked(self, worker: _ThreadWorker) -> Job | None:
        deadline = None if worker.always_on else self._clock() + self.config.idle_timeout
        while not self._stopping and not worker.replaced:
            if self._queue and not self._paused:
                job = self._pop_job_locked(worker)
                self._scale_locked()
                return job
            if deadline is None:
                self._work.wait()
                continue
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._work.wait(remaining)
        return None

    def _execute(self, worker: _ThreadWorker, job: Job, token: int, stopper: Stopper) -> bool:
        """Run one job; False when the worker crashed or is replaced and must leave."""
        rng = self.dice.job_rng(job.seq, token)
        fault = self.dice.job_fault(rng, ("fail", "crash"))
        lo, hi = self._process
        extra = rng.uniform(lo, hi) if hi > 0 else 0.0
        outcome = self._call(worker, job, token, stopper) if fault is None else _injected(
            fault, worker.id)
        if extra > 0 and self._stop.wait(extra):
            return False
        with self._lock:
            current = job.attempt == token and job.status == IN_PROGRESS and not job.deleted
            if fault == "crash":
                worker.state = UNHEALTHY
                if current:
                    self._in_progress -= 1
                    self._requeue_locked(job, self._clock(), front=True)
                else:
                    self._scale_locked()
            elif current:
                self._in_progress -= 1
                self._conclude_locked(worker, job, outcome)
            if outcome.refresh or self.handler.refresh:
                self._replace_locked(worker)
        if fault == "crash":
            self._stop.wait(self.config.crash_downtime)
            return False
        return not worker.replaced

    def _call(self, worker: _ThreadWorker, job: Job, token: int, stopper: Stopper) -> Outcome:
        payload: dict[str, Any] = {"id": job.id, "input": copy.deepcopy(job.input)}
        if job.s3_config is not None:
            payload["s3Config"] = copy.deepcopy(job.s3_config)
        return call_handler(
            self.handler.func,
            payload,
            worker_id=worker.id,
            on_chunk=lambda chunk: self._on_chunk(job, token, chunk),
            on_progress=lambda value: self._on_progress(job, token, value),
            stop=self._stop,
            aggregate=self.handler.aggregate,
            stopper=stopper,
        )

    def _conclude_locked(self, worker: _ThreadWorker, job: Job, outcome: Outcome) -> None:
        job.output = outcome.output
        job.error = outcome.error
        if outcome.ok and outcome.size > self.config.max_result:
            # RunPod refuses such a result at job-done and the job completes without it.
            job.output = None
            note(f"worker {worker.id}: the result of job {job.id} is over the "
                  f"{self.config.max_result} byte limit; the job completes without output")
        self._finish_locked(job, COMPLETED if outcome.ok else FAILED, self._clock())

    def _replace_locked(self, worker: _ThreadWorker) -> None:
        if worker.replaced:
            return
        worker.replaced = True
        if worker in self._workers:
            self._workers.remove(worker)
        self._work.notify_all()
        self._scale_locked()

    def _abandon_locked(self, job: Job) -> None:
        for worker in self._workers:
            stopper = getattr(worker, "running", {}).get(job.id)
            if stopper is not None:
                stopper.request()
                self._push_locked(self._clock() + self.config.stop_grace, "stopcheck",
                                  worker, stopper)
                return

    def _on_timer_locked(self, kind: str, subject: Any, token: Any, now: float) -> None:
        worker: _ThreadWorker = subject
        if kind == "stopcheck" and token in worker.running.values() and not worker.replaced:
            note(f"worker {worker.id}: a stopped handler is still running after "
                  f"{self.config.stop_grace:g} s; the worker is replaced")
            self._replace_locked(worker)

    def _on_chunk(self, job: Job, token: int, chunk: Any) -> None:
        with self._lock:
            if job.attempt == token and job.status == IN_PROGRESS:
                job.streamed = True
                job.chunks.extend(split_chunk(chunk, self.config.max_chunk))
                self._changed.notify_all()

    def _on_progress(self, job: Job, token: int, value: Any) -> None:
        with self._lock:
            if job.attempt == token and job.status == IN_PROGRESS:
                job.output = value
                job.rev += 1
                self._changed.notify_all()


def _injected(fault: str, worker_id: str) -> Outcome:
    what = "worker crashed" if fault == "crash" else "handler failed"
    message = f"injected fault: the {what}"
    return Outcome(
        ok=False,
        error=runpod_error(
            "<class 'RuntimeError'>",
            message,
            f"Traceback (most recent call last):\nRuntimeError: {message}\n",
            worker_id,
        ),
    )
