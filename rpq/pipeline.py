"""The batch: discover -> prepare -> rate limit -> submit -> poll -> write, with a journal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import IO, Any

from rpq import __version__
from rpq.api import RunPodClient, is_transient, post_json
from rpq.discovery import Discovered
from rpq.errors import APIError, InputError, RpqError, UsageError
from rpq.extract import OutputError, decode_worker_error
from rpq.files import sweep_temp_files
from rpq.guards import Alerter, Guards, GuardSettings, HaltRule
from rpq.health import diagnose
from rpq.images import ImageFile, Prepared, Skipped, content_digest, discover, prepare
from rpq.journal import JOURNAL_NAME, Entry, Journal, job_key
from rpq.limiter import Limiters, Rate
from rpq.listing import FileList, listed
from rpq.metrics import JobRecord, RunStats, load_metrics, write_metrics
from rpq.poll import STARTED, Poller, PollResult, StallDetector, Timing
from rpq.progress import Reporter, Tracker
from rpq.settings import BatchSettings, check_base_url
from rpq.storage import Bucket, BucketError, RemoteImage, fetched, remote_images, url_only
from rpq.submit import Caller
from rpq.template import RequestTemplate
from rpq.write import ResultWriter

#: What /cancel answers for a job that ended before it could be cancelled.
_ENDED = frozenset({"COMPLETED", "FAILED", "TIMED_OUT"})
#: RunPod's documented /run body limit.
RUN_BODY_LIMIT = 10 * 1000 * 1000
HEALTH_EVERY = 5.0


@dataclass
class BatchResult:
    """What a finished (or stopped) batch did; the CLI turns it into output and exit code."""

    summary: dict[str, Any]
    interrupted: bool = False
    stop_reason: str | None = None
    orphans: int = 0
    skipped: int = 0
    not_started: int = 0

    @property
    def failed(self) -> int:
        return int(self.summary["stats"]["failed"])

    @property
    def records(self) -> list[JobRecord]:
        """Every job's record, read back from the metrics file."""
        return load_metrics(Path(self.summary["metrics"])).jobs


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


class _Job:
    """One image's way through the endpoint(s): attempts, job ids, tracker state."""

    def __init__(self, rel: str, key: str, attempts: int) -> None:
        self.rel = rel
        self.key = key
        self.attempts = attempts
        self.state = ""  # tracker column this job is counted in
        self.cancelled: list[str] = []
        self.refetch = False  # its result could not be saved here: a rerun fetches it again


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
        self._out_rel = None if settings.bucket_in else _inside(settings.out, settings.root)
        if self._out_rel == ".":
            raise UsageError(f"--out {settings.out} is the input folder: results named like "
                             "their inputs would replace them. Pass another folder.")
        ep = settings.endpoint
        self.client = client or RunPodClient(
            ep.base_url, ep.endpoint_id, ep.api_key, pool_size=settings.concurrency + 8
        )
        self.template = build_template(settings)
        self._files = FileList(settings.files_from) if settings.files_from else None
        self.inputs = Bucket.at(settings.bucket_in, pool=settings.concurrency + 8) \
            if settings.bucket_in else None
        if self.template.needs_url and self.inputs is None:
            raise UsageError("{{image_url}} needs the images in a bucket (rpq batch "
                             "s3://BUCKET/PREFIX): a local file has no URL the worker could "
                             "fetch. Use {{image_base64}} for a local folder.")
        if self.template.warning:
            reporter.message(f"warning: {self.template.warning}")
        self.policy = policy_of(settings)
        self.fingerprint = hashlib.sha256(
            "|".join([self.template.fingerprint(), str(settings.max_side), str(settings.fmt),
                      ep.endpoint_id]).encode()
        ).hexdigest()
        self.tracker = Tracker(clock)
        run_rate = Rate.parse(settings.rate) if settings.rate else None
        self.callers: dict[str, Caller] = {}
        for client_ in [self.client, *self._fallback_clients(settings)]:
            limiters = Limiters(run_rate, clock=clock, sleep=sleep)
            self.callers[client_.endpoint_id] = Caller(
                client_, limiters, max_retries=settings.max_retries, sleep=sleep,
                on_retry=self._on_retry)
        self.primary = self.client.endpoint_id
        self.active = self.primary
        self.detector = StallDetector(settings.max_queue_time, clock)
        self.poller = Poller(self.detector, Timing(), max_wait=settings.max_wait,
                             mode=settings.poll_mode, clock=clock, sleep=sleep)
        self.writer = ResultWriter(settings.out, self.client, output_key=settings.output_key,
                                   save_json=settings.save_json,
                                   download_max_bytes=settings.download_max_mb << 20)
        if settings.bucket_out:
            self.writer.store = Bucket.at(settings.bucket_out, pool=settings.concurrency + 8)
        alerter = Alerter(settings.alert_webhook, post_json, clock,
                          on_error=self.tracker.error) if settings.alert_webhook else None
        self.guards = Guards(GuardSettings(
            alert_url=settings.alert_webhook, alert_queue_time=settings.alert_queue_time,
            alert_process_time=settings.alert_process_time,
            alert_failure_rate=settings.alert_failure_rate, cost_per_hour=settings.cost_per_hour,
            budget=settings.budget,
            halt=HaltRule.parse(settings.halt_on_fail) if settings.halt_on_fail else None,
        ), alerter)
        self.journal: Journal | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # submit nothing new (Ctrl-C, halt, budget)
        self._halt = threading.Event()  # second Ctrl-C: cancel everything in flight
        self._done_health = threading.Event()
        self.interrupted = False
        self.stop_reason: str | None = None
        self._live: dict[str, tuple[str, str, str]] = {}  # job id -> (key, status, endpoint)
        self._migrate: set[str] = set()  # job ids to move to the fallback endpoint
        self._keys_in_run: dict[str, threading.Event] = {}  # keys being worked on now
        self._seen_keys: set[str] = set()
        # Finished records go to a temporary file, not a list: memory stays flat in the
        # number of images; job_metrics.json is streamed from it at the end.
        self._spool: IO[bytes] | None = None  # open while run() runs
        self.stats = RunStats()
        self.orphans = 0
        self.run_retries = 0
        self.not_started = 0
        self.failovers: list[dict[str, Any]] = []

    def _fallback_clients(self, settings: BatchSettings) -> list[RunPodClient]:
        fb = settings.fallback_endpoint
        if not fb:
            return []
        if fb == settings.endpoint.endpoint_id:
            raise UsageError("--fallback-endpoint is the same as the endpoint: name another one.")
        ep = settings.endpoint
        base = ep.base_url
        if fb.startswith(("http://", "https://")):
            # A full endpoint URL, e.g. another `rpq serve`: BASE/ID.
            base, _, fb = fb.rstrip("/").rpartition("/")
            base = check_base_url(base)
        return [RunPodClient(base, fb, ep.api_key, pool_size=settings.concurrency + 8)]

    # -- entry points -----------------------------------------------------------------------

    def check_endpoint(self) -> dict[str, Any]:
        """One /health before reading any image: 401/404/unreachable end the run here."""
        for bucket in (self.inputs, self.writer.store):
            if bucket is not None:
                bucket.check()  # a missing bucket or refused key ends the run before any job
        health = self.client.health()
        workers = health.get("workers") if isinstance(health, dict) else None
        if isinstance(workers, dict):
            warm = sum(int(workers.get(k) or 0) for k in ("idle", "ready", "running"))
            if warm == 0:
                self.reporter.message(
                    "warning: the endpoint has no idle or ready worker; expect a cold start "
                    "before the first results."
                )
        for name, caller in self.callers.items():
            if name != self.primary:
                caller.client.health()  # a bad fallback is better found now than mid-run
        self.tracker.health = health
        return health

    def dry_run(self) -> dict[str, Any]:
        """What would be sent; sends nothing."""
        journal = Journal(self.s.out / JOURNAL_NAME) if not self.s.fresh else None
        images: list[dict[str, Any]] = []
        preview: dict[str, Any] | None = None
        skipped = []
        for item in self._discover():
            if isinstance(item, Skipped):
                skipped.append({"file": item.rel, "reason": item.reason})
                continue
            size = item.size if isinstance(item, RemoteImage) else item.path.stat().st_size
            info: dict[str, Any] = {"file": item.rel, "bytes": size}
            try:
                with self._local(item) as local:
                    key = job_key(self._digest(local), self.fingerprint)
                    entry = journal.get(key) if journal else None
                    info["journal"] = entry.state if entry else "new"
                    if preview is None:
                        prepared, url = self._prepare(local)
                        preview = self.template.render_preview(prepared, policy=self.policy,
                                                               url=url)
                        info["request_bytes"] = self.template.body_size(
                            prepared, policy=self.policy, url=url)
            except (InputError, BucketError) as exc:
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
        sweep_temp_files(self.s.out)  # half-written files of a run that was killed
        self.journal = Journal(journal_path, room=True)
        self.writer.earlier_owner = self.journal.output_owner
        self.orphans = len(self.journal.orphans())
        # One walk (or listing) in a thread, ahead of the work: the total is known when it
        # ends, and the first jobs go out meanwhile.
        self._found = Discovered(self._discover(), self._counted)
        self.reporter.start(self.tracker)
        health_thread = threading.Thread(target=self._watch_health, name="rpq-health", daemon=True)
        health_thread.start()
        with tempfile.TemporaryFile() as self._spool:
            try:
                self._dispatch()
            finally:
                self._done_health.set()
                self.reporter.stop()
                self.journal.close()
            summary = self._finish(started_wall)
        return BatchResult(summary, interrupted=self.interrupted,
                           stop_reason=self.stop_reason, orphans=self.orphans,
                           skipped=self.tracker.counts["skipped"], not_started=self.not_started)

    def interrupt(self) -> int:
        """Ctrl-C: first stop submitting and cancel queued jobs; then cancel everything."""
        self.interrupted = True
        if not self._stop.is_set():
            self._wind_down(None)
            return 1
        self._halt.set()
        with self._lock:
            targets = [(jid, key, ep) for jid, (key, _, ep) in self._live.items()]
        self.reporter.message(f"interrupted again: cancelling all {len(targets)} job(s) "
                              "in flight.")
        threading.Thread(target=self._cancel_all, args=(targets, False), daemon=True).start()
        return 2

    def _wind_down(self, reason: str | None) -> None:
        """Submit nothing new and cancel what is still queued; running jobs may finish."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            self.stop_reason = reason
            targets = [(jid, key, ep) for jid, (key, st, ep) in self._live.items()
                       if st == "IN_QUEUE"]
        why = reason or "interrupted"
        extra = "" if reason else " Ctrl-C again cancels all."
        self.reporter.message(f"{why}: submitting nothing new and cancelling queued jobs; "
                              f"running ones may finish.{extra}")
        threading.Thread(target=self._cancel_all, args=(targets, True), daemon=True).start()

    # -- dispatch ---------------------------------------------------------------------------

    def _counted(self, count: int, done: bool) -> None:
        if done:
            self.tracker.total = count

    def _discover(self) -> Iterator[ImageFile | Skipped]:
        """The input folder's images; never what is in the output folder, if it lies inside."""
        inner, shard = self._out_rel, self.s.shard
        for item in self._source():
            if shard is not None and not shard.holds(item.rel):
                continue
            if inner is None or (item.rel != inner and not item.rel.startswith(inner + "/")):
                yield item

    def _source(self) -> Iterator[ImageFile | Skipped]:
        if self.inputs is not None:
            return remote_images(self.inputs, self.s.include, self.s.exclude,
                                 by_url=not self.template.needs_bytes)
        if self._files is not None:
            return listed(self._files, self.s.root)
        return discover(self.s.root, self.s.include, self.s.exclude, self.s.recursive)

    def _dispatch(self) -> None:
        slots = threading.BoundedSemaphore(self.s.concurrency * 2)
        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(self.s.concurrency, thread_name_prefix="rpq-job") as pool:
            def launch(fn: Callable[..., None], *args: Any) -> bool:
                while not slots.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return False
                fut = pool.submit(fn, *args)
                pending.add(fut)

                def done(f: Future[None]) -> None:
                    slots.release()
                    pending.discard(f)

                fut.add_done_callback(done)
                return True

            for item in self._found:
                if self._stop.is_set() or not launch(self._guard, self._one, item):
                    break
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
        except OSError as exc:
            # Writing the journal failed (a full disk, a folder made read-only).
            rel = getattr(item, "rel", "?")
            self._record(None, JobRecord(input=rel, status="FAILED",
                                         error=f"could not write to {self.s.out}: "
                                         f"{exc.strerror or exc}", error_kind="no_output",
                                         timestamp=now_iso(self.wall())))
        except Exception as exc:
            rel = getattr(item, "rel", "?")
            self._record(None, JobRecord(input=rel, status="FAILED",
                                         error=f"internal error: {type(exc).__name__}: {exc}",
                                         error_kind="http_error", timestamp=now_iso(self.wall())))

    # -- one image --------------------------------------------------------------------------

    def _local(self, item: ImageFile) -> contextlib.AbstractContextManager[ImageFile]:
        """The image with its bytes on this machine while a job needs them (bucket inputs)."""
        if isinstance(item, RemoteImage) and self.inputs is not None and not item.fetched:
            return fetched(self.inputs, item, need_bytes=self.template.needs_bytes)
        return contextlib.nullcontext(item)

    def _digest(self, item: ImageFile) -> str:
        if isinstance(item, RemoteImage) and item.digest:
            return item.digest  # known by key and ETag: only its URL is sent
        return content_digest(item.path)

    def _prepare(self, item: ImageFile) -> tuple[Prepared, str | None]:
        """What the template needs: the prepared bytes, and/or a presigned URL."""
        url = None
        if self.template.needs_url and isinstance(item, RemoteImage) and self.inputs:
            url = self.inputs.presign(item.rel, self.s.url_expiry)
        if isinstance(item, RemoteImage) and not self.template.needs_bytes:
            return url_only(item), url
        return prepare(item, max_side=self.s.max_side, fmt=self.s.fmt), url

    def _one(self, item: ImageFile | Skipped) -> None:
        if isinstance(item, Skipped):
            self._record(None, self._bad_input(item.rel, item.reason))
            return
        if isinstance(item, RemoteImage) and not item.fetched:
            try:
                with self._local(item) as local:
                    self._one(local)
            except BucketError as exc:
                self._record(None, self._bad_input(item.rel, f"cannot read it: {exc}"))
            return
        try:
            digest = self._digest(item)
        except OSError as exc:
            self._record(None, self._bad_input(item.rel, f"unreadable: {exc.strerror}"))
            return
        key = job_key(digest, self.fingerprint)
        with self._lock:
            twin = self._keys_in_run.get(key)
            first = twin is None and key not in self._seen_keys
            if first:
                twin = self._keys_in_run[key] = threading.Event()
            self._seen_keys.add(key)
        if not first:
            if twin is not None:
                twin.wait()
            self._reuse(item.rel, key)
            return
        assert twin is not None
        try:
            self._process(item, key)
        finally:
            twin.set()
            with self._lock:
                del self._keys_in_run[key]

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
        job = _Job(item.rel, key, entry.attempts if entry else 0)
        if entry is not None and entry.in_flight and entry.job_id:
            # The endpoint has this job already: poll it, never submit it again.
            self._follow(job, entry.job_id, entry.endpoint or self.primary, None)
            return
        if self._stop.is_set():
            self._not_started()
            return
        try:
            prepared, url = self._prepare(item)
            body = self.template.render(prepared, policy=self.policy, url=url)
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
        self._follow(job, None, self.active, body)

    def _follow(self, job: _Job, job_id: str | None, endpoint: str, body: bytes | None) -> None:
        """Submit if needed, poll, move or resubmit a stuck job, and record how it ended."""
        assert self.journal is not None
        submit_wall, submit_mono = self.wall(), self.clock()
        resubmits_left = self.s.job_retries
        self._move(job, "queued")
        try:
            while True:
                if job_id is None:
                    if body is None or self._stop.is_set():
                        self._not_started()
                        return
                    endpoint = self.active
                    job_id = self._submit(job, body, endpoint, submit_wall)
                    if job_id is None:
                        return
                    submit_wall, submit_mono = self.wall(), self.clock()
                caller = self.callers.get(endpoint) or self.callers[self.primary]
                result = self._wait(job, caller, job_id, endpoint)
                moving = job_id in self._migrate
                if result.outcome == "interrupted" and moving and body is not None:
                    answer = self._cancel(job.key, job_id, endpoint, f"moved to {self.active}")
                    with self._lock:
                        self._migrate.discard(job_id)
                    if answer in _ENDED:
                        continue  # it ended before it could be moved: collect that result
                    job.cancelled.append(job_id)
                    job_id = None
                    continue
                if result.outcome == "stalled" and body is not None and not self._stop.is_set():
                    self._fail_over(f"a job stalled on {endpoint}: {result.reason}")
                    if resubmits_left > 0 or self.active != endpoint:
                        if self.active == endpoint:
                            resubmits_left -= 1
                        answer = self._cancel(job.key, job_id, endpoint,
                                              f"stalled: {result.reason}")
                        if answer in _ENDED:
                            # It ran after all, since our last look (a poll may have failed):
                            # collect that result rather than pay for the image twice.
                            continue
                        job.cancelled.append(job_id)
                        self.tracker.add("retried")
                        self.tracker.error(f"{job.rel}: {result.reason}; cancelled and "
                                           f"resubmitted to {self.active}")
                        job_id = None
                        continue
                break
            self._move(job, "")
            record = self._conclude(job, job_id, endpoint, result, submit_wall, submit_mono)
            if job.cancelled and record.error:
                record.error += f" (earlier attempts cancelled: {', '.join(job.cancelled)})"
            # A result that could not be saved stays in flight in the journal: the endpoint
            # still has it, and a rerun fetches it instead of paying for the image again.
            self._record(None if job.refetch else job.key, record)
        finally:
            self._move(job, "")

    def _submit(self, job: _Job, body: bytes, endpoint: str, submit_wall: float) -> str | None:
        assert self.journal is not None
        caller = self.callers[endpoint]
        job.attempts += 1
        self.journal.intent(job.key, job.rel, job.attempts)
        try:
            reply = caller.submit(body)
        except APIError as exc:
            self.journal.lost(job.key, "", "submit failed")
            self._move(job, "")
            four_xx = exc.status is not None and 400 <= exc.status < 500
            final = " (not retried: a 4xx is final)" if four_xx and not is_transient(exc) else ""
            self._record(job.key, JobRecord(
                input=job.rel, status="FAILED", attempts=job.attempts, error_kind="http_error",
                error=f"submit failed: {exc}{final}", submit_time=round(submit_wall, 3),
                endpoint=endpoint, timestamp=now_iso(self.wall())))
            return None
        job_id = str(reply["id"])
        self.journal.submitted(job.key, job_id, endpoint, caller.client.base_url)
        return job_id

    def _wait(self, job: _Job, caller: Caller, job_id: str, endpoint: str) -> PollResult:
        with self._lock:
            self._live[job_id] = (job.key, "IN_QUEUE", endpoint)

        def on_status(status: str) -> None:
            with self._lock:
                if job_id in self._live:
                    self._live[job_id] = (job.key, status, endpoint)
            if status in STARTED:
                self._move(job, "running")
            elif status == "IN_QUEUE":
                self._move(job, "queued")

        def stop() -> bool:
            return self._halt.is_set() or job_id in self._migrate

        try:
            return self.poller.wait(caller, job_id, self.clock(), on_status=on_status, stop=stop)
        finally:
            with self._lock:
                self._live.pop(job_id, None)

    def _conclude(self, job: _Job, job_id: str, endpoint: str, result: PollResult,
                  submit_wall: float, submit_mono: float) -> JobRecord:
        answer = ""
        if result.outcome in ("stalled", "max_wait", "interrupted"):
            answer = self._cancel(job.key, job_id, endpoint, result.reason)
            if answer in _ENDED:
                # It ended since our last look: collect that result, it is paid for.
                ended = self._fetch_ended(job_id, endpoint)
                if ended is not None:
                    result = PollResult("terminal", ended, "", result.started_at)
        body = result.body or {}
        total = self.clock() - submit_mono
        worker = body.get("workerId")
        queue = _ms(body.get("delayTime"))
        if queue is None and result.started_at is not None:
            queue = round(result.started_at - submit_mono, 3)
        base: dict[str, Any] = dict(
            input=job.rel, job_id=job_id, submit_time=round(submit_wall, 3), queue_time=queue,
            process_time=_ms(body.get("executionTime")), total_time=round(total, 3),
            attempts=job.attempts, worker_id=worker if isinstance(worker, str) else None,
            endpoint=endpoint, timestamp=now_iso(self.wall()))
        if result.outcome in ("stalled", "max_wait", "interrupted"):
            kind = {"stalled": "stalled", "max_wait": "timed_out",
                    "interrupted": "cancelled"}[result.outcome]
            status = "TIMED_OUT" if result.outcome == "max_wait" else "CANCELLED"
            return JobRecord(status=status, error=f"{result.reason}; cancel: {answer}",
                             error_kind=kind, **base)
        if result.outcome == "expired":
            return JobRecord(status="FAILED", error=result.reason, error_kind="expired", **base)
        if result.outcome != "terminal":
            return JobRecord(status="FAILED", error=result.reason, error_kind="http_error",
                             **base)
        status = str(body.get("status"))
        if status == "COMPLETED":
            try:
                outputs = self.writer.write(job.rel, body)
            except OutputError as exc:
                return JobRecord(status="FAILED", error=f"completed without a usable image: {exc}",
                                 error_kind="no_output", **base)
            except OSError as exc:
                job.refetch = True
                return JobRecord(status="FAILED", error=f"could not save the result: "
                                 f"{exc.strerror or exc}; a rerun fetches it again",
                                 error_kind="no_output", **base)
            except APIError as exc:
                return JobRecord(status="FAILED", error=f"could not save the result: {exc}",
                                 error_kind="no_output", **base)
            return JobRecord(status="COMPLETED", outputs=outputs, **base)
        if status == "FAILED":
            return JobRecord(status="FAILED", error=decode_worker_error(body.get("error")),
                             error_kind="worker_error", **base)
        if status == "TIMED_OUT":
            return JobRecord(status="TIMED_OUT", error="the endpoint timed the job out "
                             "(executionTimeout or ttl)", error_kind="timed_out", **base)
        return JobRecord(status="CANCELLED", error="cancelled", error_kind="cancelled", **base)

    def _fetch_ended(self, job_id: str, endpoint: str) -> dict[str, Any] | None:
        caller = self.callers.get(endpoint) or self.callers[self.primary]
        try:
            body = caller.call("status", partial(caller.client.status, job_id))
        except APIError:
            return None
        return body if body.get("status") in _ENDED else None

    # -- failover ---------------------------------------------------------------------------

    def _fail_over(self, reason: str) -> None:
        """Switch new work to the fallback endpoint; move jobs still queued on the primary."""
        fallback = next((name for name in self.callers if name != self.primary), None)
        with self._lock:
            if fallback is None or self.active == fallback:
                return
            self.active = fallback
            queued = [jid for jid, (_, st, ep) in self._live.items()
                      if ep == self.primary and st == "IN_QUEUE"]
            self.failovers.append({"from": self.primary, "to": fallback, "reason": reason,
                                   "at": now_iso(self.wall()), "moved": len(queued)})
            self._migrate.update(queued)
        self.reporter.message(f"failing over to {fallback}: {reason}; moving {len(queued)} "
                              "queued job(s)")

    # -- helpers ----------------------------------------------------------------------------

    def _move(self, job: _Job, state: str) -> None:
        if job.state != state:
            self.tracker.move(job.state or None, state or None)
            job.state = state

    def _not_started(self) -> None:
        with self._lock:
            self.not_started += 1

    def _resume_orphan(self, entry: Entry) -> None:
        assert entry.job_id is not None
        job = _Job(entry.rel, entry.key, entry.attempts or 1)
        self._follow(job, entry.job_id, entry.endpoint or self.primary, None)

    def _outputs_exist(self, entry: Entry) -> bool:
        outputs = (entry.record or {}).get("outputs") or []
        return bool(outputs) and all(self.writer.has(o) for o in outputs)

    def _reuse(self, rel: str, key: str) -> None:
        """Same content and settings as a job already done: reuse its result."""
        assert self.journal is not None
        entry = self.journal.get(key)
        saved = entry.record if entry is not None else None
        if entry is None or saved is None:
            return
        record = JobRecord.from_dict(saved)
        if entry.state == "done" and record.input != rel:
            try:
                record.outputs = self.writer.copy_outputs(record.outputs, rel)
            except (OSError, RpqError) as exc:
                record = JobRecord(input=rel, status="FAILED", error=f"could not copy the "
                                   f"result of {record.input}: {exc}", error_kind="no_output",
                                   timestamp=now_iso(self.wall()))
        record.input = rel  # a failure is reported under each copy's own name too
        self.tracker.add("skipped")
        self._report(record, count=False)

    def _cancel(self, key: str, job_id: str, endpoint: str, reason: str) -> str:
        caller = self.callers.get(endpoint) or self.callers[self.primary]
        try:
            answer: Any = caller.cancel(job_id)
            text = str(answer.get("status", answer)) if isinstance(answer, dict) else str(answer)
        except APIError as exc:
            answer, text = {"error": str(exc)}, f"failed ({exc})"
        if self.journal is not None:
            self.journal.cancelled(key, job_id, answer, reason)
        return text

    def _cancel_all(self, targets: list[tuple[str, str, str]], queued_only: bool) -> None:
        for job_id, key, endpoint in targets:
            if queued_only:
                # Our last view may be a long poll old: ask before cancelling a running job.
                caller = self.callers.get(endpoint) or self.callers[self.primary]
                try:
                    body = caller.call("status", partial(caller.client.status, job_id))
                except APIError:
                    continue
                if body.get("status") != "IN_QUEUE":
                    continue
            self._cancel(key, job_id, endpoint, self.stop_reason or "interrupted")

    def _bad_input(self, rel: str, reason: str) -> JobRecord:
        return JobRecord(input=rel, status="FAILED", error=reason, error_kind="bad_input",
                         attempts=0, timestamp=now_iso(self.wall()))

    def _record(self, key: str | None, record: JobRecord) -> None:
        if key is not None and self.journal is not None:
            if record.error_kind in ("cancelled", "expired") and record.job_id:
                # Cancelled (Ctrl-C, `rpq cancel`) or lost by the endpoint (expired, or it
                # restarted): not an outcome of the image; a rerun sends it again.
                self.journal.lost(key, record.job_id, record.error_kind)
            else:
                self.journal.end(key, record.to_dict())
        self.tracker.add("done" if record.status == "COMPLETED" else
                         "cancelled" if record.status == "CANCELLED" else "failed")
        self._report(record)
        reason = self.guards.observe(record)
        self.tracker.spend = self.guards.spend
        if reason:
            self._wind_down(reason)

    def _report(self, record: JobRecord, count: bool = True) -> None:
        line = json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n"
        with self._lock:
            assert self._spool is not None
            self._spool.write(line.encode())
            self.stats.add(record)
        if count:
            self.tracker.finished(record)
        self.reporter.job_done(record, skipped=not count)

    def _spooled(self) -> Iterator[JobRecord]:
        assert self._spool is not None
        self._spool.seek(0)
        for line in self._spool:
            yield JobRecord.from_dict(json.loads(line))

    def _on_retry(self, op: str, exc: BaseException, delay: float) -> None:
        if op == "run":
            with self._lock:
                self.run_retries += 1

    def _watch_health(self) -> None:
        caller = self.callers[self.primary]
        while not self._done_health.wait(HEALTH_EVERY):
            with contextlib.suppress(RpqError):
                health = caller.call("health", caller.client.health, attempts=1)
                self.tracker.health = health
                diagnosis = diagnose(health)
                w = diagnosis.workers
                if len(self.callers) > 1 and (w["unhealthy"] or w["throttled"]) and \
                        not (w["idle"] + w["ready"] + w["running"]) and diagnosis.jobs["inQueue"]:
                    self._fail_over("the endpoint has no working worker: "
                                    + diagnosis.findings[0])

    def _finish(self, started_wall: float) -> dict[str, Any]:
        stats = self.stats.stats()
        requests: dict[str, dict[str, int]] = {
            name: dict(c.client.requests_sent) for name, c in self.callers.items()}
        run = {
            "rpq_version": __version__,
            "start": now_iso(started_wall),
            "end": now_iso(self.wall()),
            "endpoint": self.primary,
            "base_url": self.s.endpoint.base_url or "(built-in local endpoint)",
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "not_started": self.not_started,
            "orphaned_submits": self.orphans,
            "run_request_retries": self.run_retries,
            "requests": requests[self.primary] if len(requests) == 1 else requests,
            "failovers": self.failovers,
            "estimated_cost": None if self.guards.spend is None else round(self.guards.spend, 6),
            "settings": self.s.public(),
        }
        unsaved: OSError | None = None
        shown = str(self.s.metrics_path)
        try:
            write_metrics(self.s.metrics_path, self._spooled(), run, stats=stats)
            if self.writer.store is not None and self.s.metrics is None:
                self.writer.store.upload("job_metrics.json", self.s.metrics_path,
                                         "application/json")
                shown = f"{self.writer.store.where}job_metrics.json"
        except OSError as exc:  # a full disk, a folder made read-only
            unsaved = exc
        self.guards.summary(stats, self.interrupted, self.stop_reason)
        if self.guards.alerter is not None:
            self.guards.alerter.close()
        if unsaved is not None:
            raise RpqError(f"could not write {self.s.metrics_path}: "
                           f"{unsaved.strerror or unsaved}. The journal in {self.s.out} keeps "
                           "what was done: make room (or fix the permissions) and rerun the "
                           "same command.")
        return {"stats": stats, "run": run, "metrics": shown,
                "out": self.s.bucket_out or str(self.s.out)}


def _inside(out: Path, root: Path) -> str | None:
    """The output folder's path relative to the input folder, when it lies inside it."""
    try:
        return out.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _ms(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return round(value / 1000.0, 3)
    return None


__all__ = ["Batch", "BatchResult"]
