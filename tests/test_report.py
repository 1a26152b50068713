"""`rpq report` through the CLI, plus the pure parts of rpq.report."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from rpq import report as rep
from rpq.cli import app
from rpq.errors import UsageError
from rpq.metrics import JobRecord, Metrics, load_metrics, write_metrics

DATA = Path(__file__).parent / "data" / "metrics"
KNOWN = DATA / "known.json"
GUIDE = DATA / "guide_only.json"


def rpq(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["report", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def make_run(n: int, seed: int = 7, slower: float = 1.0) -> list[JobRecord]:
    """A plausible run: steady submissions, a few cold starts, ~4% failures."""
    rnd = random.Random(seed)
    jobs, t = [], 1_700_000_000.0
    for i in range(n):
        t += rnd.expovariate(n / 120)
        cold = i < 2 or rnd.random() < 0.01
        queue = rnd.uniform(0.2, 2.0) + (rnd.uniform(15, 40) if cold else 0.0)
        process = max(rnd.gauss(6, 1.5) * slower, 0.5)
        failed = rnd.random() < 0.04
        jobs.append(
            JobRecord(
                input=f"img_{i:05d}.jpg",
                status="FAILED" if failed else "COMPLETED",
                job_id=f"job-{i}",
                submit_time=t,
                queue_time=queue,
                process_time=process,
                total_time=queue + process + rnd.uniform(0.1, 1.0),
                error="ValueError: bad image" if failed else None,
            )
        )
    return jobs


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "job_metrics.json"
    write_metrics(path, make_run(2000), {"endpoint": "synthetic"})
    return path


# --- the command -----------------------------------------------------------------------------


def test_default_sla_passes_and_report_goes_to_stdout() -> None:
    code, out, err = rpq(KNOWN)
    assert code == 0
    assert err == ""
    assert "jobs 4 · completed 3 · failed 1" in out
    assert "PASS 95% within 60 s" in out and "PASS 99% within 120 s" in out
    assert "worker_error" in out and "ValueError: bad image" in out
    assert "Slowest 4 jobs" in out and "a.png (cold)" in out
    assert "Total time histogram" in out and "█" in out


def test_failed_sla_exits_1_and_says_so_on_stderr() -> None:
    code, out, err = rpq(KNOWN, "--sla", "75:12,100:30")
    assert code == 1
    assert "PASS 75% within 12 s: 75% (3/4" in out
    assert "FAIL 100% within 30 s: 75% (3/4" in out
    assert "SLA not met" in err


@pytest.mark.parametrize("spec", ["95", "95:", "abc:60", "120:60", "95:0", "95:60,", "95:-1"])
def test_bad_sla_spec_is_a_usage_error_with_an_example(spec: str) -> None:
    code, out, err = rpq(KNOWN, "--sla", spec)
    assert code == 2
    assert out == ""
    assert err.startswith("error: bad --sla") and "--sla 95:60,99:120" in err


def test_json_is_one_document_on_stdout() -> None:
    code, out, err = rpq(KNOWN, "--json", "--cost-per-hour", "3.6", "--slowest", "2")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["summary"]["total_jobs"] == 4
    assert doc["summary"]["success_rate"] == 75.0
    assert doc["summary"]["p50_total_time"] == 11.5
    assert doc["sla"]["passed"] is True
    assert [t["limit_s"] for t in doc["sla"]["targets"]] == [60, 120]
    assert doc["failures"] == [
        {
            "cause": "worker_error",
            "count": 1,
            "example": "ValueError: bad image",
            "example_job": "d.png",
        }
    ]
    assert [s["input"] for s in doc["slowest"]] == ["a.png", "b.png"]
    assert sum(b["count"] for b in doc["histogram"]["buckets"]) == 4
    assert doc["cold_starts"]["count"] == 1
    assert doc["compare"] is None and doc["plot"] is None


def test_json_with_failed_sla_still_prints_the_document() -> None:
    code, out, err = rpq(KNOWN, "--json", "--sla", "100:10")
    assert code == 1
    assert json.loads(out)["sla"]["passed"] is False
    assert "SLA not met" in err


def test_cost_from_known_numbers() -> None:
    # 3 x 10 s + 6 s processing, plus 20 s queue of the one cold start = 56 billed seconds.
    code, out, _ = rpq(KNOWN, "--json", "--cost-per-hour", "3.6")
    cost = json.loads(out)["cost"]
    assert code == 0
    assert cost["processing_s"] == 36.0 and cost["cold_start_s"] == 20.0
    assert cost["billed_s"] == 56.0
    assert cost["run_cost"] == pytest.approx(0.056)
    assert cost["per_completed_image"] == pytest.approx(0.056 / 3, abs=1e-6)
    assert cost["always_on_worker_per_month"] == 2592.0
    assert "estimate" in cost["note"]
    code, text, _ = rpq(KNOWN, "--cost-per-hour", "3.6")
    assert "$0.0560 for this run" in text and "$2,592.00/month" in text
    assert "estimate" in text


def test_negative_price_is_refused() -> None:
    code, _, err = rpq(KNOWN, "--cost-per-hour", "-1")
    assert code == 2 and "--cost-per-hour" in err


def test_compare_flags_regressions(tmp_path: Path, big_run: Path) -> None:
    slower = tmp_path / "slower.json"
    write_metrics(slower, make_run(2000, slower=1.5), {})
    code, out, err = rpq(slower, "--compare", big_run, "--json")
    assert code == 0 and err == ""
    compare = json.loads(out)["compare"]
    rows = {r["metric"]: r for r in compare["rows"]}
    assert compare["baseline"] == str(big_run)
    assert rows["avg_process_time"]["change_pct"] == pytest.approx(50, abs=2)
    assert rows["avg_process_time"]["regression"] is True
    assert "avg_process_time" in compare["regressions"]
    assert rows["success_rate"]["regression"] is False  # same seed, same failures
    assert rows["total_jobs"]["delta"] == 0
    _, text, _ = rpq(slower, "--compare", big_run)
    assert "Compared with" in text and "regression" in text


def test_compare_with_itself_has_no_regressions() -> None:
    code, out, _ = rpq(KNOWN, "--compare", KNOWN, "--json")
    compare = json.loads(out)["compare"]
    assert code == 0 and compare["regressions"] == []
    assert all(r["delta"] in (0, None) for r in compare["rows"])


def test_guide_only_file() -> None:
    code, out, err = rpq(GUIDE)
    assert code == 0 and err == ""
    assert "jobs 6 · completed 5 · failed 1" in out
    assert "cold starts 1" in out  # a1-u1 waited 12.5 s against a median of 1.2 s
    code, out, _ = rpq(GUIDE, "--json")
    doc = json.loads(out)
    assert doc["failures"][0]["cause"] == "worker_error"
    assert doc["slowest"][0]["job_id"] == "a1-u1"


def test_plot_10_jobs(tmp_path: Path) -> None:
    metrics = tmp_path / "m.json"
    write_metrics(metrics, make_run(10, seed=3), {})
    png = tmp_path / "plots" / "timeline.png"
    code, _, err = rpq(metrics, "--plot", png)
    assert code == 0
    assert f"wrote timeline plot to {png}" in err
    with Image.open(png) as image:
        image.load()
        assert image.format == "PNG"
        assert image.width == 1400 and 250 < image.height < 600
        colours = {c for _, c in image.getcolors(1_000_000) or []}
    assert rep._COLOURS["process"] in colours and rep._COLOURS["cold"] in colours
    assert [p.name for p in png.parent.iterdir()] == ["timeline.png"]  # no temp file left


def test_plot_2000_jobs_stays_under_2000_px(tmp_path: Path, big_run: Path) -> None:
    png = tmp_path / "timeline.png"
    code, out, _ = rpq(big_run, "--plot", png, "--json")
    assert code == 0 and json.loads(out)["plot"] == str(png)
    with Image.open(png) as image:
        image.load()
        assert image.width == 1400 and 1500 < image.height <= 2000
        colours = {c for _, c in image.getcolors(1_000_000) or []}
    assert rep._COLOURS["failed"] in colours


def test_plot_without_times_is_a_usage_error(tmp_path: Path) -> None:
    metrics = tmp_path / "m.json"
    metrics.write_text('{"jobs": [{"status": "FAILED"}]}')
    code, _, err = rpq(metrics, "--plot", tmp_path / "p.png")
    assert code == 2 and "cannot plot" in err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{oops", "not valid JSON"), ('{"stats": {}}', 'no "jobs" key')],
)
def test_bad_files_exit_2(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "job_metrics.json"
    if content is not None:
        path.write_text(content)
    code, out, err = rpq(path)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and str(path) in err


def test_bad_compare_file_exits_2(tmp_path: Path) -> None:
    code, _, err = rpq(KNOWN, "--compare", tmp_path / "missing.json")
    assert code == 2 and "missing.json" in err


def test_run_without_jobs_cannot_meet_an_sla(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"stats": {"total_jobs": 0}, "jobs": []}')
    code, out, _ = rpq(path)
    assert code == 1 and "no jobs" in out


def test_report_on_2000_jobs(big_run: Path) -> None:
    # How long it takes is a figure in `make bench` (scenario 5), not an assert here.
    code, out, _ = rpq(big_run)
    assert code == 0 and "jobs 2000" in out


def test_cli_import_stays_light() -> None:
    probe = (
        "import sys, rpq.cli; print(sorted(m for m in ('PIL', 'rpq.report') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# --- pure parts ------------------------------------------------------------------------------


def test_parse_sla() -> None:
    assert rep.parse_sla("95:60, 99:120") == (rep.SlaTarget(95, 60), rep.SlaTarget(99, 120))
    assert rep.parse_sla("99.9%:2.5s") == (rep.SlaTarget(99.9, 2.5),)
    with pytest.raises(UsageError):
        rep.parse_sla("")


def test_cold_start_rule_uses_recorded_flag_first() -> None:
    jobs = [JobRecord(str(i), "COMPLETED", queue_time=1.0) for i in range(5)]
    jobs += [
        JobRecord("slow", "COMPLETED", queue_time=6.5),  # above median + 5 s and 2x median
        JobRecord("edge", "COMPLETED", queue_time=6.0),  # exactly median + 5 s: not cold
        JobRecord("told", "COMPLETED", queue_time=0.5, cold_start=True),
        JobRecord("nope", "COMPLETED", queue_time=50.0, cold_start=False),
        JobRecord("unknown", "COMPLETED"),
    ]
    flags = dict(zip((j.input for j in jobs), rep.cold_start_flags(jobs), strict=True))
    assert flags == {
        **{str(i): False for i in range(5)},
        "slow": True,
        "edge": False,
        "told": True,
        "nope": False,
        "unknown": False,
    }


def test_failure_causes_are_derived_from_status() -> None:
    jobs = [
        JobRecord("a", "TIMED_OUT"),
        JobRecord("b", "CANCELLED"),
        JobRecord("c", "FAILED", error="boom"),
        JobRecord("d", "FAILED", error="stuck", error_kind="stalled"),
        JobRecord("e", "COMPLETED"),
    ]
    doc = rep.build_report(load_metrics_from(jobs), rep.ReportOptions())
    assert {f["cause"]: f["count"] for f in doc["failures"]} == {
        "timed_out": 1,
        "cancelled": 1,
        "worker_error": 1,
        "stalled": 1,
    }


def test_histogram_counts_every_timed_job(big_run: Path) -> None:
    metrics = load_metrics(big_run)
    doc = rep.build_report(metrics, rep.ReportOptions(slowest=0))
    buckets = doc["histogram"]["buckets"]
    assert 5 <= len(buckets) <= 12
    assert sum(b["count"] for b in buckets) == 2000
    assert doc["slowest"] == []


def load_metrics_from(jobs: list[JobRecord]) -> Metrics:
    return Metrics(stats={}, jobs=jobs, run={})


def test_plot_to_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    folder = tmp_path / "plots"
    folder.mkdir()
    code, _, err = rpq(KNOWN, "--plot", folder)
    assert code == 2 and "cannot write the plot" in err
    assert list(folder.iterdir()) == []
