"""Buckets as folders: `s3://BUCKET/PREFIX` read and written through boto3 (`rpq[s3]`)."""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from rpq.errors import EndpointError, UsageError
from rpq.images import ImageFile, Prepared

SCHEME = "s3://"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
EXTRA = "pip install 'rpq[s3]'"


class BucketError(EndpointError):
    """The bucket is missing, refuses the credentials, or cannot be reached (exit 3)."""


def is_bucket(text: object) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


@dataclass(frozen=True)
class BucketPath:
    """`s3://BUCKET/PREFIX`: a bucket and a key prefix ("" or ending in "/")."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> BucketPath:
        rest = url[len(SCHEME):] if url.startswith(SCHEME) else ""
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise UsageError(f"{url!r} is not a bucket URL: write s3://BUCKET/PREFIX, e.g. "
                             "s3://my-images/2024/.")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def child(self, rel: str) -> BucketPath:
        return BucketPath(self.bucket, self.key(rel.strip("/") + "/"))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Listed:
    """One object under the prefix: its name below the prefix, size and ETag."""

    rel: str
    size: int
    etag: str


def _boto3() -> Any:
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise UsageError(f"s3:// URLs need the S3 extra, which is not installed: {EXTRA}") \
            from None
    return boto3, botocore.config


class Bucket:
    """A bucket prefix as a folder: list, read, write, test and presign objects below it.

    Credentials, region and endpoint come from the standard AWS chain (AWS_PROFILE,
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3,
    ~/.aws/config), so R2, MinIO and RunPod's S3 API work by setting the endpoint. boto3
    clients are thread-safe; one is shared by every job.
    """

    def __init__(self, where: BucketPath, *, pool: int = 32) -> None:
        boto3, config = _boto3()
        self.where = where
        self._client = boto3.session.Session().client("s3", config=config.Config(
            max_pool_connections=pool, connect_timeout=5, read_timeout=60,
            retries={"mode": "standard", "max_attempts": 5}))
        self.endpoint = str(self._client.meta.endpoint_url)

    @classmethod
    def at(cls, url: str, *, pool: int = 32) -> Bucket:
        return cls(BucketPath.parse(url), pool=pool)

    def check(self) -> None:
        """One request before the run: a missing bucket or refused key ends it here."""
        self._call("open", self._client.head_bucket, Bucket=self.where.bucket)

    def list(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Iterator[Listed]:
        """Objects below the prefix, in key order, a page (1,000 keys) at a time."""
        from rpq.images import _matches

        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.where.bucket, Prefix=self.where.prefix)
        cut = len(self.where.prefix)
        for page in self._guarded("list", pages):
            for obj in page.get("Contents") or ():
                rel = obj["Key"][cut:]
                name = rel.rsplit("/", 1)[-1]
                if not name or any(part.startswith(".") for part in rel.split("/")):
                    continue  # "folder" markers and hidden names, as a folder walk skips them
                if include and not _matches(include, rel, name):
                    continue
                if _matches(exclude, rel, name):
                    continue
                yield Listed(rel, int(obj.get("Size") or 0), str(obj.get("ETag") or "").strip('"'))

    def read(self, rel: str) -> bytes:
        answer = self._call("read", self._client.get_object, Bucket=self.where.bucket,
                            Key=self.where.key(rel), rel=rel)
        data: bytes = answer["Body"].read()
        return data

    def write(self, rel: str, data: bytes, content_type: str | None = None) -> None:
        """One PUT: the object appears whole or not at all, never half-written."""
        extra = {"ContentType": content_type} if content_type else {}
        self._call("write", self._client.put_object, Bucket=self.where.bucket,
                   Key=self.where.key(rel), Body=data, rel=rel, **extra)

    def exists(self, rel: str) -> bool:
        try:
            self._call("read", self._client.head_object, Bucket=self.where.bucket,
                       Key=self.where.key(rel), rel=rel)
        except _Missing:
            return False
        return True

    def upload(self, rel: str, path: Path, content_type: str) -> None:
        """A local file to an object, streamed (multipart when large)."""
        self._call("write", self._client.upload_file, Filename=str(path),
                   Bucket=self.where.bucket, Key=self.where.key(rel), rel=rel,
                   ExtraArgs={"ContentType": content_type})

    def presign(self, rel: str, expires: int) -> str:
        """A GET URL for the object that works without credentials for `expires` seconds."""
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.where.bucket, "Key": self.where.key(rel)},
            ExpiresIn=expires)
        return url

    # -- errors -----------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, rel: str | None = None, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise self._translate(what, exc, rel) from None

    def _guarded(self, what: str, items: Any) -> Iterator[Any]:
        try:
            yield from items
        except Exception as exc:
            raise self._translate(what, exc, None) from None

    def _translate(self, what: str, exc: Exception, rel: str | None) -> Exception:
        """A one-line RpqError for what boto3 raised; anything else as it is."""
        from botocore import exceptions as bx

        where = f"{self.where}{rel or ''}"
        if isinstance(exc, bx.NoCredentialsError):
            return BucketError(f"no AWS credentials for {where}. Set AWS_PROFILE, or "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
        if type(exc).__name__ == "S3UploadFailedError":  # boto3's wrapper of a failed upload
            return BucketError(f"write {where} failed: {str(exc)[:300]}")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            return BucketError(f"cannot reach the S3 endpoint {self.endpoint} for {where}. "
                               "Check AWS_ENDPOINT_URL (or the region) and the network.")
        if not isinstance(exc, bx.ClientError):
            return exc
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket" or (what == "open" and status == 404):
            return BucketError(f"bucket {self.where.bucket!r} does not exist at "
                               f"{self.endpoint}. Check the name and AWS_ENDPOINT_URL.")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return _Missing(f"{where}: no such object")
        if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId",
                                            "SignatureDoesNotMatch", "ExpiredToken"):
            may = "write" if what == "write" else "read"
            return BucketError(f"{self.endpoint} refused the credentials for {where} "
                               f"({code or status}). Check AWS_PROFILE or AWS_ACCESS_KEY_ID / "
                               f"AWS_SECRET_ACCESS_KEY, and that they may {may} this bucket.")
        return BucketError(f"{what} {where} failed: {code or status} "
                           f"{str(error.get('Message') or '')[:200]}".rstrip())


class _Missing(BucketError):
    """An object that is not there (a 404 for one key, not for the bucket)."""


# -- a bucket as the input of a batch ---------------------------------------------------------


@dataclass(frozen=True)
class RemoteImage(ImageFile):
    """An object of the input bucket. `path` is where it is downloaded while its job reads it;
    `digest` identifies it without a download when only its URL is sent."""

    size: int = 0
    etag: str = ""
    digest: str = ""
    fetched: bool = False
    url: str = ""  # the s3:// or http(s):// URL a --files-from list named it by


def remote_images(bucket: Bucket, include: Sequence[str], exclude: Sequence[str], *,
                  by_url: bool) -> Iterator[RemoteImage]:
    """The listing as batch inputs. With `by_url` (only {{image_url}} and names sent), an
    image is known by its key and ETag, so nothing is downloaded, even to tell it apart."""
    for item in bucket.list(include, exclude):
        digest = hashlib.sha256(f"{bucket.where}{item.rel}\n{item.etag}".encode()).hexdigest() \
            if by_url else ""
        yield RemoteImage(Path(item.rel), item.rel, size=item.size, etag=item.etag,
                          digest=digest)


@contextlib.contextmanager
def fetched(bucket: Bucket, image: RemoteImage, *, need_bytes: bool) -> Iterator[RemoteImage]:
    """The image with a local copy while the block runs (none when no bytes are needed)."""
    if not need_bytes:
        yield replace(image, fetched=True)
        return
    fd, tmp = tempfile.mkstemp(prefix="rpq-fetch-", suffix=PurePosixPath(image.rel).suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(bucket.read(image.rel))
        yield replace(image, path=Path(tmp), fetched=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def url_only(image: RemoteImage) -> Prepared:
    """What a request that carries only the URL needs to know of the image: its names."""
    mime = mimetypes.guess_type(image.rel)[0] or "application/octet-stream"
    ext = PurePosixPath(image.rel).suffix.lstrip(".").lower()
    return Prepared(image, b"", mime, ext, 0, 0, image.digest)


def state_dir(url: str, home: Path | None = None) -> Path:
    """Where the journal of a bucket output lives on this machine (buckets cannot append):
    $XDG_CACHE_HOME/rpq/buckets/<bucket>_<prefix>_<hash>, ~/.cache when unset."""
    where = BucketPath.parse(url)
    cache = os.environ.get("XDG_CACHE_HOME") or str((home or Path.home()) / ".cache")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", where.prefix.strip("/"))[:60]
    tag = hashlib.sha256(str(where).encode()).hexdigest()[:8]
    return Path(cache) / "rpq" / "buckets" / f"{where.bucket}_{tail}_{tag}".replace("__", "_")
