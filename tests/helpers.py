"""Test helpers: waiting on conditions, a fake clock, a loopback HTTP server, gated jobs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# A wait's timeout only bounds how long a failing test hangs: a passing test returns as soon as
# its condition holds. A machine busy with other work can be many times slower than usual, so
# each wait allows SLACK times what it names (RPQ_TEST_SLACK=1 for the names as written).
SLACK = float(os.environ.get("RPQ_TEST_SLACK", "3"))


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "",
) -> T:
    """Poll until predicate() is truthy and return its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout * SLACK
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise AssertionError(
                f"timed out after {timeout * SLACK:g} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
        last = predicate()
    return last


class FakeClock:
    """A monotonic clock that moves only when a test advances it or something sleeps on it.

    A `frozen` clock records sleeps without moving: time stands still unless the test says.
    """

    def __init__(self, start: float = 0.0, *, frozen: bool = False) -> None:
        self.now = start
        self.frozen = frozen
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self.frozen:
            self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


Handle = Callable[[BaseHTTPRequestHandler], None]


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1, port 0, that hands every request to `handle`.

    `handle` gets the request handler and answers with `respond` (or writes the answer itself,
    or closes the connection). Stop it with `close`, or use it as a context manager.
    """

    def __init__(self, handle: Handle, *, protocol: str = "HTTP/1.0") -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol

            def do_GET(self) -> None:
                handle(self)

            do_POST = do_PUT = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_body(h: BaseHTTPRequestHandler) -> bytes:
    """The request's body, as long as its Content-Length says."""
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def respond(
    h: BaseHTTPRequestHandler,
    status: int,
    body: bytes | str | dict[str, Any] | list[Any] = b"",
    *,
    content_type: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    """Send a whole answer: JSON for a dict or list, the bytes or text as they are otherwise."""
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        content_type = content_type or "application/json"
    else:
        data = body.encode() if isinstance(body, str) else body
    h.send_response(status)
    if content_type:
        h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    for name, value in headers:
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(data)


class WebhookReceiver:
    """A webhook target on 127.0.0.1 that keeps the JSON body of every delivery.

    It answers 500 to the first `failures` deliveries and `status` to the rest.
    """

    def __init__(self, loopback: Callable[..., LoopbackServer], *, status: int = 200,
                 failures: int = 0) -> None:
        self.bodies: list[Any] = []
        self.status = status
        self.failures = failures
        self._lock = threading.Lock()
        self.url = loopback(self._handle).url + "/hook"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.bodies.append(json.loads(request_body(h)))
            count = len(self.bodies)
        respond(h, 500 if count <= self.failures else self.status)


class Gate:
    """A handler that blocks each job until the test opens its gate (input["gate"])."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._timeout = timeout
        self.started: list[str] = []
        self._all_open = False

    def event(self, name: str) -> threading.Event:
        with self._lock:
            event = self._events.setdefault(name, threading.Event())
            if self._all_open:
                event.set()
            return event

    def __call__(self, job: dict[str, Any]) -> Any:
        name = str(job["input"].get("gate", "default"))
        with self._lock:
            self.started.append(name)
        if not self.event(name).wait(self._timeout):
            raise TimeoutError(f"gate {name} was never opened")
        return {"gate": name}

    def echo(self, job: dict[str, Any]) -> dict[str, Any]:
        """A handler: each job waits at its gate, then sends its image back."""
        self(job)
        return {"image": job["input"]["image"]}

    def open(self, name: str = "default") -> None:
        self.event(name).set()

    def open_all(self) -> None:
        """Open every gate, including those of jobs that have not started yet."""
        with self._lock:
            self._all_open = True
            events = list(self._events.values())
        for event in events:
            event.set()


@contextlib.contextmanager
def tiny_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of `size`, for a full disk (needs mount rights; the test is skipped without)."""
    where = Path(tempfile.mkdtemp(prefix="rpq-full-"))
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                  str(where)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        mounted = False
    if not mounted:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
        shutil.rmtree(where, ignore_errors=True)
