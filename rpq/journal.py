"""Crash-safe record of every job of a batch, so a rerun resumes instead of redoing work."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpq.errors import UsageError
from rpq.journal_index import JournalIndex, Mark
from rpq.room import FULL_ERRNOS, Room
from rpq.states import Stage, Status

JOURNAL_NAME = ".rpq-journal.jsonl"
#: Entries held in memory before they go to the index. A journal with fewer keys never
#: makes one: it is read whole, as fast as an index would be.
SAVE_EVERY = 256


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
    state: str = Stage.NEW  # one of Stage
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
        return self.state == Stage.SUBMITTED and self.job_id is not None

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one well-formed journal line about this key into the entry."""
        entry = self
        kind = event.get("event")
        if isinstance(event.get("rel"), str):
            entry.rel = event["rel"]
        if kind == "intent":
            entry.state = Stage.INTENT
            entry.job_id = None
            entry.attempts = int(event.get("attempt", entry.attempts + 1))
        elif kind == "submitted":
            entry.state = Stage.SUBMITTED
            entry.job_id = event.get("job_id")
            endpoint = event.get("endpoint")
            entry.endpoint = sys.intern(endpoint) if isinstance(endpoint, str) else None
        elif kind == "cancel":
            if entry.cancel_notes is None:
                entry.cancel_notes = []
            entry.cancel_notes.append({k: event.get(k) for k in ("job_id", "answer", "reason")})
            answer = event.get("answer")
            if (entry.state == Stage.SUBMITTED and entry.job_id == event.get("job_id")
                    and isinstance(answer, dict) and answer.get("status") == Status.CANCELLED):
                entry.state = Stage.CANCELLED  # gone from the endpoint: a rerun sends it again
        elif kind == "lost":
            # The endpoint no longer has the job (expired, cancelled, or it restarted): a rerun
            # sends it again. Not an orphan: its submit was answered.
            entry.state = Stage.CANCELLED
            entry.job_id = None
        elif kind == "end":
            record = event.get("record")
            if isinstance(record, dict):
                entry.record_text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
                status = record.get("status")
            else:
                entry.record_text, status = None, None
            entry.state = Stage.DONE if status == Status.COMPLETED else Stage.FAILED


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
    whole lines plus at most one torn last line, which the reader skips. `close()` adds fsync
    for power loss, at the end of a run.

    The file is the record; what it says about each image (its folded Entry) is kept in an
    index next to it (journal_index), so memory holds only the keys touched since the index
    was last saved (at most SAVE_EVERY), and a resume reads only the lines written after that
    save. Every line of the file, whoever wrote it, is folded in file order. Where SQLite
    cannot keep an index (a read-only folder), every entry is held in memory instead.
    """

    def __init__(self, path: Path, *, load: bool = True, room: bool = False,
                 opened: bool = True) -> None:
        """`load=False` starts empty whatever the file holds (--fresh moves it aside later);
        `room=True` holds disk space for the lines of paid jobs (one batch per folder);
        `opened=False` reads nothing, not even the index, until `open()`: a batch opens its
        journal once it holds the output folder's lock, so a second run never touches it."""
        self.path = path
        self._room = Room(path.with_name(path.name.removesuffix(".jsonl") + ".room")) \
            if room else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._recent: dict[str, Entry] = {}  # keys touched since the index was saved
        self._index: JournalIndex | None = None
        self._no_index = False  # SQLite could not make one here: keep everything in memory
        self._applied = 0  # bytes of the file folded in: whole lines only
        self._torn = 0  # whole lines that could not be read
        self._loose_tail = False  # an unreadable last line with no newline yet
        self._reset = not load  # the index describes another file: replace it at the next save
        self._opened = False
        self._owners: dict[str, str] | None = None
        self.entries = EntryView(self)
        if opened:
            self.open()

    def open(self) -> None:
        """Read the index and the lines written after it; only the first call does anything."""
        if self._opened:
            return
        self._opened = True
        if index_path(self.path).exists():
            self._index = JournalIndex.open(index_path(self.path))
        if self._reset:
            return
        if self.path.exists():
            self._load()
        elif self._index is not None and self._index.mark().offset:
            self._reset = True  # the file it indexed was moved aside or deleted

    @property
    def torn_lines(self) -> int:
        return self._torn + self._loose_tail

    # -- reading ----------------------------------------------------------------------------

    def _load(self) -> None:
        if self._index is not None:
            mark = self._index.mark()
            if mark.offset and self._same_file(mark):
                self._applied, self._torn = mark.offset, mark.torn
            elif mark.offset:
                self._reset = True
        with self._lock:
            self._fold(self._applied, None)
            self._save()

    def _same_file(self, mark: Mark) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        # Not the inode: a folder copied or restored elsewhere is still the same journal.
        return mark.offset <= st.st_size and _digest_at(self.path, mark.offset) == mark.digest

    def _fold(self, start: int, stop: int | None) -> None:
        """Fold the lines from byte `start` (to `stop`, else the end) into the entries."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(start)
                pos = start
                for raw in fh:
                    if stop is not None and pos >= stop:
                        break
                    event = _parse(raw)
                    if not raw.endswith(b"\n") and event is None:
                        self._loose_tail = True  # torn by a crash; a rerun ends it, then counts it
                        return
                    pos += len(raw)
                    if event is not None:
                        self._apply(event)
                    elif raw.strip():
                        self._torn += 1
                    self._applied = pos
                    self._save_when_full()
        except OSError as exc:
            raise UsageError(
                f"cannot read the journal {self.path}: {exc.strerror}. "
                "Fix its permissions, or pass --fresh to start over."
            ) from None

    def _skip_to_index(self) -> None:
        """Another process saved the index past our place in the file: its rows already hold
        the lines in between, so take them for the keys those lines touch, and go on from
        there (folding them again would count a cancel twice)."""
        mark = self._index.mark() if self._index is not None and not self._reset else None
        if mark is None or mark.offset <= self._applied:
            return
        with self.path.open("rb") as fh:
            fh.seek(self._applied)
            between = fh.read(mark.offset - self._applied)
        for raw in between.splitlines():
            event = _parse(raw)
            if event is not None:
                self._recent.pop(event["key"], None)
        self._applied, self._torn = mark.offset, mark.torn

    def _touch(self, key: str) -> Entry:
        entry = self._recent.get(key)
        if entry is None:
            entry = self._indexed(key) or Entry(key)
            self._recent[key] = entry
        return entry

    def _indexed(self, key: str) -> Entry | None:
        if self._index is None or self._reset:
            return None
        return self._index.get(key)

    def _save_when_full(self) -> None:
        if len(self._recent) < SAVE_EVERY or self._no_index:
            return
        if self._index is None:
            self._index = JournalIndex.open(index_path(self.path))
            self._no_index = self._index is None
        self._save()

    def _save(self) -> None:
        """Move the recent entries into the index, with how far into the file they go."""
        if self._index is None or not (self._recent or self._reset):
            return
        try:
            inode = os.fstat(self._fd).st_ino if self._fd is not None else \
                os.stat(self.path).st_ino
        except OSError:
            inode = 0
        mark = Mark(self._applied, inode, _digest_at(self.path, self._applied), self._torn)
        try:
            saved = self._index.save(self._recent.values(), mark, reset=self._reset)
        except sqlite3.Error:
            saved = False  # busy or full: they stay in memory and go with the next save
        if saved:
            self._recent.clear()
            self._reset = False

    def _apply(self, event: dict[str, Any]) -> None:
        self._touch(event["key"]).apply(event)

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
            self._append(line, paid=event["event"] != "intent")
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            if end - len(line) > self._applied:
                # Lines written since our last one (rpq cancel, or the newline that ended a
                # torn line): fold them first, in file order.
                self._skip_to_index()
                self._fold(self._applied, end - len(line))
                self._loose_tail = False
            self._apply(event)
            self._applied = end
            self._save_when_full()

    def _append(self, line: bytes, *, paid: bool) -> None:
        """Write the whole line or none of it. A full disk refuses an intent (nothing is
        sent) unless the room can be held; a line about a paid job takes from the room."""
        assert self._fd is not None
        if not paid and self._room is not None:
            self._room.hold()
        while True:
            try:
                written = os.write(self._fd, line)
                if written == len(line):
                    return
                error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            except OSError as exc:
                written, error = 0, exc
            if written:  # a torn line would spoil the next one appended to it: take it back
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR) - written)
            if error.errno not in FULL_ERRNOS or not paid or self._room is None \
                    or not self._room.give():
                raise error

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
        """Flush the file and save the index; the journal can still be read afterwards."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
            self._save()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._room is not None:
                self._room.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- questions --------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        with self._lock:
            return self._recent.get(key) or self._indexed(key)

    def in_flight(self) -> list[Entry]:
        """Jobs the endpoint accepted and whose end this journal never saw."""
        return [e for e in self._in_state(Stage.SUBMITTED) if e.in_flight]

    def orphans(self) -> list[Entry]:
        """Intents with no job id: the process died between sending /run and its answer."""
        return self._in_state(Stage.INTENT)

    def _in_state(self, state: str) -> list[Entry]:
        with self._lock:
            found = [e for e in self._recent.values() if e.state == state]
            if self._index is not None and not self._reset:
                found += [e for e in self._index.live(state) if e.key not in self._recent]
        return found

    def output_owner(self, name: str) -> str | None:
        """The input whose finished job wrote output `name` in an earlier run, if any."""
        with self._lock:
            if self._index is not None and not self._reset:
                owner = self._index.output_owner(name)
                if owner is not None:
                    return owner
            if self._owners is None:  # held in memory: look once, as the run starts
                self._owners = {}
                for e in self._recent.values():
                    record = e.record if e.state == Stage.DONE else None
                    for output in (record or {}).get("outputs") or []:
                        self._owners.setdefault(output, e.rel)
            return self._owners.get(name)

    def _page(self, after: str, size: int) -> list[Entry]:
        with self._lock:
            if self._index is None or self._reset:
                return []
            return self._index.page(after, size)

    def _count(self) -> int:
        with self._lock:
            if self._index is None or self._reset:
                return len(self._recent)
            extra = sum(1 for key in self._recent if not self._index.has(key))
            return self._index.count() + extra


class EntryView:
    """`journal.entries`: every entry, read from the index a page at a time, never all held."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def __len__(self) -> int:
        return self._journal._count()

    def __getitem__(self, key: str) -> Entry:
        entry = self._journal.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._journal.get(key) is not None

    def get(self, key: str) -> Entry | None:
        return self._journal.get(key)

    def values(self) -> Iterator[Entry]:
        journal = self._journal
        with journal._lock:
            recent = list(journal._recent.values())
        seen = {e.key for e in recent}
        yield from recent
        after = ""
        while page := journal._page(after, 500):
            yield from (e for e in page if e.key not in seen)
            after = page[-1].key

    def items(self) -> Iterator[tuple[str, Entry]]:
        return ((e.key, e) for e in self.values())

    def keys(self) -> Iterator[str]:
        return (e.key for e in self.values())

    def __iter__(self) -> Iterator[str]:
        return self.keys()


def index_path(journal: Path) -> Path:
    """Where the index of a journal lives: `.rpq-journal.index` beside `.rpq-journal.jsonl`."""
    return journal.with_name(journal.name.removesuffix(".jsonl") + ".index")


def _digest_at(path: Path, offset: int) -> str:
    """A fingerprint of the file's first line(s) and of the bytes just before `offset`:
    tells another or an edited journal from the one indexed."""
    start = max(0, offset - 256)
    try:
        with path.open("rb") as fh:
            head = fh.read(min(offset, 1024))
            fh.seek(start)
            return hashlib.sha256(head + fh.read(offset - start)).hexdigest()[:32]
    except OSError:
        return ""


def _parse(raw: bytes) -> dict[str, Any] | None:
    """One journal line as an event, or None when it is torn, damaged or not rpq's."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) and _well_formed(event) else None
