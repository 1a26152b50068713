"""Crash-safe record of every job of a batch, so a rerun resumes instead of redoing work."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpq.errors import UsageError

JOURNAL_NAME = ".rpq-journal.jsonl"


def job_key(digest: str, settings_fingerprint: str) -> str:
    """The journal key: image content plus the request settings, not the file name."""
    return hashlib.sha256(f"{digest}:{settings_fingerprint}".encode()).hexdigest()[:32]


@dataclass(slots=True)
class Entry:
    """What the journal knows about one key, folded from its lines in order.

    A batch holds one per image, so it is kept small: slots, the end record as compact JSON
    text, no list until a cancel is recorded.
    """

    key: str
    rel: str = ""
    state: str = "new"  # intent | submitted | cancelled | done | failed
    job_id: str | None = None
    endpoint: str | None = None
    attempts: int = 0
    record_text: str | None = field(default=None, repr=False)
    cancel_notes: list[dict[str, Any]] | None = None

    @property
    def cancels(self) -> list[dict[str, Any]]:
        """Every cancel recorded for this image: job id, the endpoint's answer, the reason."""
        return self.cancel_notes or []

    @property
    def record(self) -> dict[str, Any] | None:
        """The job's end record as it was written, or None before its end."""
        if self.record_text is None:
            return None
        record: dict[str, Any] = json.loads(self.record_text)
        return record

    @property
    def in_flight(self) -> bool:
        return self.state == "submitted" and self.job_id is not None


def _is_text(value: object) -> bool:
    return isinstance(value, str)


def _well_formed(event: dict[str, Any]) -> bool:
    """Whether a line has the fields its event needs, of the types rpq writes. A damaged or
    hand-edited line that does not is skipped like a torn one, never a crash at startup."""
    if not _is_text(event.get("key")) or not _is_text(event.get("rel", "")):
        return False
    kind = event.get("event")
    if kind == "intent":
        attempt = event.get("attempt", 0)
        return isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 0
    if kind == "submitted":
        return (_is_text(event.get("job_id")) and bool(event["job_id"])
                and all(event.get(k) is None or _is_text(event[k])
                        for k in ("endpoint", "base_url")))
    if kind == "end":
        record = event.get("record")
        if not isinstance(record, dict):
            return False
        outputs = record.get("outputs") or []
        return isinstance(outputs, list) and all(_is_text(o) for o in outputs)
    return True  # cancel and lost only add notes; unknown events are ignored


class Journal:
    """Append-only JSON lines, one write() per event; safe against a crash at any moment.

    Each line is written with a single os.write on an O_APPEND descriptor, so a SIGKILL leaves
    whole lines plus at most one torn last line, which the reader skips. `sync()` adds fsync
    for power loss; it is called at the end of a run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.entries: dict[str, Entry] = {}
        self.torn_lines = 0
        if path.exists():
            self._load()

    # -- reading ----------------------------------------------------------------------------

    def _load(self) -> None:
        for event in self._events():
            self._apply(event)

    def _events(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                for raw in fh:
                    try:
                        event = json.loads(raw)
                    except (ValueError, RecursionError):
                        self.torn_lines += 1
                        continue
                    if isinstance(event, dict) and _well_formed(event):
                        yield event
                    else:
                        self.torn_lines += 1
        except OSError as exc:
            raise UsageError(
                f"cannot read the journal {self.path}: {exc.strerror}. "
                "Fix its permissions, or pass --fresh to start over."
            ) from None

    def _apply(self, event: dict[str, Any]) -> None:
        key = event["key"]
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(key)
        kind = event.get("event")
        if isinstance(event.get("rel"), str):
            entry.rel = event["rel"]
        if kind == "intent":
            entry.state = "intent"
            entry.job_id = None
            entry.attempts = int(event.get("attempt", entry.attempts + 1))
        elif kind == "submitted":
            entry.state = "submitted"
            entry.job_id = event.get("job_id")
            endpoint = event.get("endpoint")
            entry.endpoint = sys.intern(endpoint) if isinstance(endpoint, str) else None
        elif kind == "cancel":
            if entry.cancel_notes is None:
                entry.cancel_notes = []
            entry.cancel_notes.append({k: event.get(k) for k in ("job_id", "answer", "reason")})
            answer = event.get("answer")
            if (entry.state == "submitted" and entry.job_id == event.get("job_id")
                    and isinstance(answer, dict) and answer.get("status") == "CANCELLED"):
                entry.state = "cancelled"  # gone from the endpoint: a rerun sends it again
        elif kind == "lost":
            # The endpoint no longer has the job (expired, cancelled, or it restarted): a rerun
            # sends it again. Not an orphan: its submit was answered.
            entry.state = "cancelled"
            entry.job_id = None
        elif kind == "end":
            record = event.get("record")
            if isinstance(record, dict):
                entry.record_text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
                status = record.get("status")
            else:
                entry.record_text, status = None, None
            entry.state = "done" if status == "COMPLETED" else "failed"

    # -- writing ----------------------------------------------------------------------------

    def _write(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", round(time.time(), 3))
        line = (json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                size = os.fstat(self._fd).st_size
                if size and os.pread(self._fd, 1, size - 1) != b"\n":
                    os.write(self._fd, b"\n")  # end a line torn by a crash, keep ours whole
            os.write(self._fd, line)
            self._apply(event)

    def intent(self, key: str, rel: str, attempt: int) -> None:
        """Before a /run is sent: a crash after this line and before `submitted` is an orphan."""
        self._write({"event": "intent", "key": key, "rel": rel, "attempt": attempt})

    def submitted(self, key: str, job_id: str, endpoint: str, base_url: str) -> None:
        self._write({"event": "submitted", "key": key, "job_id": job_id,
                     "endpoint": endpoint, "base_url": base_url})

    def cancelled(self, key: str, job_id: str, answer: object, reason: str) -> None:
        self._write({"event": "cancel", "key": key, "job_id": job_id,
                     "answer": answer, "reason": reason})

    def lost(self, key: str, job_id: str, reason: str) -> None:
        """The endpoint no longer knows the job (expired): it may be submitted again."""
        self._write({"event": "lost", "key": key, "job_id": job_id, "reason": reason})

    def end(self, key: str, record: dict[str, Any]) -> None:
        self._write({"event": "end", "key": key, "rel": record.get("input", ""), "record": record})

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- questions --------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def in_flight(self) -> list[Entry]:
        """Jobs the endpoint accepted and whose end this journal never saw."""
        return [e for e in self.entries.values() if e.in_flight]

    def orphans(self) -> list[Entry]:
        """Intents with no job id: the process died between sending /run and its answer."""
        return [e for e in self.entries.values() if e.state == "intent"]
