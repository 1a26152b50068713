"""Where finished jobs go: journal, progress, spool, stats and guards; then job_metrics.json."""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from rpq import __version__
from rpq.endpoints import Endpoints
from rpq.errors import RpqError
from rpq.guards import Guards
from rpq.images import NotImages, Skipped
from rpq.journal import Journal
from rpq.metrics import JobRecord, RunStats, now_iso, write_metrics
from rpq.progress import Reporter, Tracker, describe_not_an_image
from rpq.runs import RUNS_NAME, RunHistory
from rpq.settings import BatchSettings
from rpq.spill import SpillMap
from rpq.states import Column, Kind, column_of
from rpq.storage import Bucket


class Recorder:
    """Takes each job's record once and answers whether the run should stop.

    Finished records go to a temporary file, not a list: memory stays flat in the number of
    images; job_metrics.json is streamed from it at the end. Use it inside `spooling()`.
    """

    def __init__(self, settings: BatchSettings, journal: Journal, tracker: Tracker,
                 reporter: Reporter, guards: Guards, *, store: Bucket | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.store = store  # the output bucket, which gets job_metrics.json too
        self.journal = journal
        self.tracker = tracker
        self.reporter = reporter
        self.guards = guards
        self.wall = wall
        self.stats = RunStats()
        self.not_started = 0
        self.twins = 0  # images that sent the same request as another of this run
        self.run_retries = 0
        self.not_images = NotImages()
        self._lock = threading.Lock()
        self._spool: IO[bytes] | None = None

    @contextlib.contextmanager
    def spooling(self) -> Iterator[None]:
        with tempfile.TemporaryFile() as spool:
            self._spool = spool
            try:
                yield
            finally:
                self._spool = None

    def record(self, key: str | None, record: JobRecord) -> str | None:
        """A job's end, journalled under `key` when given; returns why to stop, if so."""
        if key is not None:
            if record.error_kind in (Kind.CANCELLED, Kind.EXPIRED) and record.job_id:
                # Cancelled (Ctrl-C, `rpq cancel`) or lost by the endpoint (expired, or it
                # restarted): not an outcome of the image; a rerun sends it again.
                self.journal.lost(key, record.job_id, record.error_kind)
            else:
                self.journal.end(key, record.to_dict())
        self.tracker.add(column_of(record.status))
        self._report(record)
        reason = self.guards.observe(record)
        self.tracker.spend = self.guards.spend
        return reason

    def reused(self, record: JobRecord, twin_of: str | None = None) -> None:
        """A result an earlier job (of this run: `twin_of`, or an earlier one) already gave."""
        self.tracker.add(Column.SKIPPED)
        if twin_of is not None:
            with self._lock:
                self.twins += 1
        self._report(record, count=False, twin_of=twin_of)

    def not_an_image(self, item: Skipped) -> None:
        """A file that is not an image (a README): listed apart, never a job or a failure."""
        self.not_images.add(item)
        self.reporter.message(describe_not_an_image(item.rel, item.reason))

    def not_sent(self) -> None:
        """An image left unsent because the run is stopping."""
        with self._lock:
            self.not_started += 1

    def on_retry(self, op: str, exc: BaseException, delay: float) -> None:
        if op == "run":
            with self._lock:
                self.run_retries += 1

    def _report(self, record: JobRecord, count: bool = True, twin_of: str | None = None) -> None:
        line = json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n"
        with self._lock:
            assert self._spool is not None, "record jobs inside spooling()"
            self._spool.write(line.encode())
            self.stats.add(record)
        if count:
            self.tracker.finished(record)
        self.reporter.job_done(record, skipped=not count, twin_of=twin_of)

    def _folder_jobs(self) -> Iterator[JobRecord]:
        """Every image the output folder knows: this run's records, then the journal's others.

        The names already given are kept on disk (SpillMap), as the run's keys are: a set of
        them would be the one thing at the end of a run that grows with the folder.
        """
        with contextlib.closing(SpillMap()) as names:
            for record in self._spooled():
                names.add(record.input)
                yield record
            for entry in self.journal.entries.values():
                saved = entry.record
                if saved is not None and names.add(str(saved.get("input"))):
                    yield JobRecord.from_dict(saved)

    def _spooled(self) -> Iterator[JobRecord]:
        assert self._spool is not None
        self._spool.seek(0)
        for line in self._spool:
            yield JobRecord.from_dict(json.loads(line))

    def finish(self, started_wall: float, *, interrupted: bool, stop_reason: str | None,
               orphans: int, endpoints: Endpoints) -> dict[str, Any]:
        """Write job_metrics.json and send the summary alert; returns the summary."""
        stats = self.stats.stats()
        run = self._run_block(started_wall, interrupted, stop_reason, orphans, endpoints)
        run["stats"] = stats
        path = self.s.metrics_path
        shown = str(path)
        unsaved: OSError | None = None
        try:
            history = RunHistory(self.s.out / RUNS_NAME)
            folder = RunStats()
            for record in self._folder_jobs():
                folder.add(record)
            write_metrics(path, self._folder_jobs(), run, stats=folder.stats(),
                          runs=history.read())
            history.append(run)
            if self.store is not None and self.s.metrics is None:
                self.store.upload("job_metrics.json", path, "application/json")
                shown = f"{self.store.where}job_metrics.json"
        except OSError as exc:  # a full disk, a folder made read-only
            unsaved = exc
        self.guards.summary(stats, interrupted, stop_reason)
        if self.guards.alerter is not None:
            self.guards.alerter.close()
        if unsaved is not None:
            raise RpqError(f"could not write {path}: {unsaved.strerror or unsaved}. The journal "
                           f"in {self.s.out} keeps what was done: make room (or fix the "
                           "permissions) and rerun the same command.")
        return {"stats": stats, "run": run, "metrics": shown,
                "out": self.s.bucket_out or str(self.s.out)}

    def _run_block(self, started_wall: float, interrupted: bool, stop_reason: str | None,
                   orphans: int, endpoints: Endpoints) -> dict[str, Any]:
        """The "run" block of job_metrics.json: what ran where, how it ended, with what."""
        requests = endpoints.requests_sent()
        primary = endpoints.primary
        spend = self.guards.spend
        return {
            "rpq_version": __version__,
            "start": now_iso(started_wall),
            "end": now_iso(self.wall()),
            "endpoint": primary,
            "base_url": self.s.endpoint.base_url or "(built-in local endpoint)",
            "interrupted": interrupted,
            "stop_reason": stop_reason,
            "not_started": self.not_started,
            "orphaned_submits": orphans,
            "run_request_retries": self.run_retries,
            "requests": requests[primary] if len(requests) == 1 else requests,
            "failovers": endpoints.failovers,
            "not_images": self.not_images.to_dict(),
            "estimated_cost": None if spend is None else round(spend, 6),
            "settings": self.s.public(),
        }
