"""One rpq batch at a time per output folder: an exclusive flock on OUT/.rpq-lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path

from rpq.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".rpq-lock"


class OutputLock:
    """Only one rpq batch at a time per output folder: an exclusive flock on OUT/.rpq-lock.

    The kernel drops the lock when its process ends, however it ends (SIGKILL, a crash), so a
    lock left by a killed run is simply taken by the next one; the file itself stays, and
    holds the pid, host and start time of the current holder for the message. The file is
    never deleted: deleting it would let two runs lock two different files of one name.
    Where there is no flock (Windows), nothing is locked.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None
        self.warning: str | None = None  # set when the folder could not be locked

    def acquire(self) -> None:
        """Take the lock, or raise UsageError (exit 2) naming the process that holds it."""
        if fcntl is None:  # pragma: no cover - Windows
            return
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {folder} is a file, not a folder. Pass the folder results "
                             "go to (it is created if missing).")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot write in {folder} ({exc.strerror or exc}). Pass an --out "
                             "folder you can write to.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                # A file system without locks (some network mounts): run, but say so.
                self.warning = (f"warning: cannot lock {self.path} ({exc.strerror or exc}); "
                                "nothing stops a second rpq batch on this folder.")
                return
            raise UsageError(
                f"{folder} is in use by another rpq batch ({holder}). Wait for it to end, or "
                "pass another --out; two runs on one folder would each send every image."
            ) from None
        about = {"pid": os.getpid(), "host": socket.gethostname(),
                 "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(about) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        about = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        about = {}
    if not isinstance(about, dict) or "pid" not in about:
        return "a process that has not yet said which"
    host = about.get("host")
    here = " (this machine)" if host == socket.gethostname() else ""
    return f"pid {about['pid']} on host {host}{here}, since {about.get('since', '?')}"
