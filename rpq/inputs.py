"""A batch's images: from a folder, a list of paths or a bucket; identified, fetched, prepared."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rpq.errors import InputError, UsageError
from rpq.images import ImageFile, Prepared, Skipped, content_digest, discover, prepare
from rpq.journal import Journal, job_key
from rpq.listing import FileList, listed
from rpq.settings import BatchSettings
from rpq.states import Stage
from rpq.storage import Bucket, BucketError, RemoteImage, fetched, remote_images, url_only
from rpq.template import RequestTemplate
from rpq.urls import UrlReader


class Inputs:
    """The images one batch sends, read the same way for a count, the work and a dry run."""

    def __init__(self, settings: BatchSettings, template: RequestTemplate) -> None:
        self.s = settings
        self.template = template
        self._out_rel = None if settings.bucket_in else _inside(settings.out, settings.root)
        if self._out_rel == ".":
            raise UsageError(f"--out {settings.out} is the input folder: results named like "
                             "their inputs would replace them. Pass another folder.")
        self._files = FileList(settings.files_from) if settings.files_from else None
        self.bucket = Bucket.at(settings.bucket_in, pool=settings.most_jobs_out + 8) \
            if settings.bucket_in else None
        self.urls = UrlReader(max_bytes=settings.download_max_mb << 20,
                              pool=settings.most_jobs_out + 8) if self._files else None
        if template.needs_url and self.bucket is None and self._files is None:
            raise UsageError("{{image_url}} needs the images in a bucket (rpq batch "
                             "s3://BUCKET/PREFIX): a local file has no URL the worker could "
                             "fetch. Use {{image_base64}} for a local folder, or list "
                             "s3:// or http(s):// URLs with --files-from.")

    def key(self, rel: str, digest: str, fingerprint: str) -> str:
        """What identifies the request sent: content, settings, and any per-file values."""
        per_file = self.template.per_file(rel)
        return job_key(f"{digest}|{per_file}" if per_file else digest, fingerprint)

    def __iter__(self) -> Iterator[ImageFile | Skipped]:
        """This shard's images; never what is in the output folder, if it lies inside."""
        inner, shard = self._out_rel, self.s.shard
        for item in self._source():
            if shard is not None and not shard.holds(item.rel):
                continue
            if inner is None or (item.rel != inner and not item.rel.startswith(inner + "/")):
                yield item

    def not_images_only(self) -> int | None:
        """None when the input (every shard of it) holds an image, or a file meant as one;
        else how many files that are not images it holds (0: nothing at all)."""
        strays = 0
        for item in self._source():
            if self._out_rel is not None and (item.rel == self._out_rel
                                              or item.rel.startswith(self._out_rel + "/")):
                continue
            if not (isinstance(item, Skipped) and item.not_image):
                return None
            strays += 1
        return strays

    def _source(self) -> Iterator[ImageFile | Skipped]:
        if self.bucket is not None:
            return remote_images(self.bucket, self.s.include, self.s.exclude,
                                 by_url=not self.template.needs_bytes)
        if self._files is not None:
            return listed(self._files, self.s.root, by_url=not self.template.needs_bytes,
                          needs_url=self.template.needs_url)
        return discover(self.s.root, self.s.include, self.s.exclude, self.s.recursive)

    @staticmethod
    def size(item: ImageFile) -> int:
        return item.size if isinstance(item, RemoteImage) else item.path.stat().st_size

    def local(self, item: ImageFile) -> contextlib.AbstractContextManager[ImageFile]:
        """The image with its bytes on this machine while a job needs them (bucket inputs)."""
        if isinstance(item, RemoteImage) and item.url and self.urls and not item.fetched:
            return self.urls.fetched(item, need_bytes=self.template.needs_bytes)
        if isinstance(item, RemoteImage) and self.bucket is not None and not item.fetched:
            return fetched(self.bucket, item, need_bytes=self.template.needs_bytes)
        return contextlib.nullcontext(item)

    @staticmethod
    def needs_fetch(item: ImageFile) -> bool:
        return isinstance(item, RemoteImage) and not item.fetched

    @staticmethod
    def digest(item: ImageFile) -> str:
        if isinstance(item, RemoteImage) and item.digest:
            return item.digest  # known by key and ETag: only its URL is sent
        return content_digest(item.path)

    def prepare(self, item: ImageFile) -> tuple[Prepared, str | None]:
        """What the template needs: the prepared bytes, and/or a presigned URL."""
        url = None
        if self.template.needs_url and isinstance(item, RemoteImage) and item.url and self.urls:
            url = self.urls.worker_url(item.url, self.s.url_expiry)
        elif self.template.needs_url and isinstance(item, RemoteImage) and self.bucket:
            url = self.bucket.presign(item.rel, self.s.url_expiry)
        if isinstance(item, RemoteImage) and not self.template.needs_bytes:
            return url_only(item), url
        return prepare(item, max_side=self.s.max_side, fmt=self.s.fmt), url

    def dry_run(self, journal: Journal, fingerprint: str,
                policy: dict[str, Any] | None) -> dict[str, Any]:
        """What a dry run reports of each image, and the request the first one would make."""
        images: list[dict[str, Any]] = []
        preview: dict[str, Any] | None = None
        skipped = []
        for item in self:
            if isinstance(item, Skipped):
                skipped.append({"file": item.rel, "reason": item.reason})
                continue
            info: dict[str, Any] = {"file": item.rel, "bytes": self.size(item)}
            try:
                with self.local(item) as local:
                    entry = journal.get(self.key(local.rel, self.digest(local), fingerprint))
                    info["journal"] = entry.state if entry else Stage.NEW
                    if preview is None:
                        prepared, url = self.prepare(local)
                        preview = self.template.render_preview(prepared, policy=policy, url=url)
                        info["request_bytes"] = self.template.body_size(prepared, policy=policy,
                                                                        url=url)
            except (InputError, BucketError) as exc:
                info["error"] = str(exc)
            images.append(info)
        return {"images": images, "skipped": skipped, "request_example": preview}


def _inside(out: Path, root: Path) -> str | None:
    """The output folder's path relative to the input folder, when it lies inside it."""
    try:
        return out.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
