"""EndpointConfig: what a local endpoint is, each field set once (and as an option of rpq serve)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rpq.local.faults import FaultSpec, parse_faults
from rpq.options import FieldError, option

HandlerFunc = Callable[[dict[str, Any]], Any]
MB = 1024 * 1024

# Documented per-endpoint limits per 10 s window (retry and health have none documented).
DEFAULT_RATE_LIMITS: dict[str, int] = {
    "run": 1000,
    "runsync": 2000,
    "status": 2000,
    "status-sync": 2000,
    "stream": 2000,
    "cancel": 100,
    "purge-queue": 2,
}
# Option groups of `rpq serve --help` (the rest are listed under "Endpoint").
ENDPOINT, WORKERS, FAULTS = "Endpoint", "Workers", "Faults and limits"
OPS: tuple[str, ...] = (
    "run",
    "runsync",
    "status",
    "status-sync",
    "stream",
    "cancel",
    "retry",
    "purge-queue",
    "health",
)


def parse_process_time(text: str) -> float | tuple[float, float]:
    """'0.5' -> 0.5; '0.2-0.8' -> (0.2, 0.8)."""
    parts = text.strip().split("-")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1 and values[0] >= 0:
        return values[0]
    if len(values) == 2 and 0 <= values[0] <= values[1]:
        return values[0], values[1]
    raise ValueError(f"{text!r}: give seconds like 0.5, or a range like 0.2-0.8")


def parse_rate_limits(text: str) -> dict[str, int] | None:
    """'default' -> None (documented limits); 'off' -> {}; 'run=5,status=100' -> dict."""
    spec = text.strip().lower()
    if spec in ("", "default"):
        return None
    if spec in ("off", "none", "0"):
        return {}
    limits: dict[str, int] = {}
    for part in spec.split(","):
        op, sep, value = part.strip().partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(
                f"{text!r}: write OP=N with N >= 1, e.g. run=1000,status=2000, or 'off'")
        if op.strip() not in OPS:
            raise ValueError(f"unknown operation {op.strip()!r}; use one of " + ", ".join(OPS))
        limits[op.strip()] = int(value)
    return limits


def _faults(text: str) -> str:
    parse_faults(text)  # its ValueError says which fault is wrong
    return text


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    """Everything a LocalEndpoint needs. Times are seconds; wire values are milliseconds.

    rate_limits: None = the documented limits; a dict replaces them (only the ops it
    names are limited), so {} disables rate limiting.
    workers_min workers are always on: they cold-start once at start() and are never
    released; other workers start on demand and leave after idle_timeout.
    Fields declared with option() are also options of `rpq serve`.
    """

    endpoint_id: str = option("--endpoint-id", default="local", metavar="ID", group=ENDPOINT,
                              help="Endpoint id in the URL path.")
    api_key: str | None = option(
        "--api-key", default=None, envvar="RPQ_SERVE_API_KEY", metavar="KEY", secret=True,
        group=ENDPOINT,
        help="Require this key (Authorization: Bearer KEY or a raw key).")
    host: str = option("--host", default="127.0.0.1", metavar="HOST", group=ENDPOINT,
                       help="Interface to listen on; anything but loopback needs --api-key.")
    port: int = option("--port", default=0, cli_default=8000, metavar="PORT", group=ENDPOINT,
                       help="Port to listen on; 0 picks a free one.")
    handler: str | HandlerFunc = option(
        "--handler", default="echo", cli_default="remove-background", cli_type=str,
        metavar="NAME|FILE.py[:FUNC]", group=WORKERS,
        help="Built-in (remove-background, echo, sleep), path/worker.py or "
        "path/worker.py:function.")
    workers_max: int = option("--workers-max", default=3, metavar="N", group=WORKERS,
                              help="Most workers running at once.")
    workers_min: int = option("--workers-min", default=0, metavar="N", group=WORKERS,
                              help="Always-on workers (cold-start once, never released).")
    idle_timeout: float = option("--idle-timeout", default=5.0, metavar="SECONDS", group=WORKERS,
                                 help="Seconds an idle on-demand worker stays up.")
    cold_start: float = option("--cold-start", default=0.0, metavar="SECONDS", group=WORKERS,
                               help="Seconds a new worker takes to start.")
    process_time: float | tuple[float, float] = option(
        "--process-time", default=0.0, cli_type=str, cli_default="0", metavar="S|LO-HI",
        group=WORKERS, parse=parse_process_time,
        help="Extra seconds per job: S, or LO-HI for a uniform spread.")
    throttled: int = option("--throttled", default=0, metavar="N", group=WORKERS,
                            help="Worker slots that can never start (shown as throttled).")
    faults: str | FaultSpec = option(
        "--faults", default="", cli_type=str, metavar="KIND=P,...", group=FAULTS, parse=_faults,
        help="Injected faults, e.g. 500=0.1,429=0.05,drop=0.02,slow=0.1,fail=0.05,"
        "stuck=0.02,crash=0.01.")
    seed: int | None = option("--seed", default=None, metavar="N", group=FAULTS,
                              help="Seed for faults and timings (reproducible runs).")
    rate_limits: Mapping[str, int] | None = option(
        "--rate-limits", default=None, cli_type=str, cli_default="default", group=FAULTS,
        metavar="default|off|OP=N,...", parse=parse_rate_limits,
        help="RunPod's per-10 s limits, none, or only the named operations limited.")
    rate_window: float = 10.0
    run_retention: float = 1800.0
    sync_retention: float = 60.0
    slow_delay: float = 1.0
    crash_downtime: float = 1.0
    execution_timeout: float = 600.0
    ttl: float = 86400.0
    stream_wait: float = 10.0
    webhook_attempts: int = 3
    webhook_retry_interval: float = 10.0
    webhook_timeout: float = 10.0
    max_body_run: int = 10 * MB
    max_body_runsync: int = 20 * MB
    log_requests: bool = option("--log-requests", default=False,
                                help="One line per request on stderr.")
    # Worker processes (workers.py): each worker is a process started from worker_command.
    worker_command: str | None = option(
        "--worker", default=None, metavar="COMMAND", group=WORKERS,
        help="Run each worker as a process started from COMMAND (e.g. \"python worker.py\"), "
        "with RunPod's worker environment: the worker's own runpod SDK runs its real loop "
        "against this endpoint. Replaces --handler.")
    worker_log_dir: str | None = option(
        "--worker-logs", default=None, metavar="DIR", group=WORKERS,
        help="With --worker: write each worker's output to DIR/<worker id>.log instead of "
        "stderr.")
    stop_grace: float = option(
        "--stop-grace", default=5.0, metavar="SECONDS", group=WORKERS,
        help="Seconds a stopped worker or a cancelled handler has before it is killed.")
    ping_interval: float = option(
        "--ping-interval", default=10.0, metavar="SECONDS", group=WORKERS,
        help="With --worker: seconds between heartbeats (RUNPOD_PING_INTERVAL); at least 1.")
    heartbeat_timeout: float = 60.0
    take_hold: float = 5.0
    max_result: int = 20 * MB
    max_chunk: int = 1 * MB

    def __post_init__(self) -> None:
        _check(bool(self.endpoint_id) and all(
            (c.isascii() and c.isalnum()) or c in "-_" for c in self.endpoint_id
        ), "endpoint_id", f"{self.endpoint_id!r} must be letters, digits, '-' or '_'")
        _check(_is_int(self.port) and 0 <= self.port <= 65535, "port", "must be 0..65535")
        _check(_is_int(self.workers_max) and self.workers_max >= 1, "workers_max", "must be >= 1")
        _check(_is_int(self.throttled) and 0 <= self.throttled <= self.workers_max,
               "throttled", "must be between 0 and {workers_max}", "workers_max")
        _check(_is_int(self.workers_min)
               and 0 <= self.workers_min <= self.workers_max - self.throttled,
               "workers_min", "must be between 0 and {workers_max} - {throttled}",
               "workers_max", "throttled")
        for name in ("idle_timeout", "cold_start", "run_retention", "sync_retention",
                     "slow_delay", "crash_downtime", "webhook_retry_interval", "rate_window"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, name, "must be a number >= 0")
        for name in ("execution_timeout", "ttl", "stream_wait", "webhook_timeout"):
            value = getattr(self, name)
            _check(_is_number(value) and value > 0, name, "must be a number > 0")
        for name in ("webhook_attempts", "max_body_run", "max_body_runsync"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 1, name, "must be an int >= 1")
        _check(_is_number(self.ping_interval) and self.ping_interval >= 1, "ping_interval",
               "must be at least 1 second (the SDK counts whole seconds)")
        for name in ("heartbeat_timeout", "take_hold"):
            _check(_is_number(getattr(self, name)) and getattr(self, name) > 0, name,
                   "must be a number > 0")
        _check(_is_number(self.stop_grace) and self.stop_grace >= 0, "stop_grace",
               "must be a number >= 0")
        for name in ("max_result", "max_chunk"):
            _check(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name,
                   "must be an int >= 1")
        if self.worker_command is not None:
            _check(bool(self.worker_command.strip()), "worker_command",
                   "is empty; give the command that starts a worker, e.g. \"python worker.py\"")
        self.process_range()
        if self.rate_limits is not None:
            for op, limit in self.rate_limits.items():
                _check(op in OPS, "rate_limits", f"names unknown operation {op!r}; use one of "
                       + ", ".join(OPS))
                _check(_is_int(limit) and limit >= 1, "rate_limits",
                       f"for {op} must be an int >= 1")

    def process_range(self) -> tuple[float, float]:
        """process_time as a (lo, hi) range in seconds."""
        pt: Any = self.process_time
        if _is_number(pt) and pt >= 0:
            return float(pt), float(pt)
        if (
            isinstance(pt, (tuple, list))
            and len(pt) == 2
            and all(_is_number(v) for v in pt)
            and 0 <= pt[0] <= pt[1]
        ):
            return float(pt[0]), float(pt[1])
        raise FieldError("process_time", "must be seconds >= 0 or a (lo, hi) pair with "
                         f"0 <= lo <= hi, not {pt!r}")

    def limits(self) -> dict[str, int]:
        return dict(DEFAULT_RATE_LIMITS if self.rate_limits is None else self.rate_limits)


def _check(ok: bool, name: str, problem: str, *others: str) -> None:
    if not ok:
        raise FieldError(name, problem, *others)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


