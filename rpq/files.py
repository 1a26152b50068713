"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _current_umask() -> int:
    # Read once at import, while nothing else runs: os.umask has no read-only form.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


TEMP_SUFFIX = ".part"


def sweep_temp_files(folder: Path) -> int:
    """Remove temp files that a killed run left behind (`.NAME.XXXX.part`); returns how many."""
    removed = 0
    for path in folder.rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed += 1
    return removed


def atomic_write(path: Path, data: bytes | Iterable[bytes], *, fsync: bool = False) -> None:
    """Write to a temp file in the same folder, then rename it over `path`.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    With `fsync`, the data and then the folder are flushed to disk: a rename lives in the
    folder, so without the second flush a power cut can bring back the old file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            if isinstance(data, bytes):
                fh.write(data)
            else:
                fh.writelines(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename, a new file) to disk; a no-op where folders cannot
    be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself is on disk
    finally:
        os.close(fd)
