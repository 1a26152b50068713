"""Job records, percentiles, run statistics, and job_metrics.json load/save."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpq.errors import UsageError
from rpq.metrics import (
    ERROR_KINDS,
    JobRecord,
    Metrics,
    load_metrics,
    percentile,
    summarize,
    write_metrics,
)

DATA = Path(__file__).parent / "data" / "metrics"
seconds = st.floats(0, 10_000, allow_nan=False, allow_infinity=False)


def close(a: float | None, b: float | None, tol: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# --- percentile ------------------------------------------------------------------------------


def test_percentile_examples() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 0, 20], 95) == pytest.approx(19.0)
    assert percentile([1, 2, 3, 4, 5], 0) == 1
    assert percentile([1, 2, 3, 4, 5], 100) == 5


@pytest.mark.parametrize("q", [-1, 100.5, math.nan])
def test_percentile_rejects_q_outside_0_100(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


@given(st.lists(seconds, min_size=2, max_size=60), st.integers(1, 99))
def test_percentile_matches_statistics_inclusive_quantiles(values: list[float], q: int) -> None:
    reference = statistics.quantiles(values, n=100, method="inclusive")[q - 1]
    assert close(percentile(values, q), reference)


@given(st.lists(seconds, min_size=1, max_size=60), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_bounded_and_monotonic(values: list[float], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    p_low, p_high = percentile(values, low), percentile(values, high)
    assert p_low is not None and p_high is not None
    assert min(values) <= p_low <= p_high + 1e-9 <= max(values) + 2e-9
    assert close(percentile(values, 50), statistics.median(values))


# --- summarize -------------------------------------------------------------------------------

statuses = st.sampled_from(["COMPLETED", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"])
maybe = st.none() | seconds


@st.composite
def job_records(draw: st.DrawFn) -> JobRecord:
    return JobRecord(
        input=draw(st.text(max_size=8)),
        status=draw(statuses),
        job_id=draw(st.none() | st.uuids().map(str)),
        submit_time=draw(st.none() | st.floats(1.7e9, 1.7e9 + 3600)),
        queue_time=draw(maybe),
        process_time=draw(maybe),
        total_time=draw(maybe),
        attempts=draw(st.integers(1, 4)),
        error_kind=draw(st.none() | st.sampled_from(ERROR_KINDS)),
        cold_start=draw(st.none() | st.booleans()),
    )


def reference_stats(jobs: list[JobRecord]) -> dict[str, float | int | None]:
    """A deliberately naive re-derivation of the headline figures."""
    out: dict[str, float | int | None] = {"total_jobs": len(jobs)}
    out["completed"] = len([j for j in jobs if j.status == "COMPLETED"])
    out["failed"] = len(jobs) - out["completed"]
    for name in ("queue_time", "process_time", "total_time"):
        values = [getattr(j, name) for j in jobs if getattr(j, name) is not None]
        out[f"avg_{name}"] = statistics.fmean(values) if values else None
        out[f"max_{name}"] = max(values) if values else None
        out[f"p50_{name}"] = statistics.median(values) if values else None
    out["retried"] = sum(j.attempts for j in jobs) - len(jobs)
    timed = [j for j in jobs if j.submit_time is not None and j.total_time is not None]
    ends = [j.submit_time + j.total_time for j in timed]  # type: ignore[operator]
    starts = [j.submit_time for j in jobs if j.submit_time is not None]
    span = max(ends) - min(starts) if ends and starts else 0
    out["throughput_per_min"] = out["completed"] / (span / 60) if span > 0 else None
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(job_records(), max_size=40))
def test_summarize_matches_a_naive_reference(jobs: list[JobRecord]) -> None:
    stats = summarize(jobs)
    expected = reference_stats(jobs)
    for key, value in expected.items():
        got = stats[key]
        assert close(got, value, tol=2e-3) if isinstance(value, float) else got == value, key
    if jobs:
        completed = sum(j.status == "COMPLETED" for j in jobs)
        assert stats["success_rate"] == round(100 * completed / len(jobs), 2)
    assert stats["cancelled"] == sum(j.status == "CANCELLED" for j in jobs)
    assert stats["timed_out"] == sum(j.status == "TIMED_OUT" for j in jobs)


def test_summarize_keys_and_rounding() -> None:
    jobs = [
        JobRecord(
            "a.png",
            "COMPLETED",
            submit_time=100.0,
            queue_time=1.23456,
            process_time=2.0,
            total_time=3.5,
        ),
        JobRecord(
            "b.png",
            "FAILED",
            submit_time=101.0,
            queue_time=None,
            process_time=4.0,
            total_time=59.0,
            attempts=3,
        ),
    ]
    stats = summarize(jobs)
    assert stats["total_jobs"] == 2 and stats["completed"] == 1 and stats["failed"] == 1
    assert stats["success_rate"] == 50.0
    assert stats["avg_queue_time"] == 1.235  # the None is left out, not taken as 0
    assert stats["max_total_time"] == 59.0
    assert stats["retried"] == 2
    assert stats["wall_time"] == 60.0
    assert stats["throughput_per_min"] == 1.0
    for name in ("queue_time", "process_time", "total_time"):
        for prefix in ("avg", "p50", "p95", "p99", "max"):
            assert f"{prefix}_{name}" in stats


def test_summarize_empty_run() -> None:
    stats = summarize([])
    assert stats["total_jobs"] == 0 and stats["success_rate"] == 0.0
    assert stats["avg_total_time"] is None and stats["throughput_per_min"] is None


# --- records and files -----------------------------------------------------------------------


@given(job_records())
def test_record_round_trips_through_a_dict(job: JobRecord) -> None:
    assert JobRecord.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_from_dict_is_tolerant() -> None:
    job = JobRecord.from_dict(
        {
            "job_id": "j1",
            "status": "completed",
            "queue_time": "1.5",
            "total_time": 3,
            "unknown_key": [1, 2],
            "attempts": "many",
            "cold_start": "yes",
        }
    )
    assert job == JobRecord(
        input="",
        status="COMPLETED",
        job_id="j1",
        queue_time=1.5,
        total_time=3.0,
        attempts=1,
        cold_start=None,
    )
    assert JobRecord.from_dict({}).status == "UNKNOWN"


def test_from_dict_names_a_bad_field() -> None:
    with pytest.raises(ValueError, match="queue_time"):
        JobRecord.from_dict({"status": "COMPLETED", "queue_time": "soon"})


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    jobs = [
        JobRecord(
            "cats/a.png",
            "COMPLETED",
            job_id="j1",
            submit_time=1.7e9,
            queue_time=0.5,
            process_time=2.0,
            total_time=2.7,
            timestamp="2024-01-01T00:00:02.7+00:00",
            outputs=["out/cats/a.png"],
            worker_id="w1",
            endpoint="ep",
            cold_start=False,
        ),
        JobRecord(
            "b.png",
            "FAILED",
            job_id="j2",
            error="ValueError: bad",
            error_kind="worker_error",
            attempts=2,
        ),
    ]
    path = tmp_path / "deep" / "run" / "job_metrics.json"
    write_metrics(path, jobs, {"endpoint": "ep", "started": "2024-01-01T00:00:00Z"})
    loaded = load_metrics(path)
    assert loaded == Metrics(
        stats=summarize(jobs), jobs=jobs, run={"endpoint": "ep", "started": "2024-01-01T00:00:00Z"}
    )
    assert [p.name for p in path.parent.iterdir()] == ["job_metrics.json"]  # no temp file left
    assert load_metrics(path.parent).jobs == jobs  # a folder holding the file works too


def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "run" / "job_metrics.json"
    write_metrics(path, [JobRecord("a.png", "COMPLETED")], {})
    before = path.read_text()
    with pytest.raises(ValueError):
        write_metrics(path, [JobRecord("b.png", "COMPLETED")], {"bad": math.inf})
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == ["job_metrics.json"]


def test_guide_only_file_loads() -> None:
    metrics = load_metrics(DATA / "guide_only.json")
    assert len(metrics.jobs) == 6
    assert metrics.jobs[0].input == "" and metrics.jobs[0].attempts == 1
    assert metrics.stats["total_jobs"] == 6
    assert metrics.run == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"stats": {}}', 'no "jobs" key'),
        ('{"jobs": {}}', '"jobs" must be a list'),
        ('{"jobs": [1]}', r"jobs\[0\]"),
        ('{"jobs": [{"total_time": "slow"}]}', r"jobs\[0\]: total_time"),
    ],
)
def test_bad_files_give_a_usage_error_naming_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "job_metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message) as caught:
        load_metrics(path)
    assert str(path) in str(caught.value)
