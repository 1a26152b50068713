"""A string map of one run kept in a private temporary SQLite file, so memory stays flat."""

from __future__ import annotations

import sqlite3
import threading
import weakref

#: Pairs held in memory before they are written to the file together.
BUFFER = 512


class SpillMap:
    """`key -> value` strings for the length of one run, held on disk instead of in memory.

    The file is SQLite's private temporary database (an empty file name): nobody else can open
    it and SQLite deletes it when the connection closes or the process dies, so a crash leaves
    nothing behind. Recent pairs are buffered and written in one statement. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: dict[str, str] = {}
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
            # SQLite's page cache is per connection (2 MB by default): keep it small, the
            # lookups are by primary key and the OS caches the file anyway.
            conn.execute("PRAGMA cache_size=-256")
            conn.execute("CREATE TABLE m (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID")
            weakref.finalize(self, conn.close)
            self._conn = conn
        return self._conn

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._get(key)

    def _get(self, key: str) -> str | None:
        value = self._recent.get(key)
        if value is None and self._conn is not None:
            row = self._conn.execute("SELECT v FROM m WHERE k = ?", (key,)).fetchone()
            value = str(row[0]) if row else None
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def setdefault(self, key: str, value: str) -> str:
        """The value already stored for `key`, else store `value` and return it."""
        with self._lock:
            old = self._get(key)
            if old is not None:
                return old
        self.add(key, value)
        return value

    def add(self, key: str, value: str = "") -> bool:
        """Store `value` for `key` unless it has one; True when it was new."""
        with self._lock:
            if self._get(key) is not None:
                return False
            self._recent[key] = value
            if len(self._recent) >= BUFFER:
                self._flush()
            return True

    def _flush(self) -> None:
        db = self._db()
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO m (k, v) VALUES (?, ?)", self._recent.items())
        db.execute("COMMIT")
        self._recent.clear()

    def close(self) -> None:
        with self._lock:
            self._recent.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
