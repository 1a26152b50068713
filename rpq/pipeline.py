"""The batch: discover -> deduplicate -> prepare -> a job per image -> record, with a journal.

Layout, top to bottom: `Batch` (here) wires the stages, takes the images from `inputs.Inputs`
(a folder, a list or a bucket), hands each to a thread, and handles Ctrl-C; it reads the
journal only once the output folder is locked. `reuse.Reuse` answers an image whose request
was sent already (by an earlier run, or by a twin in this one) with that job's record; each
other image becomes a `job.Job` that `job.Runner` submits, waits for (`poll`), moves or
resubmits, and concludes; it returns an `Ending` (the record) and never calls back here.
`flow.Flow` keeps the number of jobs out under the concurrency target and the image data in
memory under the budget, and makes the request bodies. `endpoints.Endpoints` holds the primary
and fallback endpoints, the live jobs, cancel and failover; `recorder.Recorder` takes every
record (journal, progress, spool, stats, guards), says when the run must stop, and writes
job_metrics.json. The vocabularies (statuses, poll outcomes, error kinds, columns) are defined
once, in `states`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpq.api import RunPodClient, post_json
from rpq.budget import map_large_blocks
from rpq.discovery import Discovered
from rpq.endpoints import Endpoints, build_callers
from rpq.errors import UsageError
from rpq.files import sweep_temp_files
from rpq.flow import Flow
from rpq.guards import Alerter, Guards, GuardSettings, HaltRule
from rpq.images import ImageFile, Skipped, no_image_found
from rpq.inputs import Inputs
from rpq.job import Ending, Job, Runner
from rpq.journal import JOURNAL_NAME, Entry, Journal
from rpq.metrics import JobRecord, load_metrics
from rpq.poll import Poller, StallDetector, Timing
from rpq.progress import Reporter, Tracker
from rpq.recorder import Recorder
from rpq.reuse import Reuse, failure
from rpq.runs import RUNS_NAME
from rpq.settings import BatchSettings
from rpq.states import Column, Kind
from rpq.storage import Bucket, BucketError
from rpq.template import RequestTemplate
from rpq.write import ResultWriter


@dataclass
class BatchResult:
    """What a finished (or stopped) batch did; the CLI turns it into output and exit code."""

    summary: dict[str, Any]
    interrupted: bool = False
    stop_reason: str | None = None
    orphans: int = 0
    skipped: int = 0  # done or failed in an earlier run
    twins: int = 0  # the same request as another image of this run: its result copied
    not_started: int = 0
    found: int | None = None  # images in the folder (None: the walk did not finish)

    @property
    def failed(self) -> int:
        return int(self.summary["stats"]["failed"])

    @property
    def records(self) -> list[JobRecord]:
        """Every job's record, read back from the metrics file."""
        return load_metrics(Path(self.summary["metrics"])).jobs


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


def fingerprint(template: RequestTemplate, settings: BatchSettings) -> str:
    """What makes two sends of one image the same request: part of its journal key."""
    return hashlib.sha256("|".join([template.fingerprint(), str(settings.max_side),
                                    str(settings.fmt), settings.endpoint.endpoint_id]).encode()
                          ).hexdigest()


def build_client(settings: BatchSettings) -> RunPodClient:
    ep = settings.endpoint
    return RunPodClient(ep.base_url, ep.endpoint_id, ep.api_key,
                        pool_size=settings.most_jobs_out + 8)


def build_poller(settings: BatchSettings, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> Poller:
    return Poller(StallDetector(settings.max_queue_time, clock), Timing(),
                  max_wait=settings.max_wait, mode=settings.poll_mode, clock=clock, sleep=sleep)


def build_writer(settings: BatchSettings, client: RunPodClient) -> ResultWriter:
    writer = ResultWriter(settings.out, client, output_key=settings.output_key,
                          save_json=settings.save_json,
                          download_max_bytes=settings.download_max_mb << 20)
    if settings.bucket_out:
        writer.store = Bucket.at(settings.bucket_out, pool=settings.most_jobs_out + 8)
    return writer


def build_guards(settings: BatchSettings, tracker: Tracker,
                 clock: Callable[[], float]) -> Guards:
    alerter = Alerter(settings.alert_webhook, post_json, clock,
                      on_error=tracker.error) if settings.alert_webhook else None
    return Guards(GuardSettings(
        alert_url=settings.alert_webhook, alert_queue_time=settings.alert_queue_time,
        alert_process_time=settings.alert_process_time,
        alert_failure_rate=settings.alert_failure_rate, cost_per_hour=settings.cost_per_hour,
        budget=settings.budget,
        halt=HaltRule.parse(settings.halt_on_fail) if settings.halt_on_fail else None,
    ), alerter)


def set_aside(journal: Path) -> None:
    """--fresh: the journal is moved aside (to .jsonl.old), earlier runs' summaries dropped."""
    if journal.exists():
        os.replace(journal, journal.with_suffix(".jsonl.old"))
        (journal.parent / RUNS_NAME).unlink(missing_ok=True)


def title_of(settings: BatchSettings) -> str:
    where = settings.bucket_in or str(settings.root)
    return f"rpq batch {where} → {settings.endpoint.endpoint_id or 'built-in endpoint'}"


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
        health_every: float | None = None,
    ) -> None:
        self.s = settings
        self.reporter = reporter
        self.wall = wall
        self.client = client or build_client(settings)
        self.template = build_template(settings)
        self.inputs = Inputs(settings, self.template)
        if self.template.warning:
            reporter.message(f"warning: {self.template.warning}")
        self.policy = policy_of(settings)
        self.fingerprint = fingerprint(self.template, settings)
        self.tracker = Tracker(clock)
        # Read when the run starts, under the output folder's lock (or by a dry run); --fresh
        # moves the old one aside then, a dry run leaves it be.
        self.journal = Journal(settings.out / JOURNAL_NAME, load=not settings.fresh,
                               room=True, opened=False)
        self.guards = build_guards(settings, self.tracker, clock)
        self.writer = build_writer(settings, self.client)
        self.recorder = Recorder(settings, self.journal, self.tracker, reporter, self.guards,
                                 store=self.writer.store, wall=wall)
        self.endpoints = Endpoints(
            build_callers(settings, self.client, clock=clock, sleep=sleep,
                          on_retry=self._on_retry),
            self.journal, say=reporter.message, wall=wall)
        self._stop = threading.Event()  # submit nothing new (Ctrl-C, halt, budget)
        self._halt = threading.Event()  # second Ctrl-C: cancel everything in flight
        self.flow = Flow(settings, self.template, self.tracker, self.endpoints,
                         policy=self.policy, prepare=self.inputs.prepare,
                         stopping=self._stop.is_set, clock=clock, health_every=health_every)
        self.runner = Runner(self.endpoints, build_poller(settings, clock, sleep), self.writer,
                             self.journal, self.tracker,
                             job_retries=settings.job_retries, budget=self.flow.budget,
                             stopping=self._stop.is_set, halted=self._halt.is_set,
                             pause=self._stop.wait, clock=clock, wall=wall)
        self._lock = threading.Lock()
        self.interrupted = False
        self.stop_reason: str | None = None
        self.reuse = Reuse(self.journal, self.writer, self.recorder,
                           retry_failed=settings.retry_failed, wall=wall)
        self.tracker.title = title_of(settings)

    # -- entry points -----------------------------------------------------------------------

    def check_input(self) -> None:
        """Before the endpoint is asked anything: an input with no image at all (an empty
        folder, filters that match nothing, only files that are not images) is an error. A
        shard that holds none of the images is not: other shards have them."""
        strays = self.inputs.not_images_only()
        if strays is None:
            return
        where = "the files listed with --files-from" if self.s.files_from else \
            self.s.bucket_in or str(self.s.root)
        raise UsageError(no_image_found(where, self.s.include, self.s.exclude, strays))

    def check_endpoint(self) -> dict[str, Any]:
        """One /health before reading any image: 401/404/unreachable end the run here."""
        for bucket in (self.inputs.bucket, self.writer.store):
            if bucket is not None:
                bucket.check()  # a missing bucket or refused key ends the run before any job
        health = self.endpoints.check()
        self.flow.health(health)
        return health

    def dry_run(self) -> dict[str, Any]:
        """What would be sent; sends nothing."""
        self.journal.open()
        return {"endpoint": self.client.url,
                **self.inputs.dry_run(self.journal, self.fingerprint, self.policy)}

    def run(self) -> BatchResult:
        """Send the batch. The caller holds the output folder's lock (`lock.OutputLock`):
        nothing of the folder, the journal first, is read or written before this."""
        map_large_blocks()  # freed image buffers go back to the system: RSS follows the budget
        self.s.out.mkdir(parents=True, exist_ok=True)
        self.journal.open()
        if self.s.fresh:
            set_aside(self.journal.path)
        started_wall = self.wall()
        sweep_temp_files(self.s.out)  # half-written files of a run that was killed
        self.writer.earlier_owner = self.journal.output_owner
        orphans = len(self.journal.orphans())
        # One walk (or listing) in a thread, ahead of the work: the total is known when it
        # ends, and the first jobs go out meanwhile.
        found = Discovered(self._images(), self._counted)
        self.reporter.start(self.tracker)
        done = threading.Event()
        threading.Thread(target=self.endpoints.watch_health,
                         args=(done, self.flow.health, self.flow.health_every),
                         name="rpq-health", daemon=True).start()
        with self.recorder.spooling():
            try:
                self._dispatch(found)
            finally:
                done.set()
                self.reporter.stop()
                self.endpoints.settle()  # the cancels of a stop are journaled before it closes
                self.journal.close()
            summary = self.recorder.finish(
                started_wall, interrupted=self.interrupted, stop_reason=self.stop_reason,
                orphans=orphans, endpoints=self.endpoints)
        return BatchResult(summary, interrupted=self.interrupted,
                           stop_reason=self.stop_reason, orphans=orphans,
                           skipped=self.tracker.counts[Column.SKIPPED] - self.recorder.twins,
                           twins=self.recorder.twins, not_started=self.recorder.not_started,
                           found=self.tracker.total)

    def interrupt(self) -> int:
        """Ctrl-C: first stop submitting and cancel queued jobs; then cancel everything."""
        self.interrupted = True
        if not self._stop.is_set():
            self._wind_down(None)
            return 1
        self._halt.set()
        targets = self.endpoints.live()
        self.reporter.message(f"interrupted again: cancelling all {len(targets)} job(s) "
                              "in flight.")
        self.endpoints.cancel_later(targets, self.stop_reason or "interrupted", queued_only=False)
        return 2

    def _wind_down(self, reason: str | None) -> None:
        """Submit nothing new and cancel what is still queued; running jobs may finish."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            self.stop_reason = reason
            targets = self.endpoints.live(queued_only=True)
        why = reason or "interrupted"
        extra = "" if reason else " Ctrl-C again cancels all."
        self.reporter.message(f"{why}: submitting nothing new and cancelling queued jobs; "
                              f"running ones may finish.{extra}")
        self.flow.wake()  # jobs waiting for memory or for the gate give up now
        self.endpoints.cancel_later(targets, why, queued_only=True)

    # -- dispatch ---------------------------------------------------------------------------

    def _images(self) -> Iterator[ImageFile | Skipped]:
        """The input without the files that are not images, which are listed apart as the
        walk meets them: they are no job, and not in the total."""
        for item in self.inputs:
            if isinstance(item, Skipped) and item.not_image:
                self.recorder.not_an_image(item)
            else:
                yield item

    def _counted(self, count: int, done: bool) -> None:
        if done:
            self.tracker.total = count

    def _dispatch(self, found: Iterable[ImageFile | Skipped]) -> None:
        with self.flow.threads() as launch:
            images = iter(found)
            for item in images:
                if self._stop.is_set() or not launch(self._guard, self._one, item):
                    # Stopped: what was not launched is not sent either.
                    for left in itertools.chain((item,), images):
                        if isinstance(left, ImageFile):
                            self.recorder.not_sent()
                    break
            # Jobs the journal shows in flight whose file is gone from the folder.
            for entry in self.journal.in_flight():
                if self._stop.is_set():
                    break
                if not self.reuse.seen(entry.key):
                    launch(self._guard, self._resume_orphan, entry)

    def _guard(self, fn: Callable[..., None], item: Any) -> None:
        """A job's unexpected exception becomes that job's failure, never the batch's."""
        rel = getattr(item, "rel", "?")
        try:
            fn(item)
        except OSError as exc:
            # Writing the journal failed (a full disk, a folder made read-only).
            self._record(None, failure(rel, f"could not write to {self.s.out}: "
                                       f"{exc.strerror or exc}", Kind.NO_OUTPUT, self.wall()))
        except Exception as exc:
            self._record(None, failure(rel, f"internal error: {type(exc).__name__}: {exc}",
                                       Kind.HTTP_ERROR, self.wall()))

    # -- one image: deduplicate, reuse, or hand it to the runner ------------------------------

    def _one(self, item: ImageFile | Skipped) -> None:
        if isinstance(item, Skipped):
            self._record(None, self._bad_input(item.rel, item.reason))
            return
        if self.inputs.needs_fetch(item):
            try:
                with self.inputs.local(item) as local:
                    self._one(local)
            except BucketError as exc:
                self._record(None, self._bad_input(item.rel, f"cannot read it: {exc}"))
            return
        try:
            digest = self.inputs.digest(item)
        except OSError as exc:
            self._record(None, self._bad_input(item.rel, f"unreadable: {exc.strerror}"))
            return
        # What identifies the request sent: content, settings, and any per-file values.
        key = self.inputs.key(item.rel, digest, self.fingerprint)
        if not self.reuse.claim(item.rel, key):
            return  # a twin: it has the first image's record
        try:
            self._process(item, key)
        finally:
            self.reuse.release(key)

    def _process(self, item: ImageFile, key: str) -> None:
        entry = self.journal.get(key)
        if self.reuse.earlier(item.rel, key, entry):
            return
        job = Job(item.rel, key, entry.attempts if entry else 0)
        if entry is not None and entry.in_flight:
            self._resume(job, entry)  # the endpoint has it already: never submit it again
            return
        if self._stop.is_set():
            self.recorder.not_sent()
            return
        self._ended(job, self.runner.send(job, self.flow.bodies.of(item)))

    def _resume_orphan(self, entry: Entry) -> None:
        self._resume(Job(entry.rel, entry.key, entry.attempts or 1), entry)

    def _resume(self, job: Job, entry: Entry) -> None:
        assert entry.job_id is not None
        self._ended(job, self.runner.resume(job, entry.job_id,
                                            entry.endpoint or self.endpoints.primary))

    # -- records ----------------------------------------------------------------------------

    def _ended(self, job: Job, ending: Ending) -> None:
        if ending.record is None:
            self.recorder.not_sent()
            return
        self.flow.started(ending.record.queue_time)
        # A result that could not be saved stays in flight in the journal: the endpoint
        # still has it, and a rerun fetches it instead of paying for the image again.
        self._record(None if ending.refetch else job.key, ending.record)

    def _bad_input(self, rel: str, reason: str) -> JobRecord:
        return failure(rel, reason, Kind.BAD_INPUT, self.wall(), attempts=0)

    def _record(self, key: str | None, record: JobRecord) -> None:
        reason = self.recorder.record(key, record)
        if reason:
            self._wind_down(reason)

    def _on_retry(self, op: str, exc: BaseException, delay: float) -> None:
        self.recorder.on_retry(op, exc, delay)
        self.flow.retried(exc)


__all__ = ["Batch", "BatchResult"]
