"""The journal's index: each image's folded state in SQLite, so a resume reads what it needs."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpq.states import Stage

if TYPE_CHECKING:
    from rpq.journal import Entry

_SCHEMA = 1
_COLUMNS = "key, rel, state, job_id, endpoint, attempts, record, cancels"


@dataclass(frozen=True)
class Mark:
    """Where the index stands in the journal file: events before `offset` are folded in.

    `digest` (of the file's start and of the bytes just before `offset`) tells whether the
    file is still the one that was indexed: a journal moved aside (--fresh), cut short or
    edited is not. `inode` is kept for diagnosis only: a copied folder is the same journal.
    """

    offset: int = 0
    inode: int = 0
    digest: str = ""
    torn: int = 0


class JournalIndex:
    """One SQLite file next to the journal, holding the state of every key as of a `Mark`.

    It is a cache of the journal file, never the record: the file is written first, and an
    index that is missing, damaged or behind is rebuilt or caught up from it. Not thread-safe;
    the Journal serialises calls.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        weakref.finalize(self, conn.close)

    @classmethod
    def open(cls, path: Path) -> JournalIndex | None:
        """The index at `path`, created if absent; None where SQLite cannot keep one."""
        try:
            if not path.exists():
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # private, as the journal
            conn = sqlite3.connect(path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error):
            return None
        try:
            # A lost index costs a rebuild from the journal, never a result: skip the fsyncs.
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA journal_mode=WAL")
            cls._create(conn)
        except sqlite3.Error:
            conn.close()
            with contextlib.suppress(OSError):
                path.unlink()  # damaged: the next run builds a new one
            return None
        return cls(conn)

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA):
            raise sqlite3.DatabaseError(f"index schema {version}")
        conn.executescript("""
            CREATE TABLE IF NOT EXISTS entries (
                key TEXT PRIMARY KEY, rel TEXT NOT NULL, state TEXT NOT NULL, job_id TEXT,
                endpoint TEXT, attempts INTEGER NOT NULL, record TEXT, cancels TEXT
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS live ON entries(state)
                WHERE state IN ('intent', 'submitted');
            CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY, rel TEXT NOT NULL)
                WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS mark (
                one INTEGER PRIMARY KEY CHECK (one = 1), offset INTEGER, inode INTEGER,
                digest TEXT, torn INTEGER
            );
        """)
        conn.execute(f"PRAGMA user_version={_SCHEMA}")

    # -- reading ----------------------------------------------------------------------------

    def mark(self) -> Mark:
        row = self._conn.execute("SELECT offset, inode, digest, torn FROM mark").fetchone()
        return Mark(*row) if row else Mark()

    def get(self, key: str) -> Entry | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?",
                                 (key,)).fetchone()
        return _entry(row) if row else None

    def live(self, state: str) -> list[Entry]:
        """Entries in `state` ('intent' or 'submitted'): few, whatever the journal's size."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE state = ?", (state,))
        return [_entry(row) for row in rows]

    def page(self, after: str, size: int) -> list[Entry]:
        """Up to `size` entries with keys after `after`, in key order."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE key > ? ORDER BY key LIMIT ?", (after, size))
        return [_entry(row) for row in rows]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def has(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() \
            is not None

    def output_owner(self, name: str) -> str | None:
        """The input whose finished job wrote output `name`, first one first."""
        row = self._conn.execute("SELECT rel FROM outputs WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    # -- writing ----------------------------------------------------------------------------

    def save(self, entries: Iterable[Entry], mark: Mark, *, reset: bool = False) -> bool:
        """Store `entries` and `mark` in one transaction; False (nothing stored) when another
        process has already indexed further into the journal than `mark`."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if reset:
                conn.execute("DELETE FROM entries")
                conn.execute("DELETE FROM outputs")
            elif self.mark().offset > mark.offset:
                conn.execute("ROLLBACK")
                return False
            rows = [_row(e) for e in entries]
            conn.executemany(f"INSERT OR REPLACE INTO entries ({_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("INSERT OR IGNORE INTO outputs (name, rel) VALUES (?, ?)",
                             [(name, e.rel) for e in entries for name in _outputs(e)])
            conn.execute("INSERT OR REPLACE INTO mark (one, offset, inode, digest, torn) "
                         "VALUES (1, ?, ?, ?, ?)", (mark.offset, mark.inode, mark.digest,
                                                    mark.torn))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return True

    def close(self) -> None:
        self._conn.close()


def _row(e: Entry) -> tuple[Any, ...]:
    cancels = json.dumps(e.cancel_notes, separators=(",", ":"), ensure_ascii=False) \
        if e.cancel_notes else None
    return (e.key, e.rel, str(e.state), e.job_id, e.endpoint, e.attempts, e.record_text,
            cancels)


def _entry(row: tuple[Any, ...]) -> Entry:
    from rpq.journal import Entry

    key, rel, state, job_id, endpoint, attempts, record, cancels = row
    return Entry(key, rel, state, job_id, endpoint, attempts, record,
                 json.loads(cancels) if cancels else None)


def _outputs(e: Entry) -> Iterator[str]:
    if e.state != Stage.DONE or e.record_text is None:
        return
    outputs = json.loads(e.record_text).get("outputs") or []
    yield from (o for o in outputs if isinstance(o, str))
