"""Worker processes for `rpq serve --worker`: start, relay output, signal, reap."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO


class WorkerCommandError(ValueError):
    """A --worker command that cannot be used; the message says why."""


def split_command(command: str) -> list[str]:
    """Split COMMAND like a POSIX shell would, refusing an empty one."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise WorkerCommandError(f"--worker {command!r} cannot be parsed: {exc}") from None
    if not argv:
        raise WorkerCommandError(
            '--worker needs a command that starts a runpod worker, e.g. "python worker.py"'
        )
    if shutil.which(argv[0]) is None:
        raise WorkerCommandError(
            f"--worker {command!r}: {argv[0]!r} is not a program on PATH nor a path to one; "
            f"give the command that starts a worker, e.g. \"python worker.py\""
        )
    return argv


class WorkerProcess:
    """One worker's OS process, in its own process group so its children go with it.

    Output (stdout and stderr, merged) goes line by line to `sink` prefixed with the
    worker id, or to LOG_DIR/<worker id>.log. `on_exit(returncode)` is called once, from
    a background thread, when the process has ended.
    """

    def __init__(
        self,
        worker_id: str,
        argv: list[str],
        env: Mapping[str, str],
        *,
        on_exit: Callable[[int], None],
        log_dir: Path | None = None,
        sink: IO[str] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self._on_exit = on_exit
        self._log: IO[bytes] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(log_dir / f"{worker_id}.log", "ab")  # noqa: SIM115 - closed at exit
        self._sink = sink
        try:
            self._proc = subprocess.Popen(
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            if self._log is not None:
                self._log.close()
            raise WorkerCommandError(
                f"cannot start worker command {argv[0]!r}: {exc.strerror or exc}"
            ) from None
        self.pid = self._proc.pid
        threading.Thread(target=self._relay, name=f"rpq-out-{worker_id}", daemon=True).start()
        threading.Thread(target=self._reap, name=f"rpq-wait-{worker_id}", daemon=True).start()

    def signal(self, sig: int) -> None:
        """Send sig to the worker's whole process group (its ping process included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout: float) -> bool:
        """True when the process ended within timeout."""
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _reap(self) -> None:
        code = self._proc.wait()
        # The SDK's ping process is a child that outlives a killed parent; take it along.
        self.kill()
        self._on_exit(code)

    def _relay(self) -> None:
        stream = self._proc.stdout
        if stream is None:
            return
        prefix = f"[{self.worker_id}] ".encode()
        try:
            for line in iter(stream.readline, b""):
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                else:
                    text = (prefix + line.rstrip(b"\r\n")).decode("utf-8", "replace")
                    out = self._sink or sys.stderr
                    with contextlib.suppress(OSError, ValueError):
                        out.write(text + "\n")
                        out.flush()
        finally:
            stream.close()
            if self._log is not None:
                self._log.close()
