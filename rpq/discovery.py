"""One discovery pass: a thread walks the input once, counting, while the batch starts work."""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_HEADER = struct.Struct("<I")
_FLUSH_EVERY = 256  # items per hand-over to the reader


class Discovered(Generic[T]):
    """Items of `source`, walked once in a thread and read back from a temp file.

    The walk runs ahead at its own speed, so the total is known as soon as it ends (for the
    ETA) while the first jobs are already out; what it found waits in a temp file, not in
    memory, however long the input. `on_count(n, done)` reports the count as it grows. An
    error raised by the walk (a missing folder) is raised again by the reader.
    """

    def __init__(self, source: Iterable[T], on_count: Callable[[int, bool], None]) -> None:
        self._fd, path = tempfile.mkstemp(prefix="rpq-found-")
        os.unlink(path)  # nothing to clean up after a crash
        self._cond = threading.Condition()
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        self._stop = False
        self._on_count = on_count
        self._thread = threading.Thread(target=self._walk, args=(source,), name="rpq-discover",
                                        daemon=True)
        self._thread.start()

    def _walk(self, source: Iterable[T]) -> None:
        count, pending = 0, bytearray()
        try:
            for item in source:
                blob = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                pending += _HEADER.pack(len(blob)) + blob
                count += 1
                if count % _FLUSH_EVERY == 0:
                    self._hand_over(pending, count)
                    pending.clear()
                    if self._stop:
                        return
        except BaseException as exc:  # handed to the reader, which raises it
            self._error = exc
        finally:
            self._hand_over(pending, count, done=True)

    def _hand_over(self, data: bytearray, count: int, done: bool = False) -> None:
        if data:
            os.write(self._fd, data)
        with self._cond:
            self._written += len(data)
            self._done = done
            self._cond.notify_all()
        self._on_count(count, done)

    def __iter__(self) -> Iterator[T]:
        pos = 0
        try:
            while True:
                with self._cond:
                    while self._written == pos and not self._done:
                        self._cond.wait()
                    limit, done = self._written, self._done
                if pos == limit:
                    if self._error is not None:
                        raise self._error
                    if done:
                        return
                    continue
                while pos < limit:
                    (size,) = _HEADER.unpack(os.pread(self._fd, _HEADER.size, pos))
                    item: T = pickle.loads(os.pread(self._fd, size, pos + _HEADER.size))
                    pos += _HEADER.size + size
                    yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the walk (a batch that stops early) and drop the temp file."""
        self._stop = True
        self._thread.join()
        with self._cond:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
