"""The worker side of the queue API: job-take, job-stop, job-done, job-stream and ping."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from rpq.local.fleet import Fleet
from rpq.local.workers import ProcessFleet

# op -> (method, number of ids after it: worker id, then job id)
WORKER_OPS: dict[str, tuple[str, int]] = {
    "job-take": ("GET", 1),
    "job-take-batch": ("GET", 1),
    "job-stop": ("GET", 1),
    "ping": ("GET", 1),
    "job-done": ("POST", 2),
    "job-stream": ("POST", 2),
}
MAX_BATCH = 64


@dataclass(frozen=True)
class WorkerCall:
    """One request to a worker route, as the HTTP layer parsed it."""

    op: str
    method: str
    ids: tuple[str, ...]
    query: str
    authorization: str | None


# (status, JSON document); None as the document means an empty answer (204).
Reply = tuple[int, Any]


def answer_worker(
    fleet: Fleet,
    call: WorkerCall,
    read_body: Callable[[int], bytes | None],
    *,
    endpoint_ok: bool = True,
) -> Reply:
    """Serve one worker call. read_body(limit) gives the body, or None when it is over limit."""
    params = parse_qs(call.query)
    if not isinstance(fleet, ProcessFleet) or not fleet.worker_key_matches(
        _token(call.authorization, params)
    ):
        return 401, {"error": "worker routes need the worker key that rpq serve --worker "
                              "gives its workers (RUNPOD_AI_API_KEY)"}
    if not endpoint_ok:
        return 404, {"error": "no such endpoint"}
    method, n_ids = WORKER_OPS[call.op]
    if call.method != method:
        return 405, {"error": f"{call.method} is not allowed on {call.op}"}
    if len(call.ids) != n_ids or not all(call.ids):
        return 404, {"error": f"{call.op} takes {n_ids} id(s) in the path"}
    worker_id = call.ids[0]
    reply: Reply | None
    if call.op in ("job-take", "job-take-batch"):
        reply = _take(fleet, call, worker_id, params)
    elif call.op == "job-stop":
        ids = fleet.stop_signals(worker_id)
        reply = None if ids is None else ((200, {"jobsToStop": ids}) if ids else (204, None))
    elif call.op == "ping":
        reply = _ping(fleet, worker_id, params)
    else:
        reply = _post(fleet, call, worker_id, read_body)
    if reply is None:
        return 404, {"error": f"unknown worker {worker_id!r}; it may have been stopped"}
    return reply


def _token(authorization: str | None, params: dict[str, list[str]]) -> str:
    # The SDK sends RUNPOD_AI_API_KEY raw, but reads ~/.runpod/config.toml first when it
    # exists; the key in the URL's query string still identifies the worker then.
    header = (authorization or "").strip()
    if header[:7].lower() == "bearer ":
        header = header[7:].strip()
    return (params.get("key") or [header])[-1]


def _take(
    fleet: ProcessFleet, call: WorkerCall, worker_id: str, params: dict[str, list[str]]
) -> Reply | None:
    count = 1
    if call.op == "job-take-batch":
        try:
            count = max(1, min(MAX_BATCH, int((params.get("batch_size") or ["1"])[-1])))
        except ValueError:
            return 400, {"error": "batch_size must be a whole number"}
    in_progress = (params.get("job_in_progress") or ["0"])[-1] == "1"
    jobs = fleet.take(worker_id, count, in_progress)
    if jobs is None:
        return None
    if not jobs:
        return 204, None
    return 200, (jobs if call.op == "job-take-batch" else jobs[0])


def _ping(fleet: ProcessFleet, worker_id: str, params: dict[str, list[str]]) -> Reply | None:
    job_ids = [j for text in params.get("job_id", []) for j in text.split(",") if j]
    unhealthy = None
    if (params.get("status") or [""])[-1] == "unhealthy":
        check = (params.get("check") or ["a fitness check"])[-1]
        unhealthy = f"{check}: {(params.get('reason') or ['no reason given'])[-1]}"
    return (200, {}) if fleet.ping(worker_id, job_ids, unhealthy) else None


def _post(
    fleet: ProcessFleet,
    call: WorkerCall,
    worker_id: str,
    read_body: Callable[[int], bytes | None],
) -> Reply | None:
    job_id = call.ids[1]
    limit = fleet.config.max_result
    raw = read_body(limit)
    if raw is None:
        if call.op == "job-stream" or not fleet.job_too_big(worker_id, job_id):
            return 413, {"error": f"body over the {limit} byte limit"}
        return 400, {"error": f"result over the {limit} byte limit; upload big outputs "
                              f"(e.g. to S3) and return their URL"}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return 400, {"error": f"invalid JSON body: {exc}"}
    done = fleet.job_done if call.op == "job-done" else fleet.job_stream
    return (200, {}) if done(worker_id, job_id, doc) else None
