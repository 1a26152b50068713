"""`--files-from FILE`: the images to send, one path per line, instead of a folder walk."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rpq.errors import UsageError
from rpq.images import ImageFile, Skipped, _sniff_file
from rpq.urls import is_url, readable, url_image

STDIN = "-"


class FileList:
    """The lines of a list file (or of stdin, kept in a temp file so it can be read again).

    A batch reads its input twice (a count, then the work) and a dry run once more: stdin can
    be read only once, so it is copied aside first, streamed, never held in memory.
    """

    def __init__(self, source: Path, *, stdin: IO[bytes] | None = None) -> None:
        self.name = "stdin" if str(source) == STDIN else str(source)
        if str(source) != STDIN:
            if not source.is_file():
                raise UsageError(f"--files-from {source}: no such file. Pass a text file with "
                                 "one image path per line, or - to read them from stdin.")
            self.path = source
            self._check()
            return
        fd, tmp = tempfile.mkstemp(prefix="rpq-files-from-", suffix=".txt")
        weakref.finalize(self, _unlink, tmp)
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(stdin or sys.stdin.buffer, fh)
        self.path = Path(tmp)
        self._check()

    def _check(self) -> None:
        """A URL rpq cannot read is refused before anything is sent (a read of the text only)."""
        for number, text in self.lines():
            if is_url(text) and not readable(text.strip()):
                raise UsageError(
                    f"--files-from {self.name} line {number}: {text!r} is a URL rpq cannot "
                    "read; list local paths, s3://BUCKET/KEY or http(s):// URLs.")

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, path) of every line that names something; # starts a comment."""
        try:
            with self.path.open("rb") as fh:
                for number, raw in enumerate(fh, start=1):
                    text = os.fsdecode(raw.rstrip(b"\r\n"))
                    if text.strip() and not text.lstrip().startswith("#"):
                        yield number, text
        except OSError as exc:
            raise UsageError(f"--files-from {self.name}: cannot read it ({exc.strerror}).") \
                from None


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def relative_name(path: Path, root: Path) -> str:
    """The name results are written under: the path below `root`, else the path itself
    without its anchor (`/data/a.png` -> `data/a.png`), so it never climbs out of --out."""
    absolute = Path(os.path.abspath(root / path))
    try:
        return absolute.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return absolute.relative_to(absolute.anchor).as_posix()


def listed(files: FileList, root: Path, *, by_url: bool = False,
           needs_url: bool = False) -> Iterator[ImageFile | Skipped]:
    """The images a list names, in its order; relative paths are taken from `root`.

    With `by_url` only a URL line's URL is sent (see url_image); with `needs_url` a local
    path has no URL the worker could fetch, so it is skipped.
    """
    for number, text in files.lines():
        if is_url(text):
            yield url_image(text.strip(), by_url=by_url)
            continue
        path = Path(text.strip())
        rel = relative_name(path, root)
        full = root / path
        if not os.path.lexists(full):
            yield Skipped(rel, f"listed in {files.name} (line {number}) but not found")
        elif needs_url:
            yield Skipped(rel, f"a local file, listed in {files.name} (line {number}): "
                               "{{image_url}} needs an s3:// or http(s):// URL the worker "
                               "can fetch")
        elif full.is_dir():
            yield Skipped(rel, f"a folder, listed in {files.name} (line {number}); list its files")
        else:
            yield _sniff_file(os.path.abspath(full), rel)
