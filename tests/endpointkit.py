"""Scripted stand-ins for the RunPod queue API on 127.0.0.1: a whole endpoint, or /status alone."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from batchkit import Run, batch_args, rpq
from helpers import FakeClock, LoopbackServer, request_body, respond
from imaging import make_images

from rpq.poll import Poller, StallDetector, Timing

# --- a whole endpoint, for `rpq batch` end to end --------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes | str | dict[str, Any] | list[Any]
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


DROP = "drop"  # close the connection without an answer
FAKE_KEY = "rpq_FAKEKEY_5e6f7a8b9c"


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
        self.server = LoopbackServer(self._handle, protocol="HTTP/1.1")

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v2"

    def env(self) -> dict[str, str]:
        """Where the fake listens, and an API key no output may ever show."""
        return {"RUNPOD_ENDPOINT_BASE_URL": self.base_url, "RUNPOD_ENDPOINT_ID": self.endpoint_id,
                "RUNPOD_API_KEY": FAKE_KEY}

    def stop(self) -> None:
        self.server.close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = request_body(h)
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
        respond(h, answer.status, answer.body, content_type=answer.content_type,
                headers=answer.headers)

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


def named_images(tmp_path: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """An input folder with one PNG per name, an output folder inside a work folder, and a
    template that sends the file name along, so a script can pick its answer per image."""
    src = tmp_path / "in"
    make_images(src, names)
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image": "{{image_base64}}", "name": "{{stem}}"}}))
    work = tmp_path / "work"
    work.mkdir()
    return src, work / "out", template


def scripted_batch(tmp_path: Path, fake: FakeEndpoint, names: list[str],
                   *options: str) -> tuple[Run, Path, Path]:
    """`rpq batch` of one PNG per name against `fake`, each job's input naming its image;
    the run, its input folder and its output folder."""
    src, out, template = named_images(tmp_path, names)
    run = rpq(*batch_args(src, out, "--input-template", template, *options), env=fake.env())
    return run, src, out


def job_records(out: Path) -> dict[str, dict[str, Any]]:
    """The run's job records from job_metrics.json, by input name."""
    data = json.loads((out / "job_metrics.json").read_text())
    return {j["input"]: j for j in data["jobs"]}


# --- /status and /status-sync alone, for the poller on a fake clock --------------------------

QUEUED = {"id": "j1", "status": "IN_QUEUE"}
RUNNING = {"id": "j1", "status": "IN_PROGRESS"}
DONE = {"id": "j1", "status": "COMPLETED", "delayTime": 2000, "executionTime": 3000,
        "output": {"ok": True}}


@dataclass(frozen=True)
class Say:
    """One scripted answer; `takes` seconds pass on the fake clock before it is sent."""

    code: int
    body: dict[str, Any] | str
    takes: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


class ScriptedEndpoint:
    """Answers /status and /status-sync from a script per route (the last answer repeats)."""

    def __init__(self, clock: FakeClock, loopback: Callable[..., LoopbackServer]) -> None:
        self.clock = clock
        self.script: dict[str, list[Say]] = {"status": [Say(404, {"error": "no such job"})],
                                             "status-sync": [Say(404, {"error": "not found"})]}
        self.asked: list[tuple[str, int | None]] = []  # (route, wait ms of a long poll)
        self.server = loopback(self._handle)

    def on(self, route: str, *answers: Say) -> None:
        self.script[route] = list(answers)

    def routes(self) -> list[str]:
        return [route for route, _ in self.asked]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        route = url.path.split("/")[3]  # /v2/ep/<route>/<job id>
        wait = parse_qs(url.query).get("wait")
        self.asked.append((route, int(wait[0]) if wait else None))
        queue = self.script.get(route) or [Say(404, {"error": "no route"})]
        say = queue.pop(0) if len(queue) > 1 else queue[0]
        self.clock.advance(say.takes)
        respond(h, say.code, say.body, headers=say.headers)


def poller(clock: FakeClock, *, mode: str = "auto", max_wait: float = 600.0,
           max_queue_time: float = 60.0, timing: Timing | None = None,
           detector: StallDetector | None = None) -> Poller:
    """A Poller that reads and sleeps on the fake clock."""
    detector = detector or StallDetector(max_queue_time, clock)
    return Poller(detector, timing or Timing(), max_wait=max_wait, mode=mode, clock=clock,
                  sleep=clock.sleep)

