"""Disk space a batch holds back so that its journal can record jobs already paid for."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

#: What the room holds: the `submitted`, `end` and `cancel` lines of every job in flight
#: (a few hundred bytes each) with a wide margin.
ROOM_SIZE = 32 << 10
#: Given back one page at a time, so a result written meanwhile cannot take all of it.
ROOM_STEP = 4 << 10

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Room:
    """A file of zeros beside the journal, shrunk when the disk is full.

    Once /run has answered, the job is paid for; if its journal line then found no room, a
    rerun would not know the job and would pay for the image again. So the journal takes
    room from this file for such lines, and refills it before each new job is sent: a disk
    too full to refill it sends nothing more.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0

    def hold(self) -> None:
        """Make sure the full room is held; raises OSError (ENOSPC) when the disk cannot."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size  # a killed run's room is reused
        while self._size < ROOM_SIZE:
            written = os.pwrite(self._fd, bytes(ROOM_SIZE - self._size), self._size)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            self._size += written

    def give(self) -> bool:
        """Give one step of the room back to the disk; False when there is none left."""
        if self._fd is None or self._size <= 0:
            return False
        self._size = max(0, self._size - ROOM_STEP)
        os.ftruncate(self._fd, self._size)
        return True

    def close(self) -> None:
        """Give all of it back (the file goes too, where the folder allows)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink()
