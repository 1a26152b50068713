"""One HTTP/1.1 connection of the local endpoint: reading request bodies, writing JSON answers."""

from __future__ import annotations

import contextlib
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from rpq.local.jobs import _dumps

# Bodies up to this size are read and thrown away before an early error answer, so the
# client sees the answer and the connection stays usable.
DRAIN_LIMIT = 128 * 1024 * 1024
# How long a connection answered early (413) keeps reading the rest of the body.
LINGER_SECONDS = 5.0
_PHRASES = {s.value: s.phrase for s in HTTPStatus}


class _Answer(Exception):
    """Ends a request early with a JSON error."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class _Drop(Exception):
    """Ends a request by closing the connection without an answer."""


class JsonConnection(BaseHTTPRequestHandler):
    """Body reading and JSON answers; the endpoint's request handler builds on it."""

    protocol_version = "HTTP/1.1"

    _status = 0
    _body_done = False

    def log_message(self, format: str, *args: Any) -> None:
        # Access lines are written by _dispatch when asked for; nothing else is logged.
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, huge headers...) as JSON, never HTML.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send(code, {"error": message or _PHRASES.get(code, "error")})

    # ---- bodies ------------------------------------------------------------------------

    def _read_body(self, limit: int) -> bytes:
        if self._chunked():
            return self._read_chunked(limit)
        length = self._content_length()
        if length > limit:
            raise _Answer(413, f"request body is {length} bytes; the limit is {limit} bytes")
        self._body_done = True
        return self.rfile.read(length) if length else b""

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _content_length(self) -> int:
        text = self.headers.get("Content-Length")
        try:
            length = int(text) if text is not None else 0
        except ValueError:
            length = -1
        if length < 0:
            self._body_done = True
            self.close_connection = True
            raise _Answer(400, "invalid Content-Length header")
        return length

    def _read_chunked(self, limit: int) -> bytes:
        self._body_done = True
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _Answer(400, "malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                self.close_connection = True  # the rest of the chunks stay unread
                raise _Answer(413, f"request body is over the limit of {limit} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _finish_body(self) -> None:
        """Consume a body nobody will use, so the next request on this connection parses."""
        if self._body_done or self.close_connection:
            return
        self._body_done = True
        if self._chunked():
            self.close_connection = True
            return
        try:
            remaining = self._content_length()
        except _Answer:
            return
        if remaining > DRAIN_LIMIT:
            self.close_connection = True
            return
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)

    def _linger(self) -> None:
        """Read and drop what the client still sends after an early answer, then close.

        Closing a socket with unread data resets the connection, and a client still
        writing its body would see "broken pipe" instead of the answer it was sent.
        """
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(1 << 16):
                    break

    # ---- answers -----------------------------------------------------------------------

    def _send(self, status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send_bytes(status, _dumps(doc), headers)

    def _send_bytes(
        self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._status = status
        head = (
            f"HTTP/1.1 {status} {_PHRASES.get(status, '')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        if self.close_connection:
            head += "Connection: close\r\n"
        data = (head + "\r\n").encode("latin-1")
        if self.command == "HEAD":
            self.close_connection = True
            self.wfile.write(data)
        elif len(body) < 65536:
            self.wfile.write(data + body)
        else:
            self.wfile.write(data)
            self.wfile.write(body)
