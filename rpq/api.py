"""The only module that speaks HTTP: a small client for the RunPod queue API."""

from __future__ import annotations

import codecs
import email.utils
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timezone
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter

from rpq import __version__
from rpq.budget import Meter
from rpq.errors import APIError, AuthError, EndpointError, EndpointNotFound

# -vv: one line per request (method, path, status, time); never headers, so never the key.
log = logging.getLogger("rpq.http")

#: (connect, read) seconds; long polls add their wait to the read timeout.
DEFAULT_TIMEOUT = (5.0, 30.0)
#: Answers at least this long are announced to RunPodClient.on_big_body before being read.
BIG_BODY = 1 << 20


class TransportError(APIError):
    """No HTTP answer at all: connection refused or reset, timeout, truncated body."""


class NotRunPodAPI(EndpointError, APIError):
    """A RunPod route answered with something that is not RunPod's JSON (exit 3).

    Also an APIError, so a batch that meets one mid-run records it against the job.
    """


def is_transient(exc: BaseException) -> bool:
    """Connection errors, 408, 429 and 5xx are worth retrying; every other 4xx is final."""
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, APIError) and exc.status is not None:
        return exc.status in (408, 429) or exc.status >= 500
    return False


@dataclass(frozen=True)
class Reply:
    """A parsed HTTP answer: status code and JSON body (or the raw text under "text")."""

    status: int
    body: Any
    json: bool = True  # False: the body was not JSON (an HTML page, plain text, nothing)


def _parse(text: str) -> tuple[Any, bool]:
    try:
        return json.loads(text), True
    except ValueError:
        return {"text": _plain(text.strip())[:500]}, False


#: Bytes asked of the socket per read of an answer. requests reads 10 KB at a time: a hundred
#: trips through its and urllib3's layers per MB of result, twice the CPU of reading it.
#: Under budget.map_large_blocks' threshold, so each chunk reuses heap memory, where a
#: mapping of its own would be faulted in page by page.
_READ_CHUNK = 128 << 10


def _body(resp: requests.Response) -> str:
    """The whole body of a streamed answer as text (requests' errors, as `resp.content` raises
    them), decoded chunk by chunk as it arrives: a result's base64 is held as text once, where
    joining the bytes and then decoding them would hold it twice. JSON is UTF-8 (RFC 8259;
    a leading BOM is dropped); bytes that are not are replaced, as a page in another encoding
    is only quoted."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("replace")
    text = [decoder.decode(chunk) for chunk in resp.iter_content(_READ_CHUNK)]
    text.append(decoder.decode(b"", final=True))
    return "".join(text)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def _plain(text: str) -> str:
    """An HTML error page (a proxy's 502) as its title or its words, not its markup."""
    if not text.startswith("<"):
        return text
    title = _TITLE.search(text)
    words = " ".join((title.group(1) if title else _TAG.sub(" ", text)).split())
    return f"an HTML page: {words}" if words else "an empty HTML page"


def _text_of(body: Any) -> str:
    """What a body that was not JSON said, for a message (`_parse` keeps it under "text")."""
    text = body.get("text") if isinstance(body, dict) else None
    if not text:
        return "an empty body"
    return text if text.startswith(("an HTML page:", "an empty HTML page")) else f"text: {text}"


def _describe(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "text"):
            if body.get(key):
                return str(body[key])[:300]
    return json.dumps(body)[:300] if body is not None else "no body"


class RunPodClient:
    """RunPod queue operations for one endpoint: run, status, cancel, retry, purge, health.

    Thread-safe: one pooled requests.Session is shared by every thread. The API key lives
    only in the session's Authorization header; it never appears in a repr, URL or error.
    """

    def __init__(
        self,
        base_url: str,
        endpoint_id: str,
        api_key: str | None,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        pool_size: int = 32,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.endpoint_id = endpoint_id
        self.url = f"{self.base_url}/{quote(endpoint_id, safe='')}"
        self.timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # Read the environment's proxy and CA settings once, not on every request (about a
        # quarter of the client's CPU per status call), and never let ~/.netrc replace the
        # Authorization header.
        self._session.proxies.update(requests.utils.get_environ_proxies(self.url))
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            self._session.verify = ca_bundle
        self._session.trust_env = False
        self._session.headers["User-Agent"] = f"rpq/{__version__}"
        self.has_key = bool(api_key)
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._lock = threading.Lock()
        self.requests_sent: dict[str, int] = {}
        # Told the size of a large answer before it is read (a result inline in a status
        # reply), so the caller can wait for memory; see BIG_BODY.
        self.on_big_body: Callable[[int], object] | None = None

    def __repr__(self) -> str:
        return f"RunPodClient(url={self.url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RunPodClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations -------------------------------------------------------------------------

    def run(self, body: bytes | Iterable[bytes]) -> dict[str, Any]:
        """POST /run with a ready JSON body (bytes, or pieces with a length: a RequestBody);
        returns {"id", "status"}."""
        reply = self._call("run", "POST", "/run", data=body)
        if not isinstance(reply.body, dict) or not reply.body.get("id"):
            raise APIError(
                f"/run answered without a job id: {_describe(reply.body)}", 200, reply.body
            )
        return reply.body

    def status(self, job_id: str, wait_ms: int | None = None) -> dict[str, Any]:
        """GET /status/{id}, or /status-sync/{id}?wait= when wait_ms is given (a long poll)."""
        if wait_ms is None:
            reply = self._call("status", "GET", f"/status/{quote(job_id, safe='')}")
        else:
            read = self.timeout[1] + wait_ms / 1000.0
            reply = self._call(
                "status-sync",
                "GET",
                f"/status-sync/{quote(job_id, safe='')}",
                params={"wait": int(wait_ms)},
                timeout=(self.timeout[0], read),
            )
        return self._job_body(reply)

    def cancel(self, job_id: str) -> dict[str, Any]:
        path = f"/cancel/{quote(job_id, safe='')}"
        return self._object(self._call("cancel", "POST", path), path)

    def retry(self, job_id: str) -> dict[str, Any]:
        path = f"/retry/{quote(job_id, safe='')}"
        return self._object(self._call("retry", "POST", path), path)

    def purge(self) -> dict[str, Any]:
        return self._object(self._call("purge-queue", "POST", "/purge-queue"), "/purge-queue")

    def health(self) -> dict[str, Any]:
        """GET /health; 401 and 404 become AuthError / EndpointNotFound (the run cannot start),
        and an answer that is not RunPod's JSON becomes NotRunPodAPI."""
        try:
            reply = self._call("health", "GET", "/health")
        except TransportError as exc:
            raise EndpointError(
                f"cannot reach the endpoint at {self.url} ({exc}). "
                "Check --base-url / RUNPOD_ENDPOINT_BASE_URL and your network."
            ) from None
        except NotRunPodAPI:
            raise
        except APIError as exc:
            if exc.status == 401:
                raise self.refused("/health", 401) from None
            if exc.status == 404:
                raise EndpointNotFound(
                    f"endpoint '{self.endpoint_id}' not found at {self.base_url} (404). "
                    "Check --endpoint / RUNPOD_ENDPOINT_ID."
                ) from None
            raise
        return self._object(reply, "/health")

    def refused(self, path: str, status: int) -> AuthError:
        """401/403: the key was refused, or there was none to send."""
        if not self.has_key:
            return AuthError(
                f"no API key is set, and the endpoint requires one (HTTP {status} at "
                f"{self.url}{path}). rpq looks for it in --api-key, then the RUNPOD_API_KEY "
                "environment variable, then api_key under [default] in ~/.runpod/config.toml."
            )
        return AuthError(
            f"the endpoint refused the API key (HTTP {status} at {self.url}{path}). "
            "Check --api-key / RUNPOD_API_KEY / ~/.runpod/config.toml; a read-only key cannot "
            "run, cancel or purge jobs."
        )

    def _object(self, reply: Reply, path: str) -> dict[str, Any]:
        """A 2xx answer that must be a JSON object, as every RunPod route answers."""
        if not reply.json or not isinstance(reply.body, dict):
            what = _text_of(reply.body) if not reply.json else "JSON that is not an object"
            raise self._not_runpod(path, reply.status, what, reply.body)
        body: dict[str, Any] = reply.body
        return body

    def _not_runpod(self, path: str, status: int, what: str, body: Any) -> NotRunPodAPI:
        return NotRunPodAPI(
            f"{self.url}{path} answered HTTP {status} with {what[:120]}, not RunPod's JSON: "
            f"this is not a RunPod API at {self.base_url}. Check --base-url / "
            f"RUNPOD_ENDPOINT_BASE_URL (RunPod's is https://api.runpod.ai/v2).",
            status, body,
        )

    def download(
        self, url: str, *, max_bytes: int, timeout: float, deadline: float | None = None,
        meter: Meter | None = None,
    ) -> bytes:
        """GET an output URL; see `download` (no API key is sent with it)."""
        return download(url, max_bytes=max_bytes, timeout=timeout, deadline=deadline,
                        meter=meter)

    # -- plumbing ---------------------------------------------------------------------------

    def _job_body(self, reply: Reply) -> dict[str, Any]:
        body = reply.body
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise APIError(
                f"job status answer has no status: {_describe(body)}", reply.status, body
            )
        return body

    def _call(
        self,
        op: str,
        method: str,
        path: str,
        *,
        data: bytes | Iterable[bytes] | None = None,
        params: dict[str, Any] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> Reply:
        with self._lock:
            self.requests_sent[op] = self.requests_sent.get(op, 0) + 1
        headers = {"Content-Type": "application/json"} if data is not None else None
        started = time.perf_counter()
        hook = self.on_big_body
        try:
            resp = self._session.request(
                method,
                self.url + path,
                data=data,
                params=params,
                headers=headers,
                timeout=timeout or self.timeout,
                stream=True,
            )
            length = resp.headers.get("Content-Length", "")
            if hook is not None and length.isdigit() and int(length) >= BIG_BODY:
                hook(int(length))  # may wait: the answer stays in the socket meanwhile
            raw = _body(resp)  # read here, where its errors are mapped
        except requests.RequestException as exc:
            log.debug("%s %s/%s failed: %s", method, self.endpoint_id, path.lstrip("/"),
                      type(exc).__name__)
            # str(exc) can be long and carries the URL; the type and cause are what help.
            raise TransportError(f"{op}: {type(exc).__name__}: {_short_cause(exc)}") from None
        log.debug("%s %s/%s %d %.0f ms", method, self.endpoint_id, path.lstrip("/"),
                  resp.status_code, (time.perf_counter() - started) * 1000)
        body, is_json = _parse(raw)
        if resp.status_code == 404 and not is_json and _is_html(resp, raw):
            # RunPod's own 404s (unknown endpoint, expired job) are not web pages: a web
            # server or proxy is answering where the API should be.
            raise self._not_runpod(path, 404, _text_of(body), body)
        if resp.status_code >= 400:
            raise APIError(
                f"{op}: HTTP {resp.status_code}: {_describe(body)}",
                resp.status_code,
                body,
                retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
            )
        return Reply(resp.status_code, body, is_json)


def _is_html(resp: requests.Response, raw: str) -> bool:
    kind = resp.headers.get("Content-Type", "").lower()
    return "html" in kind or raw.lstrip()[:1] == "<"


def _short_cause(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Read timed out", "timed out",
                   "RemoteDisconnected", "Connection aborted", "IncompleteRead"):
        if marker in text:
            return marker
    return text[:120]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date.

    `now` is the wall clock (time.time()) to count a date from; a date in the past means 0.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form may lack the zone
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _arriving(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: each piece is what one read from the socket brought."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # an older urllib3: whole chunks, as requests reads them
        yield from resp.iter_content(65536)
        return
    while chunk := read1(65536, decode_content=True):
        yield chunk


def _capped(chunks: Iterator[bytes], limit: int, url: str) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise APIError(f"download of {url[:120]} exceeds {limit // (1 << 20)} MB; not saved")
        yield chunk


def post_json(url: str, payload: dict[str, Any], timeout: float = 5.0) -> int:
    """POST a JSON document (alert webhooks); returns the HTTP status, raises TransportError."""
    try:
        resp = requests.post(url, json=payload, timeout=(3.0, timeout))
    except requests.RequestException as exc:
        raise TransportError(f"webhook: {type(exc).__name__}: {_short_cause(exc)}") from None
    resp.close()
    return resp.status_code


def download(
    url: str, *, max_bytes: int, timeout: float, deadline: float | None = None,
    meter: Meter | None = None,
) -> bytes:
    """GET an output URL (http/https only, size-capped); no API key is sent with it.

    `timeout` bounds the connection and each read; `deadline` (seconds) the whole
    download, so a server that trickles bytes cannot hold it longer. `meter` counts the
    bytes against the memory budget: told the length (Content-Length) before the body is
    read, then the bytes as they arrive.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise APIError(f"refusing to download {url[:80]!r}: only http(s) URLs are fetched")
    give_up = None if deadline is None else time.monotonic() + deadline
    try:
        with requests.get(
            url, stream=True, timeout=(5.0, timeout), allow_redirects=True
        ) as resp:
            if resp.status_code >= 400:
                raise APIError(f"download failed: HTTP {resp.status_code} for {url[:120]}",
                               resp.status_code)
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise APIError(f"download of {url[:120]} exceeds {max_bytes // (1 << 20)} MB "
                               "(its Content-Length); not saved")
            if meter is not None:
                meter.expect(int(length) if length.isdigit() else None)
            chunks = _capped(_arriving(resp), max_bytes, url)
            data = []
            total = 0
            for chunk in chunks:
                data.append(chunk)
                total += len(chunk)
                if meter is not None:
                    meter.arrived(total)
                if give_up is not None and time.monotonic() > give_up:
                    raise APIError(f"download of {url[:120]} took longer than "
                                   f"{deadline:g} s; not saved")
            body = b"".join(data)
            del data
            if meter is not None:
                meter.joined(len(body))
            return body
    except requests.exceptions.InvalidSchema:
        # The URL itself is http(s): a redirect led somewhere else (file:, ftp:, ...).
        raise APIError(f"refusing to download {url[:120]}: it redirects to a URL that "
                       "is not http(s)") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise TransportError(f"download failed for {url[:120]}: {type(exc).__name__}: "
                             f"{_short_cause(exc)}") from None
