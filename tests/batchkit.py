"""Running `rpq batch` in tests: through the CLI (CliRunner), as a subprocess, or in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import Gate, wait_for
from typer.testing import CliRunner

from rpq.cli import app
from rpq.local import LocalEndpoint
from rpq.metrics import JobRecord
from rpq.progress import Tracker


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def metrics(self, out: Path) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((out / "job_metrics.json").read_text())
        return data


class RecordingReporter:
    """A progress reporter for a Batch run in-process: keeps every record and message."""

    def __init__(self) -> None:
        self.records: list[JobRecord] = []
        self.messages: list[str] = []

    def start(self, tracker: Tracker) -> None:
        pass

    def job_done(self, record: JobRecord, skipped: bool = False,
                 twin_of: str | None = None) -> None:
        self.records.append(record)

    def message(self, text: str) -> None:
        self.messages.append(text)

    def stop(self) -> None:
        pass


def endpoint_env(ep: LocalEndpoint, key: str | None = None) -> dict[str, str]:
    env = {"RUNPOD_ENDPOINT_BASE_URL": ep.base_url, "RUNPOD_ENDPOINT_ID": ep.endpoint_id}
    if key:
        env["RUNPOD_API_KEY"] = key
    return env


def rpq(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    """Invoke the CLI in-process; stdout and stderr kept apart."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def batch_args(folder: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["batch", folder, "--out", out, "--no-progress", *extra]


def gated_template(folder: Path, gate: str = "g") -> Path:
    """An input template (t.json in `folder`) that holds every image at one gate of a Gate."""
    template = folder / "t.json"
    template.write_text(json.dumps({"input": {"image": "{{image_base64}}", "gate": gate}}))
    return template


def rpq_process(*args: str | Path, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    """The installed `rpq` as a real process (for signals)."""
    full_env = {**os.environ, **env}
    exe = Path(sys.executable).with_name("rpq")
    return subprocess.Popen(
        [str(exe), *(str(a) for a in args)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def in_flight(out: Path) -> int:
    """How many jobs the batch's journal shows accepted by the endpoint and not yet ended."""
    from rpq.journal import JOURNAL_NAME, Journal

    path = out / JOURNAL_NAME
    return len(Journal(path).in_flight()) if path.exists() else 0


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], object], timeout: float) -> None:
    """SIGKILL a batch process once `ready()` holds; it has exited and its pipes are closed."""
    try:
        wait_for(ready, timeout=timeout)
        proc.kill()
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def interrupt(proc: subprocess.Popen[str], ep: LocalEndpoint, gate: Gate, cancelled: int) -> str:
    """Ctrl-C a batch held at gate "g": once `cancelled` of its jobs are cancelled, the gate
    opens so that the running ones finish. The batch's stderr, when it has exited."""
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: sum(j["status"] == "CANCELLED" for j in ep.jobs()) == cancelled, timeout=20)
    gate.open("g")
    _, stderr = proc.communicate(timeout=30)
    return stderr


def stop(proc: subprocess.Popen[str]) -> None:
    """Make sure a batch process is gone and its pipes are closed."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()
