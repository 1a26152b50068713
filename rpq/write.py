"""Writing results: images out of the job's output, atomically, never outside the output folder."""

from __future__ import annotations

import errno
import json
import mimetypes
import stat
import threading
import warnings
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from rpq.api import RunPodClient
from rpq.budget import Downloads
from rpq.errors import APIError
from rpq.extract import Artifact, OutputError, extract, sniff_format
from rpq.files import atomic_write
from rpq.images import draft_for_check
from rpq.spill import SpillMap
from rpq.storage import Bucket, BucketError

EXT = {"jpeg": "jpg", "tiff": "tif"}


class ResultWriter:
    """Turns a COMPLETED job into files under `out`, named after the input's relative path."""

    def __init__(
        self,
        out: Path,
        client: RunPodClient | None,
        *,
        output_key: str | None = None,
        save_json: bool = False,
        download_max_bytes: int = 100 << 20,
        download_timeout: float = 60.0,
        download_deadline: float = 600.0,
    ) -> None:
        self.out = out
        self._root = out.resolve()
        self.client = client
        self.output_key = output_key
        self.save_json = save_json
        self.download_max_bytes = download_max_bytes
        self.download_timeout = download_timeout
        self.download_deadline = download_deadline
        self._lock = threading.Lock()
        # Output path (relative) -> input rel that owns it, for this run: on disk, so memory
        # stays flat however many images the run writes.
        self._claims = SpillMap()
        # Results go to this bucket prefix instead of `out` (which then holds the journal).
        self.store: Bucket | None = None
        # Who owns an output an earlier run wrote (the journal knows), asked name by name.
        self.earlier_owner: Callable[[str], str | None] = lambda name: None

    def write(self, rel: str, job: dict[str, Any],
              downloads: Downloads | None = None) -> list[str]:
        """Extract, fetch and write every image; returns the written paths relative to `out`.

        Raises OutputError (nothing usable in the output) or APIError (a download failed);
        no file is written unless every image was obtained. `downloads` counts the bytes of
        images given as URLs against the memory budget (the caller releases them).
        """
        artifacts = extract(job.get("output"), self.output_key)
        blobs = [self._fetch(a, downloads) for a in artifacts]
        formats = []
        for i, blob in enumerate(blobs):
            fmt = sniff_format(blob)
            if fmt is None:
                raise OutputError(
                    f"output image {i + 1} is not a recognised image format "
                    f"({len(blob)} bytes starting {blob[:8]!r})"
                )
            _check_decodes(blob, fmt, i + 1)
            formats.append(fmt)
        stem = self._stem_for(rel, len(blobs), formats)
        written = []
        for i, (blob, fmt) in enumerate(zip(blobs, formats, strict=True)):
            name = f"{stem}_{i + 1}" if len(blobs) > 1 else stem
            written.append(self._put(f"{name}.{EXT.get(fmt, fmt)}", blob))
        if self.save_json:
            text = json.dumps(job, indent=2, ensure_ascii=False).encode()
            written.append(self._put(f"{stem}.json", text))
        return written

    def copy_outputs(self, outputs: list[str], rel: str) -> list[str]:
        """Give `rel` the outputs another input with the same content already has."""
        written = []
        for i, name in enumerate(outputs):
            suffix = PurePosixPath(name).suffix
            stem = self._stem_for(rel, len(outputs), [suffix.lstrip(".")] * len(outputs))
            target = f"{stem}_{i + 1}{suffix}" if len(outputs) > 1 else f"{stem}{suffix}"
            data = self.store.read(name) if self.store else (self.out / name).read_bytes()
            written.append(self._put(target, data))
        return written

    # -- helpers ----------------------------------------------------------------------------

    def _fetch(self, artifact: Artifact, downloads: Downloads | None) -> bytes:
        if artifact.data is not None:
            return artifact.data
        if artifact.url is None:  # pragma: no cover - extract() guarantees one of the two
            raise OutputError("output item carries neither data nor a URL")
        if self.client is None:
            raise APIError("output is a URL but downloads are not available here")
        return self.client.download(
            artifact.url, max_bytes=self.download_max_bytes, timeout=self.download_timeout,
            deadline=self.download_deadline,
            meter=downloads.meter() if downloads is not None else None,
        )

    def _stem_for(self, rel: str, count: int, formats: list[str]) -> str:
        """`<dir>/<stem>`, or `<dir>/<stem>_<ext>` when another input already owns the name."""
        src = PurePosixPath(rel)
        base = str(src.with_suffix("")) if src.suffix else str(src)
        candidates = [base, f"{base}_{src.suffix.lstrip('.').lower() or 'out'}"]
        with self._lock:
            for stem in candidates:
                names = self._names(stem, count, formats)
                if all(self._owner(n, rel) == rel for n in names):
                    for n in names:
                        self._claims.setdefault(n, rel)
                    return stem
            # Same stem and extension twice is impossible for two files of one folder.
            raise OutputError(f"cannot find a free output name for {rel}")

    def _owner(self, name: str, rel: str) -> str:
        owner = self._claims.get(name)
        if owner is None:
            owner = self.earlier_owner(name)
            if owner is None:
                return rel  # free: claimed only once its stem is chosen
            self._claims.setdefault(name, owner)
        return owner

    @staticmethod
    def _names(stem: str, count: int, formats: list[str]) -> list[str]:
        if count == 1:
            return [f"{stem}.{EXT.get(formats[0], formats[0])}"]
        return [f"{stem}_{i + 1}.{EXT.get(f, f)}" for i, f in enumerate(formats)]

    def has(self, name: str) -> bool:
        """Whether output `name` (as the journal recorded it) is where it was written.

        An empty file is not: results are written without fsync, so a power cut can leave a
        name whose bytes never reached the disk (ext4 and XFS keep such a file at size 0),
        and no image rpq writes is empty.
        """
        if self.store is not None:
            return self.store.exists(name)
        try:
            found = (self.out / name).stat()
        except OSError:
            return False
        return stat.S_ISREG(found.st_mode) and found.st_size > 0

    def _put(self, name: str, data: bytes) -> str:
        if self.store is not None:
            try:
                self.store.write(name, data, mimetypes.guess_type(name)[0])
            except BucketError as exc:
                # Like a full disk: the job stays in flight and a rerun fetches it again.
                raise OSError(errno.EIO, str(exc)) from None
            return name
        target = (self.out / name).resolve()
        if not target.is_relative_to(self._root):
            raise OutputError(f"refusing to write {name!r}: it lies outside {self.out}")
        atomic_write(target, data)
        return name


def _check_decodes(blob: bytes, fmt: str, index: int) -> None:
    """Bytes that merely start like an image are not one: decode before saving.

    The same check as an input's, at the same cost: a JPEG decodes at 1/8 scale, which still
    reads every byte of it.
    """
    import io

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Up to Pillow's hard limit (about 179 MP): large upscales are legitimate outputs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as im:
                draft_for_check(im)
                im.load()
    except Image.DecompressionBombError:
        raise OutputError(
            f"output image {index} has more pixels than rpq decodes to check; not saved"
        ) from None
    except Exception as exc:  # Pillow raises many types for broken data
        raise OutputError(
            f"output image {index} looks like {fmt.upper()} but does not decode "
            f"({type(exc).__name__}: {str(exc)[:120]}); not saved"
        ) from None
