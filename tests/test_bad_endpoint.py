"""Bad answers from the endpoint: each one is reported against its image or job, and the rest
of the batch is unharmed; nothing is written outside the output folder."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, rpq
from imaging import png_bytes

HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


# --- a scriptable stand-in for the RunPod queue API -------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes | str | dict[str, Any] | list[Any]
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


DROP = "drop"  # close the connection without an answer


@dataclass
class FakeJob:
    id: str
    input: dict[str, Any]
    polls: int = 0
    cancelled: bool = False

    @property
    def name(self) -> str:
        return str(self.input.get("name", ""))


# script(op, job) -> a Reply, DROP, or None for the normal answer.
Script = Callable[[str, "FakeJob | None"], "Reply | str | None"]


class FakeEndpoint:
    """Just enough of /v2/EP/{health,run,status,status-sync,cancel} to answer garbage on cue.

    By default every job is COMPLETED at its first poll with the image it was sent.
    """

    def __init__(self, script: Script | None = None, endpoint_id: str = "ep") -> None:
        self.script: Script = script or (lambda op, job: None)
        self.endpoint_id = endpoint_id
        self.jobs: dict[str, FakeJob] = {}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def env(self) -> dict[str, str]:
        return {"RUNPOD_ENDPOINT_BASE_URL": self.base_url, "RUNPOD_ENDPOINT_ID": self.endpoint_id}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        parts = h.path.split("?")[0].split("/")
        op = parts[3] if len(parts) > 3 else ""
        job_id = parts[4] if len(parts) > 4 else ""
        job: FakeJob | None = None
        with self._lock:
            self.calls[op] += 1
            if op == "run":
                job = FakeJob(str(uuid.uuid4()), json.loads(raw)["input"])
                self.jobs[job.id] = job
            else:
                job = self.jobs.get(job_id)
                if job is not None and op in ("status", "status-sync"):
                    job.polls += 1
        answer = self.script(op, job)
        if answer is None:
            answer = self._normal(op, job)
        if answer == DROP:
            h.close_connection = True
            return
        assert isinstance(answer, Reply)
        body = answer.body
        data = body.encode() if isinstance(body, str) else (
            body if isinstance(body, bytes) else json.dumps(body).encode())
        h.send_response(answer.status)
        h.send_header("Content-Type", answer.content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)

    def _normal(self, op: str, job: FakeJob | None) -> Reply:
        if op == "health":
            return Reply(200, {"jobs": {"inQueue": 0}, "workers": {"idle": 1, "running": 0}})
        if job is None:
            return Reply(404, {"error": "job not found"})
        if op == "run":
            return Reply(200, {"id": job.id, "status": "IN_QUEUE"})
        if op == "cancel":
            job.cancelled = True
            return Reply(200, {"id": job.id, "status": "CANCELLED"})
        if job.cancelled:
            return Reply(200, {"id": job.id, "status": "CANCELLED"})
        return Reply(200, {"id": job.id, "status": "COMPLETED", "delayTime": 5,
                           "executionTime": 7, "output": {"image": job.input["image"]}})


@pytest.fixture
def fake_endpoint() -> Iterator[Callable[[Script], FakeEndpoint]]:
    started: list[FakeEndpoint] = []

    def make(script: Script) -> FakeEndpoint:
        fake = FakeEndpoint(script)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


# --- helpers ----------------------------------------------------------------------------------


def _images(tmp_path: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """An input folder with one PNG per name, an output folder inside a work folder, and a
    template that sends the file name along, so a script can pick its answer per image."""
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(names):
        (src / f"{name}.png").write_bytes(png_bytes(i))
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image": "{{image_base64}}", "name": "{{stem}}"}}))
    work = tmp_path / "work"
    work.mkdir()
    return src, work / "out", template


def _jobs(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / "job_metrics.json").read_text())
    return {j["input"]: j for j in data["jobs"]}


def _files_outside(work: Path, out: Path) -> list[Path]:
    return [p for p in work.rglob("*") if not p.is_relative_to(out)]


def _leftover_parts(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.part")]


# --- long polls the endpoint does not hold ----------------------------------------------------


@pytest.mark.timeout(60)
def test_status_sync_answered_at_once_falls_back_to_status_polls(
    tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]
) -> None:
    # An endpoint (or proxy) that answers /status-sync at once instead of holding it: after
    # a few such answers rpq polls /status instead, and the jobs finish.
    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op == "status-sync" and job is not None:
            return Reply(200, {"id": job.id, "status": "IN_QUEUE"})
        if op == "status" and job is not None and job.polls < 5:
            return Reply(200, {"id": job.id, "status": "IN_PROGRESS"})
        return None

    fake = fake_endpoint(script)
    src, out, template = _images(tmp_path, ["a", "b", "c"])
    run = rpq(*batch_args(src, out, "--input-template", template), env=fake.env())
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert fake.calls["status-sync"] >= 3 and fake.calls["status"] >= 1
