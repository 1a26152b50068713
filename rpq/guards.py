"""Production guards for a batch: alerts to a webhook, a budget, and halting on failures."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpq.errors import UsageError
from rpq.metrics import JobRecord
from rpq.states import Kind, Status

#: Failures that say something about the endpoint (bad local files do not).
ENDPOINT_FAILURES = frozenset({Kind.WORKER_ERROR, Kind.TIMED_OUT, Kind.STALLED, Kind.EXPIRED,
                               Kind.NO_OUTPUT, Kind.HTTP_ERROR})
#: A percentage threshold is judged only once this many jobs have finished.
HALT_MIN_SAMPLE = 10
ALERT_EVERY = 60.0


@dataclass(frozen=True)
class HaltRule:
    """`--halt-on-fail`: a count ("5") or a percentage ("20%") of finished jobs."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> HaltRule:
        try:
            if text.endswith("%"):
                value = float(text[:-1])
                if not 0 < value <= 100:
                    raise ValueError
                return cls(percent=value)
            count = int(text)
            if count < 1:
                raise ValueError
            return cls(count=count)
        except ValueError:
            raise UsageError(
                f"--halt-on-fail {text!r}: give a count of failures (e.g. 5) or a percentage "
                "of finished jobs (e.g. 20%)."
            ) from None

    def tripped(self, finished: int, failed: int) -> str | None:
        if self.count is not None and failed >= self.count:
            return f"{failed} jobs failed (--halt-on-fail {self.count})"
        if self.percent is not None and finished >= HALT_MIN_SAMPLE:
            rate = 100.0 * failed / finished
            if rate >= self.percent:
                return (f"{rate:.0f}% of {finished} finished jobs failed "
                        f"(--halt-on-fail {self.percent:g}%)")
        return None


class Alerter:
    """Posts alerts in a background thread: a slow or failing webhook never slows the batch.

    Each kind of alert is sent at most once per ALERT_EVERY seconds. The message carries both
    `text` (Slack) and `content` (Discord).
    """

    def __init__(self, url: str, post: Callable[[str, dict[str, Any]], int],
                 clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.url = url
        self._post = post
        self._clock = clock
        self._on_error = on_error
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=100)
        self._thread = threading.Thread(target=self._run, name="rpq-alerts", daemon=True)
        self._thread.start()
        self.sent = 0
        self.failed = 0

    def alert(self, kind: str, text: str, *, force: bool = False, **extra: Any) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if not force and last is not None and now - last < ALERT_EVERY:
                return False
            self._last[kind] = now
        message = {"text": f"rpq: {text}", "content": f"rpq: {text}", "kind": kind, **extra}
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded by `timeout`), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            try:
                status = self._post(self.url, message)
                ok = status < 400
            except Exception as exc:  # a broken webhook must never reach the batch
                ok, status = False, 0
                reason = str(exc)
            else:
                reason = f"HTTP {status}"
            if ok:
                self.sent += 1
            else:
                self.failed += 1
                if self._on_error is not None:
                    self._on_error(f"alert webhook failed ({reason}); the batch goes on")


@dataclass(frozen=True)
class GuardSettings:
    alert_url: str | None = None
    alert_queue_time: float = 60.0
    alert_process_time: float = 120.0
    alert_failure_rate: float = 20.0
    cost_per_hour: float | None = None
    budget: float | None = None
    halt: HaltRule | None = None


class Guards:
    """Watches finished jobs; says when to alert and when to stop submitting."""

    def __init__(self, settings: GuardSettings, alerter: Alerter | None) -> None:
        self.s = settings
        self.alerter = alerter
        self._lock = threading.Lock()
        self.finished = 0
        self.failed = 0
        self.billed_seconds = 0.0

    @property
    def spend(self) -> float | None:
        if self.s.cost_per_hour is None:
            return None
        return self.billed_seconds * self.s.cost_per_hour / 3600.0

    def observe(self, record: JobRecord) -> str | None:
        """Account for one finished job; returns why the batch must stop submitting, if so."""
        with self._lock:
            if record.error_kind == Kind.BAD_INPUT:
                return None
            self.finished += 1
            if record.status != Status.COMPLETED and record.error_kind in ENDPOINT_FAILURES:
                self.failed += 1
            self.billed_seconds += record.process_time or 0.0
            finished, failed, spend = self.finished, self.failed, self.spend
        self._alerts(record, finished, failed)
        if self.s.halt is not None:
            reason = self.s.halt.tripped(finished, failed)
            if reason:
                return f"halted: {reason}"
        if self.s.budget is not None and spend is not None and spend >= self.s.budget:
            return f"budget reached: estimated ${spend:.4f} of ${self.s.budget:.2f}"
        return None

    def _alerts(self, record: JobRecord, finished: int, failed: int) -> None:
        if self.alerter is None:
            return
        if record.queue_time is not None and record.queue_time > self.s.alert_queue_time:
            self.alerter.alert("queue_time", f"{record.input} waited {record.queue_time:.0f}s in "
                               f"the queue (threshold {self.s.alert_queue_time:.0f}s)",
                               job_id=record.job_id)
        if record.process_time is not None and record.process_time > self.s.alert_process_time:
            self.alerter.alert("process_time", f"{record.input} took {record.process_time:.0f}s "
                               f"to process (threshold {self.s.alert_process_time:.0f}s)",
                               job_id=record.job_id)
        if finished >= HALT_MIN_SAMPLE or failed >= HALT_MIN_SAMPLE:
            rate = 100.0 * failed / max(finished, 1)
            if rate >= self.s.alert_failure_rate:
                self.alerter.alert("failure_rate", f"{rate:.0f}% of {finished} finished jobs "
                                   f"failed (threshold {self.s.alert_failure_rate:g}%); "
                                   f"last error: {record.error or record.status}")

    def summary(self, stats: dict[str, Any], interrupted: bool, stop_reason: str | None) -> None:
        if self.alerter is None:
            return
        state = stop_reason or ("interrupted" if interrupted else "finished")
        text = (f"batch {state}: {stats.get('completed', 0)}/{stats.get('total_jobs', 0)} done, "
                f"{stats.get('failed', 0)} failed, p95 total {stats.get('p95_total_time')}s")
        if self.spend is not None:
            text += f", estimated ${self.spend:.4f}"
        self.alerter.alert("summary", text, force=True, stats=stats)
