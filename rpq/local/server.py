"""HTTP layer of the local endpoint: routing, auth, body limits, injected faults, rate limits."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

from rpq.hosts import is_loopback
from rpq.local.config import OPS, EndpointConfig
from rpq.local.connection import (
    JsonConnection,
    _Answer,
    _Drop,
)
from rpq.local.fleet import Fleet
from rpq.local.jobs import JobConflict, JobNotFound, JobRequest
from rpq.local.worker_routes import WORKER_OPS, WorkerCall, answer_worker
from rpq.local.workers import make_fleet, worker_base_url

log = logging.getLogger("rpq.serve")

# op -> (allowed methods, takes a job id)
ROUTES: dict[str, tuple[tuple[str, ...], bool]] = {
    "run": (("POST",), False),
    "runsync": (("POST",), False),
    "status": (("GET", "POST"), True),
    "status-sync": (("GET", "POST"), True),
    "stream": (("GET", "POST"), True),
    "cancel": (("POST",), True),
    "retry": (("POST",), True),
    "purge-queue": (("POST",), False),
    "health": (("GET",), False),
}
_JOB_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")



class RateLimiter:
    """Sliding-window request limits per operation."""

    def __init__(
        self, limits: Mapping[str, int], window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = dict(limits)
        self._window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {op: deque() for op in self._limits}
        self._lock = threading.Lock()

    def check(self, op: str) -> float | None:
        """None when the request may go ahead, else seconds until it would be allowed."""
        limit = self._limits.get(op)
        if limit is None:
            return None
        hits = self._hits[op]
        with self._lock:
            now = self._clock()
            cutoff = now - self._window
            while hits and hits[0] <= cutoff:
                hits.popleft()
            if len(hits) >= limit:
                return hits[0] + self._window - now
            hits.append(now)
            return None


def parse_job_request(doc: Any) -> JobRequest:
    """Validate a /run or /runsync body; ValueError says what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError('the body must be a JSON object like {"input": {...}}')
    if "input" not in doc:
        raise ValueError('the body has no "input"; send {"input": {...}}')
    if not isinstance(doc["input"], dict):
        raise ValueError('"input" must be a JSON object')
    webhook = doc.get("webhook")
    if webhook is not None and not (
        isinstance(webhook, str) and webhook.startswith(("http://", "https://"))
    ):
        raise ValueError('"webhook" must be an http:// or https:// URL')
    policy = doc.get("policy")
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise ValueError('"policy" must be a JSON object')
    low = policy.get("lowPriority", False)
    if low is None:
        low = False
    if not isinstance(low, bool):
        raise ValueError('"policy.lowPriority" must be true or false')
    return JobRequest(
        input=doc["input"],
        webhook=webhook,
        execution_timeout=_policy_ms(policy, "executionTimeout"),
        ttl=_policy_ms(policy, "ttl"),
        low_priority=low,
        s3_config=doc.get("s3Config"),
    )


def _policy_ms(policy: dict[str, Any], key: str) -> float | None:
    value = policy.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f'"policy.{key}" must be a number of milliseconds > 0')
    return float(value) / 1000.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoint: LocalEndpoint) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.endpoint = endpoint
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer is normal; anything else is worth a line.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            log.exception("unexpected error serving %s", client_address)


class _RequestHandler(JsonConnection):
    server_version = "rpq-local"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    # ---- request flow ------------------------------------------------------------------

    def _dispatch(self) -> None:
        ep = self.server.endpoint
        started = time.perf_counter()
        self._status = 0
        self._body_done = False
        try:
            try:
                self._handle(ep)
            except _Answer as answer:
                if answer.status == 413:
                    self.close_connection = True  # answer first, then read what still comes
                self._finish_body()
                self._send(answer.status, {"error": answer.message}, answer.headers)
                if answer.status == 413:
                    self._linger()
        except _Drop:
            self.close_connection = True
        except OSError:  # the client went away
            self.close_connection = True
        except Exception:
            log.exception("internal error on %s %s", self.command, self.path.split("?")[0])
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send(500, {"error": "internal error in the local endpoint"})
        if ep.config.log_requests:
            elapsed = (time.perf_counter() - started) * 1000
            status = self._status or "dropped"
            sys.stderr.write(
                f"rpq serve: {self.command} {self.path.split('?')[0]} {status} {elapsed:.1f} ms\n"
            )

    def _handle(self, ep: LocalEndpoint) -> None:
        method = self.command
        path, _, query = self.path.partition("?")
        parts = path.split("/")
        if len(parts) > 4 and parts[-1] == "":
            parts.pop()  # tolerate one trailing slash
        if len(parts) > 4 and parts[:2] == ["", "v2"] and parts[3] in WORKER_OPS:
            self._worker_route(ep, parts, query)
            return
        if len(parts) < 4 or parts[0] != "" or parts[1] != "v2" or parts[3] not in ROUTES:
            raise _Answer(404, f"no route {path}; the API is /v2/{{endpoint_id}}/{{operation}}")
        op = parts[3]
        ep.count_call(op)
        methods, takes_id = ROUTES[op]
        extra = parts[4:]
        if len(extra) > (1 if takes_id else 0):
            raise _Answer(404, f"no route {path}")
        if not ep.authorized(self.headers.get("Authorization")):
            raise _Answer(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                (("WWW-Authenticate", "Bearer"),),
            )
        if unquote(parts[2]) != ep.endpoint_id:
            raise _Answer(404, f"endpoint {unquote(parts[2])!r} not found")
        if method not in methods:
            raise _Answer(
                405, f"{method} is not allowed on {op}", (("Allow", ", ".join(methods)),)
            )
        retry_after = ep.rate_limited(op)
        if retry_after is not None:
            raise _Answer(
                429,
                f"rate limit for {op} exceeded; retry later",
                (("Retry-After", str(max(1, math.ceil(retry_after)))),),
            )
        if op != "health":
            fault = ep.http_fault()
            if fault == "drop":
                raise _Drop()
            if fault == "500":
                raise _Answer(500, "injected fault: internal server error")
            if fault == "429":
                raise _Answer(429, "injected fault: too many requests", (("Retry-After", "1"),))
        job_id = ""
        if takes_id:
            job_id = unquote(extra[0]) if extra else ""
            if not job_id:
                raise _Answer(400, f"{op} needs a job id: /v2/{{endpoint_id}}/{op}/{{job_id}}")
            if len(job_id) > 128 or not _JOB_ID_CHARS.issuperset(job_id):
                raise _Answer(400, "malformed job id")
        if op not in ("run", "runsync"):
            self._finish_body()
        getattr(self, "_op_" + op.replace("-", "_"))(ep, job_id, query)

    def _worker_route(self, ep: LocalEndpoint, parts: list[str], query: str) -> None:
        call = WorkerCall(
            op=parts[3],
            method=self.command,
            ids=tuple(unquote(p) for p in parts[4:]),
            query=query,
            authorization=self.headers.get("Authorization"),
        )
        status, doc = answer_worker(
            ep.fleet, call, self._worker_body, endpoint_ok=unquote(parts[2]) == ep.endpoint_id
        )
        self._finish_body()
        if doc is None:
            self._send_bytes(status, b"")
        else:
            self._send(status, doc)

    def _worker_body(self, limit: int) -> bytes | None:
        try:
            return self._read_body(limit)
        except _Answer as answer:
            if answer.status != 413:
                raise
            self._body_done = self.close_connection
            return None

    # ---- operations --------------------------------------------------------------------

    def _op_run(self, ep: LocalEndpoint, _: str, query: str) -> None:
        request = self._job_request(ep.config.max_body_run)
        job = ep.fleet.submit(request, sync=False)
        self._send(200, {"id": job.id, "status": "IN_QUEUE"})

    def _op_runsync(self, ep: LocalEndpoint, _: str, query: str) -> None:
        wait = _wait_seconds(query, 90_000, 1_000, 300_000)
        request = self._job_request(ep.config.max_body_runsync)
        job = ep.fleet.submit(request, sync=True)
        doc = ep.fleet.wait_terminal(job.id, wait)
        if doc is None:
            raise _Answer(404, f"job {job.id} expired before it finished")
        if doc["status"] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            doc = {"id": doc["id"], "status": doc["status"]}
        self._send(200, doc)

    def _op_status(self, ep: LocalEndpoint, job_id: str, query: str) -> None:
        body = ep.fleet.status_body(job_id)
        if body is None:
            raise _not_found(job_id)
        self._send_bytes(200, body)

    def _op_status_sync(self, ep: LocalEndpoint, job_id: str, query: str) -> None:
        wait = _wait_seconds(query, 90_000, 1_000, 90_000)
        doc = ep.fleet.wait_terminal(job_id, wait)
        if doc is None:
            raise _not_found(job_id)
        self._send(200, doc)

    def _op_stream(self, ep: LocalEndpoint, job_id: str, query: str) -> None:
        wait = _wait_seconds(query, int(ep.config.stream_wait * 1000), 1_000, 300_000)
        doc = ep.fleet.stream(job_id, wait)
        if doc is None:
            raise _not_found(job_id)
        self._send(200, doc)

    def _op_cancel(self, ep: LocalEndpoint, job_id: str, query: str) -> None:
        try:
            self._send(200, ep.fleet.cancel(job_id))
        except JobNotFound:
            raise _not_found(job_id) from None

    def _op_retry(self, ep: LocalEndpoint, job_id: str, query: str) -> None:
        try:
            self._send(200, ep.fleet.retry(job_id))
        except JobNotFound:
            raise _not_found(job_id) from None
        except JobConflict as exc:
            raise _Answer(400, str(exc)) from None

    def _op_purge_queue(self, ep: LocalEndpoint, _: str, query: str) -> None:
        self._send(200, {"removed": ep.fleet.purge_queue(), "status": "completed"})

    def _op_health(self, ep: LocalEndpoint, _: str, query: str) -> None:
        self._send(200, ep.fleet.health())

    # ---- bodies ------------------------------------------------------------------------

    def _job_request(self, limit: int) -> JobRequest:
        raw = self._read_body(limit)
        if not raw.strip():
            raise _Answer(400, 'empty body; send {"input": {...}}')
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise _Answer(400, f"invalid JSON body: {exc}") from None
        try:
            return parse_job_request(doc)
        except ValueError as exc:
            raise _Answer(400, str(exc)) from None



def _not_found(job_id: str) -> _Answer:
    return _Answer(404, f"job {job_id} not found (unknown, expired or purged)")


def _wait_seconds(query: str, default: int, lo: int, hi: int) -> float:
    ms: float = default
    if query:
        values = parse_qs(query).get("wait")
        if values:
            try:
                ms = float(values[-1])
            except ValueError:
                raise _Answer(400, "wait must be a number of milliseconds") from None
            if not math.isfinite(ms):
                raise _Answer(400, "wait must be a number of milliseconds")
    return min(max(ms, lo), hi) / 1000.0


class LocalEndpoint:
    """A local RunPod-compatible queue endpoint on a background thread.

    Takes an EndpointConfig and/or its fields as keyword overrides (see there for meanings):
    `LocalEndpoint(config, workers_max=2)` or `LocalEndpoint(handler="echo")`.
    """

    def __init__(self, config: EndpointConfig | None = None, /, **overrides: Any) -> None:
        self.config = replace(config or EndpointConfig(), **overrides)
        api_key = self.config.api_key
        if api_key is not None and not api_key.strip():
            raise ValueError("the API key is empty; pass a real key or none at all")
        if not is_loopback(self.config.host) and api_key is None:
            raise ValueError(
                f"refusing to listen on {self.config.host!r} without an API key, since anyone "
                f"who can reach it could use it: set one (rpq serve --api-key KEY, or the env var "
                f"RPQ_SERVE_API_KEY), or listen on 127.0.0.1"
            )
        self._key = None if api_key is None else api_key.encode("utf-8")
        self._fleet: Fleet = make_fleet(self.config)
        self._limiter = RateLimiter(self.config.limits(), self.config.rate_window)
        self._calls = dict.fromkeys(OPS, 0)
        self._calls_lock = threading.Lock()
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"<LocalEndpoint {where} handler={self._fleet.handler.name!r}>"

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalEndpoint:
        if self._server is not None:
            raise RuntimeError("this LocalEndpoint is already started")
        self._server = _Server((self.config.host, self.config.port), self)
        self._fleet.start(worker_base_url(self.config.host, self.port))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"rpq-serve-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving at once; running handlers are abandoned on daemon threads."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._fleet.stop()
        server = self._server
        if server is None:
            return
        if self._thread is not None:
            server.shutdown()
            self._thread.join(timeout=1.0)
        server.server_close()
        with server.connections_lock:
            conns = list(server.connections)
        for conn in conns:
            # Wakes handler threads blocked reading idle keep-alive connections.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- addresses ---------------------------------------------------------------------

    @property
    def endpoint_id(self) -> str:
        return self.config.endpoint_id

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("start the LocalEndpoint first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/v2"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.endpoint_id}"

    # ---- inspection and control --------------------------------------------------------

    def calls(self) -> dict[str, int]:
        """Requests received per operation, including those answered with a fault or 429."""
        with self._calls_lock:
            return dict(self._calls)

    # ---- what the request handler asks ------------------------------------------------

    @property
    def fleet(self) -> Fleet:
        """The jobs and workers behind the HTTP layer."""
        return self._fleet

    def count_call(self, op: str) -> None:
        with self._calls_lock:
            self._calls[op] += 1

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header (Bearer KEY, or the raw key) carries the key."""
        if self._key is None:
            return True
        if not header:
            return False
        token = header.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        # Header text was decoded as latin-1, so this gives back the bytes that were sent.
        return hmac.compare_digest(token.encode("latin-1", "replace"), self._key)

    def rate_limited(self, op: str) -> float | None:
        """None when a request for `op` may go ahead, else seconds until it would be."""
        return self._limiter.check(op)

    def http_fault(self) -> str | None:
        """The injected fault for this request ("drop", "500", "429") after any slow delay."""
        fault, slow = self._fleet.dice.http_fault()
        if slow and self._stopped.wait(self.config.slow_delay):
            return "drop"  # stopped while slowed down
        return fault

    def jobs(self) -> list[dict[str, Any]]:
        return self._fleet.jobs()

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._fleet.job(job_id)

    def health(self) -> dict[str, dict[str, int]]:
        return self._fleet.health()

    def pause(self) -> None:
        """Stall the endpoint: workers pick up no jobs until resume()."""
        self._fleet.pause()

    def resume(self) -> None:
        self._fleet.resume()
