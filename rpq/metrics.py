"""job_metrics.json: job records, run statistics and percentiles; atomic save, tolerant load."""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rpq.errors import UsageError
from rpq.files import atomic_write
from rpq.states import ERROR_KINDS, RECORD_STATUSES, Status

__all__ = [
    "ERROR_KINDS",
    "TERMINAL_STATUSES",
    "JobRecord",
    "Metrics",
    "job_end",
    "load_metrics",
    "now_iso",
    "percentile",
    "summarize",
    "write_metrics",
]

TERMINAL_STATUSES = RECORD_STATUSES
TIME_FIELDS = ("queue_time", "process_time", "total_time")
_FLOAT_FIELDS = ("submit_time", *TIME_FIELDS)
_EXPECTED_SHAPE = (
    '{"stats": {...}, "jobs": [{"job_id": ..., "status": "COMPLETED", "submit_time": ..., '
    '"queue_time": ..., "process_time": ..., "total_time": ..., "timestamp": ...}, ...]}'
)


@dataclass
class JobRecord:
    """What happened to one input image: status, timings in seconds, outputs, error."""

    input: str
    status: str
    job_id: str | None = None
    submit_time: float | None = None
    queue_time: float | None = None
    process_time: float | None = None
    total_time: float | None = None
    timestamp: str = ""
    outputs: list[str] = field(default_factory=list)
    attempts: int = 1
    error: str | None = None
    error_kind: str | None = None
    worker_id: str | None = None
    endpoint: str | None = None
    cold_start: bool | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> JobRecord:
        """Build a record from a dict, tolerating missing and unknown keys.

        Raises ValueError naming the field when a value has the wrong type.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a job must be a JSON object, not {type(d).__name__}")
        times = {name: _float_or_none(d.get(name), name) for name in _FLOAT_FIELDS}
        outputs = d.get("outputs") or []
        if not isinstance(outputs, list):
            raise ValueError(f"outputs must be a list of paths, not {outputs!r}")
        cold = d.get("cold_start")
        return cls(
            input=_str_or_none(d.get("input")) or "",
            status=(_str_or_none(d.get("status")) or "UNKNOWN").upper(),
            job_id=_str_or_none(d.get("job_id")),
            timestamp=_str_or_none(d.get("timestamp")) or "",
            outputs=[str(o) for o in outputs],
            attempts=_attempts(d.get("attempts")),
            error=_str_or_none(d.get("error")),
            error_kind=_str_or_none(d.get("error_kind")),
            worker_id=_str_or_none(d.get("worker_id")),
            endpoint=_str_or_none(d.get("endpoint")),
            cold_start=cold if isinstance(cold, bool) else None,
            **times,
        )


@dataclass
class Metrics:
    """A loaded job_metrics.json."""

    stats: dict[str, object]
    jobs: list[JobRecord]
    run: dict[str, object]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, not {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def now_iso(wall: float) -> str:
    """A record's timestamp: UTC, milliseconds, ISO 8601 with a Z."""
    ts = datetime.fromtimestamp(wall, tz=timezone.utc)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_end(job: JobRecord) -> float | None:
    """Epoch seconds when the job's result was known: submit + total, else its timestamp."""
    if job.submit_time is not None and job.total_time is not None:
        return job.submit_time + job.total_time
    return _parse_timestamp(job.timestamp)


class RunStats:
    """The "stats" block, accumulated one job at a time: 24 bytes a job, not the whole record."""

    def __init__(self) -> None:
        self.total = 0
        self.completed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.retried = 0
        self._series = {name: array("d") for name in TIME_FIELDS}
        self._first_start: float | None = None
        self._last_end: float | None = None

    def add(self, job: JobRecord) -> None:
        self.total += 1
        self.completed += job.status == Status.COMPLETED
        self.cancelled += job.status == Status.CANCELLED
        self.timed_out += job.status == Status.TIMED_OUT
        self.retried += max(job.attempts - 1, 0)
        for name, values in self._series.items():
            value = getattr(job, name)
            if value is not None:
                values.append(value)
        if job.submit_time is not None:
            self._first_start = min(self._first_start or job.submit_time, job.submit_time)
        end = job_end(job)
        if end is not None:
            self._last_end = max(self._last_end or end, end)

    def stats(self) -> dict[str, object]:
        """Jobs without a time are left out of the time figures."""
        total, completed = self.total, self.completed
        stats: dict[str, object] = {
            "total_jobs": total,
            "completed": completed,
            "failed": total - completed,
            "success_rate": round(100 * completed / total, 2) if total else 0.0,
        }
        for name, values in self._series.items():
            stats[f"avg_{name}"] = round3(sum(values) / len(values)) if values else None
        for name, values in self._series.items():
            for q in (50, 95, 99):
                stats[f"p{q}_{name}"] = round3(percentile(values, q))
            stats[f"max_{name}"] = round3(max(values)) if values else None
        wall = None
        if self._first_start is not None and self._last_end is not None:
            span = self._last_end - self._first_start
            wall = span if span > 0 else None
        stats["cancelled"] = self.cancelled
        stats["timed_out"] = self.timed_out
        stats["retried"] = self.retried
        stats["throughput_per_min"] = round3(completed * 60 / wall) if wall else None
        stats["wall_time"] = round3(wall)
        return stats


def summarize(jobs: Iterable[JobRecord]) -> dict[str, object]:
    """The "stats" block of job_metrics.json; jobs without a time are left out of its figures."""
    acc = RunStats()
    for job in jobs:
        acc.add(job)
    return acc.stats()


def write_metrics(
    path: Path,
    jobs: Iterable[JobRecord],
    run: Mapping[str, object],
    *,
    stats: Mapping[str, object] | None = None,
    runs: list[dict[str, Any]] | None = None,
) -> None:
    """Write job_metrics.json atomically: a crash leaves the old file or the new one.

    With `stats` given, `jobs` may be a one-pass iterator: the file is streamed, one job per
    line, so writing it costs no more memory for 100,000 jobs than for 10.
    """
    if stats is None:
        jobs = list(jobs)
        stats = summarize(jobs)
    atomic_write(Path(path), _document_chunks(stats, jobs, run, runs), fsync=True)


def _document_chunks(
    stats: Mapping[str, object], jobs: Iterable[JobRecord], run: Mapping[str, object],
    runs: list[dict[str, Any]] | None = None,
) -> Iterator[bytes]:
    def dump(value: object, indent: int | None = 2) -> str:
        text = json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False, default=str)
        return text.replace("\n", "\n  ") if indent else text

    yield ('{\n  "stats": ' + dump(dict(stats)) + ',\n  "jobs": [').encode()
    first = True
    for job in jobs:
        yield (("\n    " if first else ",\n    ") + dump(job.to_dict(), None)).encode()
        first = False
    earlier = "" if runs is None else ',\n  "runs": ' + dump(runs)
    yield (("\n  ]" if not first else "]") + ',\n  "run": ' + dump(dict(run)) + earlier
           + "\n}\n").encode()


def load_metrics(path: Path) -> Metrics:
    """Read a job_metrics.json (or a folder holding one); UsageError says what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        path = path / "job_metrics.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"{path}: no such file. Pass the job_metrics.json that `rpq batch` wrote"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). "
            f"A metrics file looks like {_EXPECTED_SHAPE}"
        ) from None
    return _metrics_from(document, path)


def _metrics_from(document: object, path: Path) -> Metrics:
    if not isinstance(document, dict):
        raise UsageError(
            f"{path}: expected a JSON object, found {type(document).__name__}. "
            f"A metrics file looks like {_EXPECTED_SHAPE}"
        )
    if "jobs" not in document:
        raise UsageError(
            f'{path}: no "jobs" key (keys found: {", ".join(sorted(document)) or "none"}). '
            f"A metrics file looks like {_EXPECTED_SHAPE}"
        )
    raw_jobs, stats, run = document["jobs"], document.get("stats") or {}, document.get("run") or {}
    if not isinstance(raw_jobs, list):
        raise UsageError(f'{path}: "jobs" must be a list of job objects, like {_EXPECTED_SHAPE}')
    if not isinstance(stats, dict) or not isinstance(run, dict):
        raise UsageError(f'{path}: "stats" and "run" must be JSON objects')
    jobs = []
    for index, raw in enumerate(raw_jobs):
        try:
            jobs.append(JobRecord.from_dict(raw))
        except ValueError as exc:
            raise UsageError(f"{path}: jobs[{index}]: {exc}") from None
    return Metrics(stats=stats, jobs=jobs, run=run)


def _parse_timestamp(text: str) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        # rpq writes UTC; a naive stamp from another tool is most likely UTC too.
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def round3(value: float | None) -> float | None:
    """Three decimals (a millisecond, for times in seconds); None stays None."""
    return None if value is None else round(value, 3)


def ms_to_seconds(value: object) -> float | None:
    """A duration the endpoint gave in milliseconds (delayTime, executionTime), in seconds.

    None unless it is a number of at least zero: the field is optional and not always sane.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return round(value / 1000.0, 3)
    return None


def _float_or_none(value: object, name: str) -> float | None:
    if value is None or value == "":
        return None
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None:
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    return number if math.isfinite(number) else None


def _str_or_none(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 1
    return max(int(value), 1)
