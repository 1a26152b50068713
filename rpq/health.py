"""Reading an endpoint's /health: counts with every key optional, and a diagnosis in words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WORKER_KEYS = ("idle", "ready", "initializing", "running", "throttled", "unhealthy")
JOB_KEYS = ("inQueue", "inProgress", "completed", "failed", "retried")


def _counts(section: Any, keys: tuple[str, ...]) -> dict[str, int]:
    section = section if isinstance(section, dict) else {}
    out = {}
    for key in keys:
        value = section.get(key, 0)
        out[key] = value if isinstance(value, int) and not isinstance(value, bool) else 0
    return out


@dataclass(frozen=True)
class Diagnosis:
    workers: dict[str, int]
    jobs: dict[str, int]
    findings: list[str] = field(default_factory=list)
    degraded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "jobs": self.jobs, "findings": self.findings,
                "healthy": not self.degraded}


def diagnose(health: Any) -> Diagnosis:
    """Plain-words findings from a /health reply; `degraded` drives the exit code."""
    body = health if isinstance(health, dict) else {}
    w = _counts(body.get("workers"), WORKER_KEYS)
    j = _counts(body.get("jobs"), JOB_KEYS)
    findings: list[str] = []
    degraded = False
    warm = w["idle"] + w["ready"]
    if w["unhealthy"]:
        degraded = True
        findings.append(
            f"{w['unhealthy']} unhealthy worker(s): the worker is probably crash-looping. "
            "Check its logs in the RunPod console (a failing import, missing model or OOM)."
        )
    if w["throttled"]:
        degraded = True
        findings.append(
            f"{w['throttled']} throttled worker(s): no GPU capacity of that type right now. "
            "Add more GPU types to the endpoint or wait."
        )
    total_workers = warm + w["running"] + w["initializing"]
    if j["inQueue"] and total_workers == 0:
        degraded = True
        findings.append(
            f"{j['inQueue']} job(s) queued with no worker at all: the endpoint is scaling from "
            "zero, or has no capacity (check max workers and GPU availability)."
        )
    elif w["initializing"] and not warm:
        findings.append(
            f"{w['initializing']} worker(s) initializing: a cold start is in progress "
            "(typically 30-60 s)."
        )
    if not warm and not w["initializing"] and not (j["inQueue"] and total_workers == 0):
        findings.append("no idle or ready worker: the next job will likely wait for a cold "
                        "start (typically 30-60 s).")
    if j["inQueue"] and warm and not w["running"]:
        degraded = True
        findings.append(
            f"{j['inQueue']} job(s) queued while {warm} worker(s) sit idle: the queue is stuck. "
            "Cancel and resubmit the stuck jobs (rpq cancel), or check the endpoint's settings."
        )
    if not findings:
        findings.append("healthy: workers are ready and nothing is stuck.")
    return Diagnosis(w, j, findings, degraded)
