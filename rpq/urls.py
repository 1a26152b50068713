"""Images a `--files-from` list names by URL: s3://BUCKET/KEY, or http(s) fetched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from rpq.api import download
from rpq.errors import APIError
from rpq.storage import SCHEME, Bucket, BucketError, BucketPath, RemoteImage

HTTP = ("http://", "https://")
SCHEMES = (SCHEME, *HTTP)


def is_url(text: str) -> bool:
    return "://" in text


def readable(text: str) -> bool:
    """Whether a list line is a URL rpq reads: s3:// or http(s)://."""
    return text.lower().startswith(SCHEMES)


def url_rel(url: str) -> str:
    """The name results are written under: `bucket/key` or `host/path`, never climbing out."""
    if url.startswith(SCHEME):
        raw = url[len(SCHEME):]
    else:
        parts = urlsplit(url)
        raw = f"{parts.hostname or 'host'}{'_' + str(parts.port) if parts.port else ''}" \
              f"{parts.path}"
    segments = [re.sub(r"[\x00-\x1f\\:*?\"<>|]", "_", s) for s in raw.split("/")]
    kept = [s for s in segments if s not in ("", ".", "..")]
    return "/".join(kept) if len(kept) > 1 else "/".join([*kept, "index"])


def url_image(url: str, *, by_url: bool) -> RemoteImage:
    """An image named by URL. With `by_url` (only its URL is sent) it is known by the URL,
    so nothing is downloaded, even to tell it apart; otherwise by its content, once fetched."""
    rel = url_rel(url)
    digest = hashlib.sha256(f"url:{url}".encode()).hexdigest() if by_url else ""
    return RemoteImage(Path(rel), rel, digest=digest, url=url)


class UrlReader:
    """Reads the images a list names by URL, and gives the worker a URL it can fetch.

    http(s) downloads carry no header of rpq's (never the API key) and obey the limits of
    result downloads; s3:// objects are read through one Bucket per bucket name.
    """

    def __init__(self, *, max_bytes: int, pool: int, timeout: float = 60.0,
                 deadline: float = 600.0) -> None:
        self.max_bytes, self.timeout, self.deadline = max_bytes, timeout, deadline
        self._pool = pool
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, url: str) -> tuple[Bucket, str]:
        where = BucketPath.parse(url)
        with self._lock:
            bucket = self._buckets.get(where.bucket)
            if bucket is None:
                bucket = Bucket(BucketPath(where.bucket), pool=self._pool)
                self._buckets[where.bucket] = bucket
        return bucket, url[len(SCHEME) + len(where.bucket) + 1:]

    def read(self, url: str) -> bytes:
        """The image's bytes; BucketError (the image's failure, not the batch's) otherwise."""
        if url.startswith(SCHEME):
            bucket, key = self._bucket(url)
            return bucket.read(key)
        try:
            return download(url, max_bytes=self.max_bytes, timeout=self.timeout,
                            deadline=self.deadline)
        except APIError as exc:
            raise BucketError(str(exc)) from None

    def worker_url(self, url: str, expires: int) -> str:
        """An http(s) URL goes as is; an s3:// one as a presigned GET."""
        if url.startswith(SCHEME):
            bucket, key = self._bucket(url)
            return bucket.presign(key, expires)
        return url

    @contextlib.contextmanager
    def fetched(self, image: RemoteImage, *, need_bytes: bool) -> Iterator[RemoteImage]:
        """The image with a local copy while the block runs (none when no bytes are needed)."""
        if not need_bytes:
            yield replace(image, fetched=True)
            return
        data = self.read(image.url)
        fd, tmp = tempfile.mkstemp(prefix="rpq-fetch-", suffix=PurePosixPath(image.rel).suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            yield replace(image, path=Path(tmp), fetched=True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
