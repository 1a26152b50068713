"""`rpq` that counts the bytes it sends on every socket (RunPod API and S3 alike), for the bench.

The total is written to the file named by BENCH_SENT_FILE when the process exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
from typing import Any

from rpq.cli import main

_sent = [0]
_send, _sendall = socket.socket.send, socket.socket.sendall


def _counted_send(self: socket.socket, data: Any, *args: Any) -> int:
    n = _send(self, data, *args)
    _sent[0] += n
    return n


def _counted_sendall(self: socket.socket, data: Any, *args: Any) -> None:
    _sendall(self, data, *args)
    _sent[0] += memoryview(data).nbytes


socket.socket.send = _counted_send  # type: ignore[method-assign]
socket.socket.sendall = _counted_sendall  # type: ignore[method-assign]


@atexit.register
def _report() -> None:
    path = os.environ.get("BENCH_SENT_FILE")
    if path:
        with open(path, "w") as fh:
            fh.write(str(_sent[0]))


if __name__ == "__main__":
    sys.argv[0] = "rpq"
    sys.exit(main())
