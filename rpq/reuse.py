"""Images whose request was sent already, by an earlier run or by another image of this one."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rpq.errors import RpqError
from rpq.journal import Entry, Journal
from rpq.metrics import JobRecord, now_iso
from rpq.recorder import Recorder
from rpq.spill import SpillMap
from rpq.states import Kind, Stage, Status
from rpq.write import ResultWriter


def failure(rel: str, error: str, kind: str, wall: float, attempts: int = 1) -> JobRecord:
    """The record of an image that failed on this side, at `wall` (seconds since the epoch)."""
    return JobRecord(input=rel, status=Status.FAILED, error=error, error_kind=kind,
                     attempts=attempts, timestamp=now_iso(wall))


class Twins:
    """Images with the same content and settings: the first is sent, the others reuse it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}  # keys being worked on now
        self._seen = SpillMap()  # every key of this run: on disk, so memory stays flat

    def claim(self, key: str) -> bool:
        """True for the first image of a key; for a twin, False once the first has ended."""
        with self._lock:
            twin = self._running.get(key)
            new = self._seen.add(key)
            first = twin is None and new
            if first:
                self._running[key] = threading.Event()
        if not first and twin is not None:
            twin.wait()
        return first

    def release(self, key: str) -> None:
        with self._lock:
            self._running.pop(key).set()

    def seen(self, key: str) -> bool:
        return key in self._seen


class Reuse:
    """Gives an image the record of a job that already sent its request, instead of a job.

    An earlier run's job is reused when it is done and its outputs are still there, or when
    it failed (unless --retry-failed). A twin (an image of this run with the same journal key)
    waits for the first to end, then takes its record; either way a done job's outputs are
    copied under the image's own name.
    """

    def __init__(self, journal: Journal, writer: ResultWriter, recorder: Recorder, *,
                 retry_failed: bool, wall: Callable[[], float]) -> None:
        self.journal = journal
        self.writer = writer
        self.recorder = recorder
        self.retry_failed = retry_failed
        self.wall = wall
        self.twins = Twins()
        self._earlier: set[str] = set()  # keys answered from the journal, not sent in this run

    def earlier(self, rel: str, key: str, entry: Entry | None) -> bool:
        """True when the journal's `entry` for the image's key answers it: reused."""
        if entry is not None and entry.state == Stage.DONE and self._outputs_exist(entry):
            self._earlier.add(key)
            self._reuse(rel, key)
            return True
        if entry is not None and entry.state == Stage.FAILED and not self.retry_failed:
            self._earlier.add(key)
            record = JobRecord.from_dict(entry.record or {"status": Status.FAILED})
            record.input = rel
            self.recorder.reused(record)
            return True
        return False

    def claim(self, rel: str, key: str) -> bool:
        """True for the first image of a key: the caller sends it (or reuses an earlier
        run's job), then calls `release`. False for a twin, once the first has ended: it has
        the first's record, sent in this run or answered by an earlier one (its first file
        said which)."""
        if self.twins.claim(key):
            return True
        self._reuse(rel, key, in_this_run=key not in self._earlier)
        return False

    def release(self, key: str) -> None:
        self.twins.release(key)

    def seen(self, key: str) -> bool:
        """Whether an image of this run has the key."""
        return self.twins.seen(key)

    def _outputs_exist(self, entry: Entry) -> bool:
        outputs = (entry.record or {}).get("outputs") or []
        return bool(outputs) and all(self.writer.has(o) for o in outputs)

    def _reuse(self, rel: str, key: str, in_this_run: bool = False) -> None:
        """The same request as a job already done (in this run or an earlier one): reuse it."""
        entry = self.journal.get(key)
        saved = entry.record if entry is not None else None
        if entry is None or saved is None:
            return
        record = JobRecord.from_dict(saved)
        if entry.state == Stage.DONE and record.input != rel:
            try:
                record.outputs = self.writer.copy_outputs(record.outputs, rel)
            except (OSError, RpqError) as exc:
                record = failure(rel, f"could not copy the result of {record.input}: {exc}",
                                 Kind.NO_OUTPUT, self.wall())
        twin_of = record.input if in_this_run and record.input != rel else None
        record.input = rel  # a failure is reported under each copy's own name too
        self.recorder.reused(record, twin_of=twin_of)


__all__ = ["Reuse", "Twins", "failure"]
