"""The batch: discover -> prepare -> rate limit -> submit -> poll -> write, with a journal."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from rpq import __version__
from rpq.api import RunPodClient, is_transient
from rpq.errors import APIError, InputError, RpqError, UsageError
from rpq.extract import OutputError, decode_worker_error
from rpq.images import ImageFile, Skipped, content_digest, discover, prepare
from rpq.journal import JOURNAL_NAME, Entry, Journal, job_key
from rpq.limiter import Limiters, Rate
from rpq.metrics import JobRecord, summarize, write_metrics
from rpq.poll import TERMINAL, Poller, PollResult, StallDetector, Timing
from rpq.progress import Reporter, Tracker
from rpq.settings import BatchSettings
from rpq.submit import Caller
from rpq.template import RequestTemplate
from rpq.write import ResultWriter

#: RunPod's documented /run body limit.
RUN_BODY_LIMIT = 10 * 1000 * 1000
HEALTH_EVERY = 5.0


@dataclass
class BatchResult:
    """What a finished (or interrupted) batch did; the CLI turns it into output and exit code."""

    records: list[JobRecord]
    summary: dict[str, Any]
    interrupted: bool = False
    orphans: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.status != "COMPLETED")


def now_iso(wall: float | None = None) -> str:
    ts = datetime.fromtimestamp(wall if wall is not None else time.time(), tz=timezone.utc)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_template(settings: BatchSettings) -> RequestTemplate:
    if settings.workflow and settings.template:
        raise UsageError("--workflow and --input-template are exclusive: pass one of them.")
    if settings.workflow:
        return RequestTemplate.from_workflow(settings.workflow)
    if settings.template:
        return RequestTemplate.from_file(settings.template)
    return RequestTemplate.default()


def policy_of(settings: BatchSettings) -> dict[str, Any] | None:
    policy: dict[str, Any] = {}
    if settings.execution_timeout is not None:
        policy["executionTimeout"] = int(settings.execution_timeout * 1000)
    if settings.ttl is not None:
        policy["ttl"] = int(settings.ttl * 1000)
    if settings.low_priority:
        policy["lowPriority"] = True
    return policy or None


class Batch:
    """One run of `rpq batch`. Knows nothing of Typer or Rich; time is injected."""

    def __init__(
        self,
        settings: BatchSettings,
        reporter: Reporter,
        *,
        client: RunPodClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.s = settings
        self.reporter = reporter
        self.clock, self.wall, self.sleep = clock, wall, sleep
        ep = settings.endpoint
        self.client = client or RunPodClient(
            ep.base_url, ep.endpoint_id, ep.api_key, pool_size=settings.concurrency + 8
        )
        self.template = build_template(settings)
        self.policy = policy_of(settings)
        self.fingerprint = hashlib.sha256(
            "|".join([self.template.fingerprint(), str(settings.max_side), str(settings.fmt),
                      ep.endpoint_id]).encode()
        ).hexdigest()
        self.tracker = Tracker(clock)
        self.limiters = Limiters(Rate.parse(settings.rate) if settings.rate else None,
                                 clock=clock, sleep=sleep)
        self.caller = Caller(self.client, self.limiters, max_retries=settings.max_retries,
                             sleep=sleep, on_retry=self._on_retry)
        self.detector = StallDetector(settings.max_queue_time, clock)
        self.poller = Poller(self.caller, self.detector, Timing(), max_wait=settings.max_wait,
                             mode=settings.poll_mode, clock=clock, sleep=sleep)
        self.writer = ResultWriter(settings.out, self.client, output_key=settings.output_key,
                                   save_json=settings.save_json,
                                   download_max_bytes=settings.download_max_mb << 20)
        self.journal: Journal | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # first Ctrl-C: submit nothing new
        self._halt = threading.Event()  # second Ctrl-C: cancel everything in flight
        self._done_health = threading.Event()
        self._live: dict[str, tuple[str, str]] = {}  # job id -> (key, last status)
        self._keys_in_run: dict[str, threading.Event] = {}
        self._seen_keys: set[str] = set()
        self.records: list[JobRecord] = []
        self.orphans = 0
        self.run_retries = 0

    # -- entry points -----------------------------------------------------------------------

    def check_endpoint(self) -> dict[str, Any]:
        """One /health before reading any image: 401/404/unreachable end the run here."""
        health = self.client.health()
        workers = health.get("workers") if isinstance(health, dict) else None
        if isinstance(workers, dict):
            warm = sum(int(workers.get(k) or 0) for k in ("idle", "ready", "running"))
            if warm == 0:
                self.reporter.message(
                    "warning: the endpoint has no idle or ready worker; expect a cold start "
                    "before the first results."
                )
        self.tracker.health = health
        return health

    def dry_run(self) -> dict[str, Any]:
        """What would be sent; sends nothing."""
        journal = Journal(self.s.out / JOURNAL_NAME) if not self.s.fresh else None
        images: list[dict[str, Any]] = []
        preview: dict[str, Any] | None = None
        skipped = []
        for item in discover(self.s.root, self.s.include, self.s.exclude, self.s.recursive):
            if isinstance(item, Skipped):
                skipped.append({"file": item.rel, "reason": item.reason})
                continue
            info: dict[str, Any] = {"file": item.rel, "bytes": item.path.stat().st_size}
            try:
                key = job_key(content_digest(item.path), self.fingerprint)
                entry = journal.get(key) if journal else None
                info["journal"] = entry.state if entry else "new"
                if preview is None:
                    prepared = prepare(item, max_side=self.s.max_side, fmt=self.s.fmt)
                    preview = self.template.render_preview(prepared, policy=self.policy)
                    info["request_bytes"] = len(self.template.render(prepared, policy=self.policy))
            except InputError as exc:
                info["error"] = str(exc)
            images.append(info)
        return {"endpoint": self.client.url, "images": images, "skipped": skipped,
                "request_example": preview}

    def run(self) -> BatchResult:
        self.s.out.mkdir(parents=True, exist_ok=True)
        journal_path = self.s.out / JOURNAL_NAME
        if self.s.fresh and journal_path.exists():
            os.replace(journal_path, journal_path.with_suffix(".jsonl.old"))
        started_wall = self.wall()
        self.journal = Journal(journal_path)
        for entry in self.journal.entries.values():
            if entry.record and entry.state == "done":
                self.writer.claim_existing(entry.rel, entry.record.get("outputs") or [])
        self.orphans = len(self.journal.orphans())
        self.tracker.total = self._count()
        self.reporter.start(self.tracker)
        health_thread = threading.Thread(target=self._watch_health, name="rpq-health", daemon=True)
        health_thread.start()
        try:
            self._dispatch()
        finally:
            self._done_health.set()
            self.reporter.stop()
            self.journal.close()
        summary = self._finish(started_wall)
        return BatchResult(self.records, summary, interrupted=self._stop.is_set(),
                           orphans=self.orphans, skipped=self.tracker.counts["skipped"])

    def interrupt(self) -> int:
        """Ctrl-C: first stop submitting and cancel queued jobs; then cancel everything."""
        level = 2 if self._stop.is_set() else 1
        self._stop.set()
        if level == 2:
            self._halt.set()
        with self._lock:
            live = list(self._live.items())
        targets = [(jid, key) for jid, (key, st) in live if level == 2 or st == "IN_QUEUE"]
        if level == 1:
            self.reporter.message("interrupted: submitting nothing new and cancelling queued "
                                  "jobs; running ones may finish. Ctrl-C again cancels all.")
        else:
            self.reporter.message(f"interrupted again: cancelling all {len(targets)} job(s) "
                                  "in flight.")
        threading.Thread(target=self._cancel_all, args=(targets, level == 1),
                         daemon=True).start()
        return level

    # -- dispatch ---------------------------------------------------------------------------

    def _count(self) -> int:
        return sum(1 for _ in discover(self.s.root, self.s.include, self.s.exclude,
                                       self.s.recursive))

    def _dispatch(self) -> None:
        slots = threading.BoundedSemaphore(self.s.concurrency * 2)
        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(self.s.concurrency, thread_name_prefix="rpq-job") as pool:
            def launch(fn: Callable[..., None], *args: Any) -> None:
                while not slots.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                fut = pool.submit(fn, *args)
                pending.add(fut)

                def done(f: Future[None]) -> None:
                    slots.release()
                    pending.discard(f)

                fut.add_done_callback(done)

            for item in discover(self.s.root, self.s.include, self.s.exclude, self.s.recursive):
                if self._stop.is_set():
                    break
                launch(self._guard, self._one, item)
            # Jobs the journal shows in flight whose file is gone from the folder.
            assert self.journal is not None
            for entry in self.journal.in_flight():
                if self._stop.is_set():
                    break
                if entry.key not in self._seen_keys:
                    launch(self._guard, self._resume_orphan, entry)
            while pending:
                wait(list(pending), timeout=0.2)

    def _guard(self, fn: Callable[..., None], item: Any) -> None:
        """A job's unexpected exception becomes that job's failure, never the batch's."""
        try:
            fn(item)
        except Exception as exc:
            rel = getattr(item, "rel", "?")
            self._record(None, JobRecord(input=rel, status="FAILED",
                                         error=f"internal error: {type(exc).__name__}: {exc}",
                                         error_kind="http_error", timestamp=now_iso(self.wall())))

    # -- one image --------------------------------------------------------------------------

    def _one(self, item: ImageFile | Skipped) -> None:
        if isinstance(item, Skipped):
            self._record(None, self._bad_input(item.rel, item.reason))
            return
        try:
            digest = content_digest(item.path)
        except OSError as exc:
            self._record(None, self._bad_input(item.rel, f"unreadable: {exc.strerror}"))
            return
        key = job_key(digest, self.fingerprint)
        assert self.journal is not None
        with self._lock:
            first = key not in self._keys_in_run
            if first:
                self._keys_in_run[key] = threading.Event()
            twin = self._keys_in_run[key]
            self._seen_keys.add(key)
        if not first:
            twin.wait()
            self._reuse(item.rel, key)
            return
        try:
            self._process(item, key)
        finally:
            twin.set()

    def _process(self, item: ImageFile, key: str) -> None:
        assert self.journal is not None
        entry = self.journal.get(key)
        if entry is not None and entry.state == "done" and self._outputs_exist(entry):
            self._reuse(item.rel, key)
            return
        if entry is not None and entry.state == "failed" and not self.s.retry_failed:
            record = JobRecord.from_dict(entry.record or {"status": "FAILED"})
            record.input = item.rel
            self.tracker.add("skipped")
            self._report(record, count=False)
            return
        if entry is not None and entry.in_flight and entry.job_id:
            # The endpoint has this job already: poll it, never submit it again.
            self._follow(item.rel, key, entry.job_id, entry.attempts or 1, None, resumed=True)
            return
        if self._stop.is_set():
            return
        try:
            prepared = prepare(item, max_side=self.s.max_side, fmt=self.s.fmt)
            body = self.template.render(prepared, policy=self.policy)
        except InputError as exc:
            self._record(key, self._bad_input(item.rel, str(exc)))
            return
        del prepared
        if len(body) > RUN_BODY_LIMIT:
            mb = len(body) / 1e6
            self._record(key, self._bad_input(
                item.rel, f"request is {mb:.1f} MB, over RunPod's 10 MB /run limit. "
                "Pass --max-side 2048 (or smaller) or --format jpeg to shrink it."))
            return
        attempts = (entry.attempts if entry else 0)
        self._follow(item.rel, key, None, attempts, body)

    def _follow(self, rel: str, key: str, job_id: str | None, attempts: int,
                body: bytes | None, resumed: bool = False) -> None:
        """Submit if needed, poll, resubmit a stalled job, and record how it ended."""
        assert self.journal is not None
        first_submit_wall = self.wall()
        first_submit = self.clock()
        submits_left = 1 + self.s.job_retries
        cancels: list[str] = []
        self.tracker.add("queued")
        state = "queued"
        try:
            while True:
                if job_id is None:
                    if body is None or self._stop.is_set():
                        self.tracker.move(state, None)
                        return
                    attempts += 1
                    submits_left -= 1
                    self.journal.intent(key, rel, attempts)
                    try:
                        reply = self.caller.submit(body)
                    except APIError as exc:
                        self.journal.lost(key, "", "submit failed")
                        self.tracker.move(state, None)
                        state = ""
                        self._record(key, self._failure(
                            rel, None, attempts, "http_error",
                            f"submit failed: {exc}" + (
                                "" if is_transient(exc) else " (not retried: a 4xx is final)"),
                            first_submit_wall, None))
                        return
                    job_id = str(reply["id"])
                    self.journal.submitted(key, job_id, self.client.endpoint_id,
                                           self.client.base_url)
                    submitted_at = self.clock()
                    first_submit_wall = self.wall()
                else:
                    submitted_at = self.clock()
                seq = self.detector.next_seq()
                with self._lock:
                    self._live[job_id] = (key, "IN_QUEUE")
                current = job_id

                def on_status(status: str, jid: str = current) -> None:
                    nonlocal state
                    with self._lock:
                        if jid in self._live:
                            self._live[jid] = (self._live[jid][0], status)
                    if status in ("IN_PROGRESS", "RUNNING") and state != "running":
                        self.tracker.move(state, "running")
                        state = "running"
                    elif status == "IN_QUEUE" and state != "queued":
                        self.tracker.move(state, "queued")
                        state = "queued"

                result = self.poller.wait(job_id, seq, submitted_at, on_status=on_status,
                                          stop=self._halt.is_set)
                with self._lock:
                    self._live.pop(job_id, None)
                if result.outcome == "stalled" and submits_left > 0 and body is not None \
                        and not self._stop.is_set():
                    self._cancel(key, job_id, f"stalled: {result.reason}")
                    cancels.append(job_id)
                    self.tracker.add("retried")
                    self.tracker.error(f"{rel}: {result.reason}; cancelled and resubmitted")
                    job_id = None
                    continue
                break
            self.tracker.move(state, None)
            state = ""
            record = self._conclude(rel, key, job_id, attempts, result, first_submit_wall,
                                    first_submit)
            if cancels and record.error:
                record.error += f" (earlier attempts cancelled: {', '.join(cancels)})"
            self._record(key, record)
        finally:
            if state:
                self.tracker.move(state, None)

    def _conclude(self, rel: str, key: str, job_id: str, attempts: int, result: PollResult,
                  submit_wall: float, submit_mono: float) -> JobRecord:
        body = result.body or {}
        total = self.clock() - submit_mono
        worker = body.get("workerId")
        queue = _ms(body.get("delayTime"))
        process = _ms(body.get("executionTime"))
        if queue is None and result.started_at is not None:
            queue = result.started_at - submit_mono
        base = dict(input=rel, job_id=job_id, submit_time=round(submit_wall, 3),
                    queue_time=queue, process_time=process, total_time=round(total, 3),
                    attempts=attempts, worker_id=worker if isinstance(worker, str) else None,
                    endpoint=self.client.endpoint_id, timestamp=now_iso(self.wall()))
        if result.outcome != "terminal":
            if result.outcome in ("stalled", "max_wait", "interrupted"):
                answer = self._cancel(key, job_id, result.reason)
                kind = {"stalled": "stalled", "max_wait": "timed_out",
                        "interrupted": "cancelled"}[result.outcome]
                status = "CANCELLED" if result.outcome != "max_wait" else "TIMED_OUT"
                return JobRecord(status=status, error=f"{result.reason}; cancel: {answer}",
                                 error_kind=kind, **base)  # type: ignore[arg-type]
            if result.outcome == "expired":
                assert self.journal is not None
                self.journal.lost(key, job_id, "expired")
                return JobRecord(status="FAILED", error=result.reason, error_kind="expired",
                                 **base)  # type: ignore[arg-type]
            return JobRecord(status="FAILED", error=result.reason, error_kind="http_error",
                             **base)  # type: ignore[arg-type]
        status = str(body.get("status"))
        if status == "COMPLETED":
            try:
                outputs = self.writer.write(rel, body)
            except OutputError as exc:
                return JobRecord(status="FAILED", error=f"completed without a usable image: {exc}",
                                 error_kind="no_output", **base)  # type: ignore[arg-type]
            except (APIError, OSError) as exc:
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                return JobRecord(status="FAILED", error=f"could not save the result: {text}",
                                 error_kind="no_output", **base)  # type: ignore[arg-type]
            return JobRecord(status="COMPLETED", outputs=outputs, **base)  # type: ignore[arg-type]
        if status == "FAILED":
            return JobRecord(status="FAILED", error=decode_worker_error(body.get("error")),
                             error_kind="worker_error", **base)  # type: ignore[arg-type]
        if status == "TIMED_OUT":
            return JobRecord(status="TIMED_OUT", error="the endpoint timed the job out "
                             "(executionTimeout or ttl)", error_kind="timed_out",
                             **base)  # type: ignore[arg-type]
        return JobRecord(status="CANCELLED", error="cancelled", error_kind="cancelled",
                         **base)  # type: ignore[arg-type]

    # -- helpers ----------------------------------------------------------------------------

    def _resume_orphan(self, entry: Entry) -> None:
        assert entry.job_id is not None
        self._follow(entry.rel, entry.key, entry.job_id, entry.attempts or 1, None, resumed=True)

    def _outputs_exist(self, entry: Entry) -> bool:
        outputs = (entry.record or {}).get("outputs") or []
        return bool(outputs) and all((self.s.out / o).is_file() for o in outputs)

    def _reuse(self, rel: str, key: str) -> None:
        """Same content and settings as a job already done: reuse its result."""
        assert self.journal is not None
        entry = self.journal.get(key)
        if entry is None or entry.record is None:
            return
        record = JobRecord.from_dict(entry.record)
        if entry.state == "done" and record.input != rel:
            try:
                record.outputs = self.writer.copy_outputs(record.outputs, rel)
            except (OSError, RpqError) as exc:
                record = JobRecord(input=rel, status="FAILED", error=f"could not copy the "
                                   f"result of {record.input}: {exc}", error_kind="no_output",
                                   timestamp=now_iso(self.wall()))
            record.input = rel
        self.tracker.add("skipped")
        self._report(record, count=False)

    def _cancel(self, key: str, job_id: str, reason: str) -> str:
        try:
            answer: Any = self.caller.cancel(job_id)
            text = str(answer.get("status", answer)) if isinstance(answer, dict) else str(answer)
        except APIError as exc:
            answer, text = {"error": str(exc)}, f"failed ({exc})"
        if self.journal is not None:
            self.journal.cancelled(key, job_id, answer, reason)
        return text

    def _cancel_all(self, targets: list[tuple[str, str]], queued_only: bool) -> None:
        for job_id, key in targets:
            if queued_only:
                # Our last view may be a long poll old: ask before cancelling a running job.
                try:
                    body = self.caller.call("status", partial(self.client.status, job_id))
                except APIError:
                    continue
                if body.get("status") != "IN_QUEUE":
                    continue
            self._cancel(key, job_id, "interrupted")

    def _bad_input(self, rel: str, reason: str) -> JobRecord:
        return JobRecord(input=rel, status="FAILED", error=reason, error_kind="bad_input",
                         attempts=0, timestamp=now_iso(self.wall()))

    def _failure(self, rel: str, job_id: str | None, attempts: int, kind: str, error: str,
                 submit_wall: float, total: float | None) -> JobRecord:
        return JobRecord(input=rel, status="FAILED", job_id=job_id, attempts=attempts,
                         error=error, error_kind=kind, submit_time=round(submit_wall, 3),
                         total_time=total, endpoint=self.client.endpoint_id,
                         timestamp=now_iso(self.wall()))

    def _record(self, key: str | None, record: JobRecord) -> None:
        if key is not None and self.journal is not None:
            if record.error_kind == "cancelled" and record.job_id:
                # Cancelled (Ctrl-C, `rpq cancel`): not an outcome; a rerun sends it again.
                self.journal.lost(key, record.job_id, "cancelled")
            else:
                self.journal.end(key, record.to_dict())
        self.tracker.add("done" if record.status == "COMPLETED" else
                         "cancelled" if record.status == "CANCELLED" else "failed")
        self._report(record)

    def _report(self, record: JobRecord, count: bool = True) -> None:
        with self._lock:
            self.records.append(record)
        if count:
            self.tracker.finished(record)
        self.reporter.job_done(record, skipped=not count)

    def _on_retry(self, op: str, exc: BaseException, delay: float) -> None:
        if op == "run":
            with self._lock:
                self.run_retries += 1

    def _watch_health(self) -> None:
        while not self._done_health.wait(HEALTH_EVERY):
            with contextlib.suppress(RpqError):
                self.tracker.health = self.caller.call("health", self.client.health, attempts=1)

    def _finish(self, started_wall: float) -> dict[str, Any]:
        stats = summarize(self.records)
        run = {
            "rpq_version": __version__,
            "start": now_iso(started_wall),
            "end": now_iso(self.wall()),
            "endpoint": self.client.endpoint_id,
            "base_url": self.s.endpoint.base_url or "(built-in local endpoint)",
            "interrupted": self._stop.is_set(),
            "orphaned_submits": self.orphans,
            "run_request_retries": self.run_retries,
            "requests": dict(self.client.requests_sent),
            "settings": self.s.public(),
        }
        write_metrics(self.s.metrics_path, self.records, run)
        return {"stats": stats, "run": run, "metrics": str(self.s.metrics_path),
                "out": str(self.s.out)}


def _ms(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return round(value / 1000.0, 3)
    return None


__all__ = ["TERMINAL", "Batch", "BatchResult"]
