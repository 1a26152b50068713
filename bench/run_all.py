"""`make bench`: every scenario, rpq against the ideal and the runpod SDK; writes BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bucket_bench
import harness as h
import journal_bench
import scale_bench
from tables import Context, Row, Scenario, med
from tables import fmt as _fmt
from tables import ratio as _ratio

# ---- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Everything that --quick shrinks."""

    reps: int
    s1_images: int = 400
    s1_workers: int = 16
    s1_job: float = 0.5
    s1_concurrency: int = 32
    s2_images: int = 64
    s2_workers: int = 16
    s2_job: tuple[float, float] = (4.0, 6.0)
    s2_concurrency: int = 32
    s3_small: int = 1_000
    s3_large: int = 10_000
    s3_workers: int = 16
    s3_concurrency: int = 64
    s4_images: int = 100
    s4_workers: int = 8
    s4_cold: float = 3.0
    s4_stall_after: float = 5.0
    s4_stall: float = 20.0
    s4_job: float = 0.5
    s4_concurrency: int = 32
    s5_help_runs: int = 10
    s5_report_jobs: int = 2_000
    s5_report_runs: int = 5
    s6_threads: tuple[int, ...] = (1, 4, 16)
    s6_seconds: float = 2.0
    s6_jobs: int = 8


FULL = Sizes(reps=3)
QUICK = Sizes(
    reps=1,
    s1_images=24, s1_workers=4, s1_job=0.2, s1_concurrency=8,
    s2_images=8, s2_workers=4, s2_job=(0.4, 0.6), s2_concurrency=8,
    s3_small=40, s3_large=200, s3_workers=4, s3_concurrency=16,
    s4_images=12, s4_workers=2, s4_cold=0.5, s4_stall_after=0.7, s4_stall=1.0, s4_job=0.2,
    s4_concurrency=8,
    s5_help_runs=3, s5_report_jobs=200, s5_report_runs=1,
    s6_threads=(1, 2), s6_seconds=0.3, s6_jobs=2,
)

# Targets from issue 5.
S1_WITHIN = 0.05
S2_STATUS_PER_JOB = 4.0
S2_LAG_P95 = 0.5
S3_RSS_MB = 150.0
S3_FLAT = 1.2  # peak RSS at the large size at most this times the small size's
S5_HELP_S = 0.2


# ---- running pairs -----------------------------------------------------------------------



def client_run(ctx: Context, tag: str, client: str, folder: Path, images: int,
               endpoint: dict[str, Any], concurrency: int, timeout: float) -> h.RunFigures:
    """One client run against a fresh endpoint process; figures from both ends."""
    out = h.fresh_folder(ctx.work / "runs" / f"{tag}-{client}")
    with h.EndpointProcess.beside(out, **endpoint) as ep:
        if client == "baseline":
            measured = h.baseline_batch(folder, out, ep, concurrency, timeout)
        else:
            measured = h.rpq_batch(folder, out, ep.env(), concurrency, timeout,
                                   unpaced=client == "rpq-unpaced")
    snapshot = ep.snapshot
    if client == "baseline":
        figures = h.baseline_figures(images, out, measured, snapshot)
    else:
        figures = h.rpq_figures(images, out, measured, snapshot)
    figures.client = client
    figures.extra["stall"] = snapshot.get("events", {})
    ctx.log(f"  {tag} {client}: {figures.completed}/{images} done, makespan "
            f"{figures.makespan:.2f} s, wall {figures.wall:.2f} s, status/job "
            f"{figures.status_per_job:.2f}, lag p95 {_fmt(figures.lag_p95, 3)} s, "
            f"rss {figures.max_rss_mb:.0f} MB, exit {figures.exit_code}")
    # Outputs are not needed once counted; 10,000 files per run add up.
    written = 0
    for child in out.iterdir():
        if child.suffix == ".png":
            written += 1
            child.unlink()
    figures.extra["written"] = written
    return figures


def pairs(ctx: Context, name: str, folder: Path, images: int, endpoint: dict[str, Any],
          concurrency: int, timeout: float,
          clients: tuple[str, ...] = ("rpq", "baseline")) -> dict[str, list[h.RunFigures]]:
    """ctx.sizes.reps repetitions; the clients alternate who goes first."""
    runs: dict[str, list[h.RunFigures]] = {c: [] for c in clients}
    for rep in range(ctx.sizes.reps):
        order = clients if rep % 2 == 0 else tuple(reversed(clients))
        for client in order:
            runs[client].append(client_run(ctx, f"{name}-{images}-r{rep}", client, folder,
                                           images, endpoint, concurrency, timeout))
    return runs


# ---- results -----------------------------------------------------------------------------


def run_table(runs: dict[str, list[h.RunFigures]]) -> list[str]:
    """Per-run figures, every client, as markdown table lines."""
    lines = [
        "| client | run | done | makespan s | wall s | start-up s | status req/job | "
        "lag p50 s | lag p95 s | peak RSS MB | RSS while jobs run MB | client CPU s | "
        "endpoint CPU s | exit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for client, items in runs.items():
        for i, r in enumerate(items):
            lines.append(
                f"| {client} | {i + 1} | {r.completed}/{r.images} | {r.makespan:.2f} | "
                f"{r.wall:.2f} | {r.startup:.2f} | {r.status_per_job:.2f} | "
                f"{_fmt(r.lag_p50, 3)} | {_fmt(r.lag_p95, 3)} | {r.max_rss_mb:.0f} | "
                f"{_fmt(r.rss_during_jobs_mb, 0)} | {r.cpu_seconds:.1f} | "
                f"{r.server_cpu_seconds:.1f} | {r.exit_code} |"
            )
    return lines


# ---- scenarios ---------------------------------------------------------------------------


def scenario_1(ctx: Context) -> Scenario:
    s = ctx.sizes
    ideal = math.ceil(s.s1_images / s.s1_workers) * s.s1_job
    sc = Scenario("1", "Throughput", (
        f"{s.s1_images} images, `echo` handler + {s.s1_job:g} s per job, {s.s1_workers} "
        f"workers (always on), concurrency {s.s1_concurrency}. Ideal makespan = "
        f"ceil({s.s1_images}/{s.s1_workers}) x {s.s1_job:g} s = {ideal:g} s."))
    folder = h.image_set(ctx.cache, s.s1_images)
    endpoint = {"handler": "echo", "workers_max": s.s1_workers, "process_time": s.s1_job}
    runs = pairs(ctx, "s1", folder, s.s1_images, endpoint, s.s1_concurrency,
                 timeout=60 + 20 * ideal)
    rpq, base = runs["rpq"], runs["baseline"]
    mk_r, mk_b = med(rpq, lambda r: r.makespan), med(base, lambda r: r.makespan)
    wall_r, wall_b = med(rpq, lambda r: r.wall), med(base, lambda r: r.wall)
    done_r = min(r.completed for r in rpq)
    done_b = min(r.completed for r in base)
    start_r = med(rpq, lambda r: r.startup)
    start_b = med(base, lambda r: r.startup)
    sc.rows += [
        Row("1", "makespan (first /run to last result), s", _fmt(mk_r), _fmt(mk_b),
            _ratio(mk_r, mk_b), f"<= {ideal * (1 + S1_WITHIN):.4g} (ideal {ideal:g} +5%)",
            mk_r is not None and mk_r <= ideal * (1 + S1_WITHIN) and done_r == s.s1_images,
            why="per-job turnaround in the client (decode, write, journal, next submit) on "
            "cores shared with the endpoint; the queue of concurrency - workers jobs hides it "
            "only while it stays under one job time"),
        Row("1", "makespan / ideal", _ratio(mk_r, ideal, 3), _ratio(mk_b, ideal, 3)),
        Row("1", "command wall time (spawn to exit), s", _fmt(wall_r), _fmt(wall_b),
            _ratio(wall_r, wall_b), f"(ideal {ideal:g})"),
        Row("1", "command wall time / ideal", _ratio(wall_r, ideal, 3),
            _ratio(wall_b, ideal, 3)),
        Row("1", "images done", f"{done_r}/{s.s1_images}", f"{done_b}/{s.s1_images}"),
    ]
    sc.data = {"ideal": ideal, "images": s.s1_images,
               "makespan": {"rpq": mk_r, "baseline": mk_b},
               "wall": {"rpq": wall_r, "baseline": wall_b},
               "startup": {"rpq": start_r, "baseline": start_b}}
    sc.detail = run_table(runs)
    sc.notes.append(
        f"Start-up (spawn to first /run at the endpoint) is {_fmt(start_r)} s for rpq "
        f"(imports, one /health, reading the folder) and {_fmt(start_b)} s for the baseline "
        "(mostly `import runpod`); the command wall time includes it and the exit, the "
        "makespan does not.")
    sc.bounds.append(
        f"Scenario 1 is bounded by the endpoint ({s.s1_workers} workers x {s.s1_job:g} s); "
        f"rpq adds {_fmt(None if mk_r is None else mk_r - ideal)} s to the ideal over "
        f"{s.s1_images} jobs, and its command wall time adds {_fmt(start_r)} s of start-up.")
    return sc


def scenario_2(ctx: Context) -> Scenario:
    s = ctx.sizes
    lo, hi = s.s2_job
    sc = Scenario("2", "Request economy and reaction time", (
        f"{s.s2_images} images, `echo` handler + uniform {lo:g}-{hi:g} s per job, "
        f"{s.s2_workers} workers, concurrency {s.s2_concurrency}. Status requests per job = "
        "requests the endpoint received on /status and /status-sync, divided by the images. "
        "Detection lag = the client has the result on disk minus the job's end on the endpoint."))
    folder = h.image_set(ctx.cache, s.s2_images)
    endpoint = {"handler": "echo", "workers_max": s.s2_workers, "process_time": f"{lo}-{hi}"}
    ideal = math.ceil(s.s2_images / s.s2_workers) * hi
    runs = pairs(ctx, "s2", folder, s.s2_images, endpoint, s.s2_concurrency,
                 timeout=60 + 10 * ideal)
    rpq, base = runs["rpq"], runs["baseline"]
    spj_r, spj_b = med(rpq, lambda r: r.status_per_job), med(base, lambda r: r.status_per_job)
    p95_r, p95_b = med(rpq, lambda r: r.lag_p95), med(base, lambda r: r.lag_p95)
    p50_r, p50_b = med(rpq, lambda r: r.lag_p50), med(base, lambda r: r.lag_p50)
    mk_r, mk_b = med(rpq, lambda r: r.makespan), med(base, lambda r: r.makespan)
    sc.rows += [
        Row("2", "status requests per job", _fmt(spj_r), _fmt(spj_b), _ratio(spj_r, spj_b),
            f"<= {S2_STATUS_PER_JOB:g}", spj_r is not None and spj_r <= S2_STATUS_PER_JOB,
            why="long polls that came back before the job ended (held at most 20 s, or half "
            "of --max-queue-time)"),
        Row("2", "detection lag p95, s", _fmt(p95_r, 3), _fmt(p95_b, 3), _ratio(p95_r, p95_b),
            f"< {S2_LAG_P95:g}", p95_r is not None and p95_r < S2_LAG_P95,
            why="the time from the long poll's answer to the image on disk and the journal "
            "line, on cores shared with the endpoint"),
        Row("2", "detection lag p50, s", _fmt(p50_r, 3), _fmt(p50_b, 3), _ratio(p50_r, p50_b)),
        Row("2", "makespan, s", _fmt(mk_r), _fmt(mk_b), _ratio(mk_r, mk_b)),
    ]
    sc.data = {"status_per_job": {"rpq": spj_r, "baseline": spj_b},
               "lag_p95": {"rpq": p95_r, "baseline": p95_b}}
    sc.detail = run_table(runs)
    calls = rpq[0].server_calls
    sc.notes.append(
        "Requests the endpoint saw in rpq's first run: "
        + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
        + "; baseline: " + ", ".join(f"{k} {v}" for k, v in sorted(base[0].server_calls.items()))
        + ". rpq holds one /status-sync long poll per job; the SDK's Job.output() polls "
        "/status once a second.")
    return sc


def scenario_3(ctx: Context) -> Scenario:
    s = ctx.sizes
    sc = Scenario("3", "Scale and memory", (
        f"{s.s3_small:,} and {s.s3_large:,} images (32x32 PNG), `echo` handler with no delay, "
        f"{s.s3_workers} workers, concurrency {s.s3_concurrency}, the endpoint enforcing "
        "RunPod's documented rate limits (/run 1000 and /status 2000 per 10 s). Peak RSS and "
        "CPU come from wait4() on the client process."))
    small = h.image_set(ctx.cache, s.s3_small)
    large = h.image_set(ctx.cache, s.s3_large)
    endpoint = {"handler": "echo", "workers_max": s.s3_workers}
    timeout_small = 120 + s.s3_small * 0.1
    timeout_large = 120 + s.s3_large * 0.1
    runs_small = pairs(ctx, "s3", small, s.s3_small, endpoint, s.s3_concurrency, timeout_small)
    rpq_large: list[h.RunFigures] = []
    for rep in range(s.reps):
        rpq_large.append(client_run(ctx, f"s3-{s.s3_large}-r{rep}", "rpq", large, s.s3_large,
                                    endpoint, s.s3_concurrency, timeout_large))
    # Once each: the SDK against the same limits at the large size, and rpq with its own
    # pacing lifted against an endpoint without limits (the client's ceiling).
    base_large = client_run(ctx, f"s3-{s.s3_large}-r0", "baseline", large, s.s3_large,
                            endpoint, s.s3_concurrency, timeout_large)
    unpaced = client_run(ctx, f"s3-{s.s3_large}-r0", "rpq-unpaced", large, s.s3_large,
                         {**endpoint, "rate_limits": "off"}, s.s3_concurrency, timeout_large)
    rs, bs = runs_small["rpq"], runs_small["baseline"]
    rss_small, rss_large = med(rs, lambda r: r.max_rss_mb), med(rpq_large, lambda r: r.max_rss_mb)
    rss_bs = med(bs, lambda r: r.max_rss_mb)
    growth = (None if rss_small is None or rss_large is None
              else (rss_large - rss_small) / (s.s3_large - s.s3_small) * 1000)

    def per_job(r: h.RunFigures) -> float:
        return r.cpu_seconds / max(r.completed, 1) * 1000

    cpu_large, cpu_small, cpu_bs = med(rpq_large, per_job), med(rs, per_job), med(bs, per_job)
    jps_large = med(rpq_large, lambda r: r.jobs_per_second)
    jps_small, jps_bs = med(rs, lambda r: r.jobs_per_second), med(bs, lambda r: r.jobs_per_second)
    done_large = min(r.completed for r in rpq_large)
    flat = rss_small is not None and rss_large is not None and rss_large <= S3_FLAT * rss_small
    during_small = med(rs, lambda r: r.rss_during_jobs_mb)
    during_large = med(rpq_large, lambda r: r.rss_during_jobs_mb)
    base_complete = base_large.completed == s.s3_large
    base_note = " (1 run)" if base_complete else f" (1 run, {base_large.completed:,} done)"
    pace = run_pace()
    floor = max(0.0, (s.s3_large - pace[1]) / pace[0])
    one = " (1 run)"
    sc.rows += [
        Row("3", f"peak RSS at {s.s3_large:,} images, MB", _fmt(rss_large, 0),
            _fmt(base_large.max_rss_mb, 0) + base_note,
            _ratio(rss_large, base_large.max_rss_mb) if base_complete else "",
            f"< {S3_RSS_MB:g}", rss_large is not None and rss_large < S3_RSS_MB,
            why="per-image state kept until the end of the run, and the end-of-run write of "
            "job_metrics.json (see the flatness line)"),
        Row("3", f"peak RSS at {s.s3_small:,} images, MB", _fmt(rss_small, 0), _fmt(rss_bs, 0),
            _ratio(rss_small, rss_bs)),
        Row("3", "peak RSS growth per 1,000 images, MB", _fmt(growth, 1), "", "",
            f"flat: {s.s3_large:,} <= {S3_FLAT:g}x {s.s3_small:,}", flat,
            why="two things grow with the number of images. (1) The peak is at the very end: "
            "metrics.write_metrics builds every job as a dict and the whole document as one "
            "json.dumps(indent=2) string (indent makes json use its pure-Python encoder); "
            "compare the RSS while jobs run. (2) While jobs run, rpq keeps for every image a "
            "threading.Event in reuse.Twins (about 1.3 KB each), its JobRecord, the "
            "journal Entry with a dict copy of that record, a key in Twins._seen and its "
            "output name in ResultWriter._claims"),
        Row("3", f"highest RSS while jobs run, {s.s3_small:,} / {s.s3_large:,} images, MB",
            f"{_fmt(during_small, 0)} / {_fmt(during_large, 0)}", ""),
        Row("3", f"client CPU per job at {s.s3_large:,}, ms", _fmt(cpu_large, 2),
            _fmt(per_job(base_large), 2) + one),
        Row("3", f"client CPU per job at {s.s3_small:,}, ms", _fmt(cpu_small, 2), _fmt(cpu_bs, 2),
            _ratio(cpu_small, cpu_bs)),
        Row("3", f"jobs per second at {s.s3_large:,} (first /run to last result)",
            _fmt(jps_large, 1), _fmt(base_large.jobs_per_second, 1) + one),
        Row("3", f"images done at {s.s3_large:,}", f"{done_large:,}/{s.s3_large:,}",
            f"{base_large.completed:,}/{s.s3_large:,}" + one),
        Row("3", f"jobs per second at {s.s3_small:,}", _fmt(jps_small, 1), _fmt(jps_bs, 1),
            _ratio(jps_small, jps_bs)),
        Row("3", f"rpq with its pacing lifted, {s.s3_large:,} images, endpoint without limits: "
            "jobs/s; CPU ms per job", f"{unpaced.jobs_per_second:.1f}; "
            f"{per_job(unpaced):.2f}" + one, ""),
    ]
    base_errors = base_large.extra.get("errors") or []
    sc.data = {"images": s.s3_large,
               "rss": {"small": rss_small, "large": rss_large, "growth_per_1000": growth,
                       "during_small": during_small, "during_large": during_large},
               "jobs_per_second": {"rpq": jps_large, "baseline_large": base_large.jobs_per_second,
                                   "unpaced": unpaced.jobs_per_second},
               "baseline_large_done": base_large.completed, "rpq_large_done": done_large,
               "cpu_ms_per_job": {"rpq": cpu_large, "unpaced": per_job(unpaced)},
               "pace": pace}
    sc.detail = run_table({"rpq": rpq_large + rs, "baseline": [base_large, *bs],
                           "rpq-unpaced": [unpaced]})
    sc.notes.append(
        "Client CPU includes the interpreter's start-up and imports: about 0.4 s for rpq and "
        "1.5 s for the baseline (`import runpod`), which dominates the per-job figure at small "
        "sizes.")
    if base_large.completed < s.s3_large:
        sc.notes.append(
            f"The SDK baseline at {s.s3_large:,} images completed {base_large.completed:,}: "
            f"the other {base_large.run_calls - base_large.completed:,} /run requests were "
            "answered 429 (the endpoint's documented /run limit) and runpod 1.12.0 does not retry "
            "a POST, so those images failed"
            + (f" (`{base_errors[0].split(' for url')[0][:90]}`)." if base_errors else "."))
    else:
        sc.notes.append(f"The SDK baseline completed all {s.s3_large:,} images.")
    sc.notes.append(
        f"At {s.s3_small:,} images the baseline's burst fits in the first 10 s window of the "
        "/run limit, so its jobs/s there is a rate the endpoint would not sustain.")
    sc.bounds.append(
        f"Jobs per second at scale (scenario 3) are bounded by rpq's own pacing, by design: "
        f"/run is held to {pace[0]:g} per second with a burst of {pace[1]:g} (90% of RunPod's "
        f"documented 1000 per 10 s), so {s.s3_large:,} jobs take at least {floor:.0f} s. With "
        f"the pacing lifted (bench/rpq_unpaced.py) against an endpoint without limits the same "
        f"run reaches {unpaced.jobs_per_second:.1f} jobs/s using {unpaced.cpu_seconds:.1f} s "
        f"of client CPU in {unpaced.makespan:.1f} s, about one core: there the bound is the "
        f"client's Python CPU per job ({per_job(unpaced):.2f} ms, GIL-bound) on a machine "
        f"whose other core runs the endpoint.")
    return sc


def run_pace() -> tuple[float, float]:
    """(per second, burst) of rpq's own /run pacing, read from rpq.limiter."""
    from rpq.limiter import RUNPOD_LIMITS

    count, per = RUNPOD_LIMITS["run"]
    return count / per, float(max(1, count // 10))


def scenario_4(ctx: Context) -> Scenario:
    s = ctx.sizes
    ideal = s.s4_cold + s.s4_stall + math.ceil(s.s4_images / s.s4_workers) * s.s4_job
    sc = Scenario("4", "Cold start and stall", (
        f"{s.s4_images} images, workers min 0 / max {s.s4_workers}, cold start {s.s4_cold:g} s, "
        f"{s.s4_job:g} s per job, concurrency {s.s4_concurrency}, the whole endpoint paused "
        f"{s.s4_stall:g} s starting {s.s4_stall_after:g} s after the first /run; idle timeout "
        f"longer than the stall so workers stay up through it. rpq runs with its defaults "
        f"(--max-queue-time 60). Ideal = cold start + stall + ceil({s.s4_images}/"
        f"{s.s4_workers}) x {s.s4_job:g} s = {ideal:g} s."))
    folder = h.image_set(ctx.cache, s.s4_images)
    endpoint = {"handler": "echo", "workers_min": 0, "workers_max": s.s4_workers,
                "cold_start": s.s4_cold, "process_time": s.s4_job,
                "idle_timeout": s.s4_stall + 10, "stall_after": s.s4_stall_after,
                "stall_for": s.s4_stall}
    runs = pairs(ctx, "s4", folder, s.s4_images, endpoint, s.s4_concurrency,
                 timeout=120 + 5 * ideal)
    rpq, base = runs["rpq"], runs["baseline"]
    done_r, done_b = min(r.completed for r in rpq), min(r.completed for r in base)
    canc_r = max(r.cancelled_on_server for r in rpq)
    canc_b = max(r.cancelled_on_server for r in base)
    resub_r = max(r.run_calls - r.images for r in rpq)
    mk_r, mk_b = med(rpq, lambda r: r.makespan), med(base, lambda r: r.makespan)
    spj_r, spj_b = med(rpq, lambda r: r.status_per_job), med(base, lambda r: r.status_per_job)
    sc.rows += [
        Row("4", "images done", f"{done_r}/{s.s4_images}", f"{done_b}/{s.s4_images}", "",
            "all", done_r == s.s4_images, why="see the run logs in BENCH_OUT/runs/s4-*"),
        Row("4", "jobs cancelled on the endpoint / resubmitted", f"{canc_r} / {resub_r}",
            f"{canc_b} / {max(r.run_calls - r.images for r in base)}", "", "0 cancelled",
            canc_r == 0, why="the stall detector took queueing for a stall"),
        Row("4", "makespan, s", _fmt(mk_r), _fmt(mk_b), _ratio(mk_r, mk_b), f"(ideal {ideal:g})"),
        Row("4", "makespan / ideal", _ratio(mk_r, ideal, 3), _ratio(mk_b, ideal, 3)),
        Row("4", "status requests per job", _fmt(spj_r), _fmt(spj_b), _ratio(spj_r, spj_b)),
    ]
    sc.data = {"ideal": ideal, "makespan": {"rpq": mk_r, "baseline": mk_b},
               "done": {"rpq": done_r, "baseline": done_b}, "cancelled": canc_r,
               "stall": s.s4_stall}
    sc.detail = run_table(runs)
    sc.notes.append(
        f"With the default --max-queue-time 60, neither the {s.s4_stall:g} s stall nor "
        "queueing behind the batch's own jobs counts as stuck, so rpq cancels and resubmits "
        "nothing and waits, as the settings say.")
    sc.notes.append(
        "The makespan is measured from the first /run, when the cold start begins; rpq's own "
        "start-up is in the wall time of the per-run table.")
    return sc


def _median_time(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       timeout=120)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_metrics(path: Path, jobs: int, seed: int = 5) -> None:
    """A job_metrics.json like a real run's: 8 workers, cold starts, a few failures."""
    from rpq.metrics import JobRecord, summarize

    rng = random.Random(seed)
    start = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc).timestamp()
    workers = [f"w{rng.getrandbits(40):010x}" for _ in range(8)]
    kinds = [("worker_error", "FAILED", "CUDA out of memory"), ("timed_out", "TIMED_OUT",
             "the endpoint timed the job out (executionTimeout or ttl)"),
             ("no_output", "FAILED", "completed without a usable image: no image in output"),
             ("http_error", "FAILED", "submit failed: run: HTTP 500: internal error")]
    records = []
    for n in range(jobs):
        submit = start + n * 0.3 + rng.random()
        cold = rng.random() < 0.02
        queue = rng.lognormvariate(-0.5, 0.6) + (rng.uniform(8, 20) if cold else 0.0)
        process = max(0.2, rng.gauss(2.5, 0.6))
        doc: dict[str, Any] = {
            "input": f"photos/batch{n // 500:02d}/IMG_{n:05d}.jpg",
            "job_id": f"{rng.getrandbits(128):032x}-u1", "submit_time": round(submit, 3),
            "queue_time": round(queue, 3), "process_time": round(process, 3),
            "total_time": round(queue + process + rng.uniform(0.01, 0.2), 3),
            "timestamp": datetime.fromtimestamp(submit + queue + process, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "attempts": 1, "worker_id": rng.choice(workers), "endpoint": "abc123xyz",
            "cold_start": cold, "status": "COMPLETED",
            "outputs": [f"photos/batch{n // 500:02d}/IMG_{n:05d}.png"],
        }
        if rng.random() < 0.03:
            kind, status, error = rng.choice(kinds)
            doc.update(status=status, error_kind=kind, error=error, outputs=[])
        records.append(doc)
    stats = summarize([JobRecord.from_dict(d) for d in records])
    first = datetime.fromtimestamp(start, timezone.utc)
    run = {"rpq_version": "0.1.0", "start": first.isoformat(),
           "end": (first + timedelta(seconds=jobs * 0.3 + 30)).isoformat(),
           "endpoint": "abc123xyz", "requests": {"run": jobs, "status-sync": jobs + 40}}
    path.write_text(json.dumps({"stats": stats, "jobs": records, "run": run}, indent=2))


def scenario_5(ctx: Context) -> Scenario:
    s = ctx.sizes
    sc = Scenario("5", "Start-up", (
        f"Wall time of the command, median of {s.s5_help_runs} runs (`rpq report`: "
        f"{s.s5_report_runs}), on a generated {s.s5_report_jobs:,}-job job_metrics.json "
        "(8 workers, 2% cold starts, 3% failures). Baseline column: `python -c 'import runpod'`, "
        "what a script using the SDK pays before its first request."))
    metrics = ctx.work / f"metrics-{s.s5_report_jobs}.json"
    make_metrics(metrics, s.s5_report_jobs)
    rpq = str(h.RPQ)
    help_s = _median_time([rpq, "--help"], s.s5_help_runs)
    batch_help = _median_time([rpq, "batch", "--help"], s.s5_help_runs)
    report_s = _median_time([rpq, "report", str(metrics)], s.s5_report_runs)
    report_json = _median_time([rpq, "report", str(metrics), "--json"], s.s5_report_runs)
    bare = _median_time([str(h.PYTHON), "-c", "pass"], s.s5_help_runs)
    sdk = _median_time([str(h.PYTHON), "-c", "import runpod"], max(3, s.s5_report_runs))
    sc.rows += [
        Row("5", "`rpq --help`, s", _fmt(help_s, 3), _fmt(sdk, 3) + " (import runpod)",
            _ratio(help_s, sdk), f"< {S5_HELP_S:g}", help_s < S5_HELP_S,
            why="`rpq.cli` imports Typer and every command module before parsing anything"),
        Row("5", "`rpq batch --help`, s", _fmt(batch_help, 3), ""),
        Row("5", f"`rpq report` on {s.s5_report_jobs:,} jobs, s", _fmt(report_s, 3), ""),
        Row("5", f"`rpq report --json` on {s.s5_report_jobs:,} jobs, s", _fmt(report_json, 3),
            ""),
    ]
    sc.data = {"help": help_s, "batch_help": batch_help, "report": report_s,
               "report_json": report_json, "python": bare, "import_runpod": sdk}
    sc.notes.append(f"A bare `python -c pass` from the same venv takes {bare:.3f} s.")
    return sc


def _removebg_seconds(runs: int) -> tuple[float, int]:
    """Median seconds the built-in handler takes to cut the largest sample, and its pixels."""
    from PIL import Image

    from rpq.local.removebg import remove_background, upright

    with Image.open(h.REPO / "sample_images" / "backpack_gradient_large.jpg") as opened:
        image = upright(opened)
        image.load()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        remove_background(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times), image.width * image.height


def scenario_6(ctx: Context) -> Scenario:
    import serve_bench

    s = ctx.sizes
    sc = Scenario("6", "The endpoint itself", (
        f"bench/serve_bench.py: GET /status on finished jobs over keep-alive, `rpq serve` in "
        f"its own process, {s.s6_seconds:g} s per round; the `requests` client is what rpq and "
        "the SDK use, `http.client` costs the client far less CPU and so shows more of the "
        "server's own ceiling. Client and server share the machine's cores."))
    proc, url = serve_bench.start_server([])
    rounds = []
    try:
        ids = serve_bench.make_jobs(url, s.s6_jobs)
        for client in serve_bench.CLIENTS:
            for threads in s.s6_threads:
                rounds.append((client, serve_bench.hammer(url, ids, threads, s.s6_seconds, client)))
    finally:
        serve_bench.stop_server(proc)
    best = max(r.per_second for _, r in rounds)
    cut_s, cut_px = _removebg_seconds(3)
    sc.rows.append(Row("6", f"built-in background removal, {cut_px / 1e6:.0f} MP sample photo, "
                            "s (median of 3, one core)", _fmt(cut_s, 3), ""))
    for client, r in rounds:
        sc.rows.append(Row("6", f"status req/s, {client}, {r.threads} thread(s)",
                           f"{r.per_second:,.0f}", "", "", f"p50 {r.p50_ms:.2f} ms, p99 "
                           f"{r.p99_ms:.2f} ms, {r.errors} errors"))
    sc.data = {"rounds": [{"client": c, **r.__dict__, "per_second": r.per_second}
                          for c, r in rounds], "best": best}
    sc.bounds.append(
        f"The endpoint answers up to {best:,.0f} status requests per second (scenario 6), far "
        "above what scenarios 1-4 ask of it (rpq makes about one long poll per job; the SDK "
        "polls once a second per thread), so it does not bound them; RunPod's documented "
        "limit of 2000 status requests per 10 s is lower than either.")
    return sc


SCENARIOS: dict[str, Callable[[Context], Scenario]] = {
    "1": scenario_1, "2": scenario_2, "3": scenario_3, "4": scenario_4, "5": scenario_5,
    "6": scenario_6, **scale_bench.SCENARIOS, **journal_bench.SCENARIOS,
    **bucket_bench.SCENARIOS,
}


# ---- the report --------------------------------------------------------------------------


def summary_line(done: dict[str, Scenario], cpus: str = "?") -> str:
    """One sentence for the README, from whatever scenarios ran."""
    parts = []
    if "1" in done:
        d = done["1"].data
        parts.append(
            f"{d['images']} jobs {_over(d['makespan']['rpq'], d['ideal'])} the ideal makespan "
            f"(runpod SDK loop: {_over(d['makespan']['baseline'], d['ideal'])})")
    if "2" in done:
        d = done["2"].data
        parts.append(
            f"{_fmt(d['status_per_job']['rpq'], 1)} status request per job (SDK: "
            f"{_fmt(d['status_per_job']['baseline'], 1)}) and results on disk "
            f"{_ms(d['lag_p95']['rpq'])} after the job ends at p95 (SDK: "
            f"{_ms(d['lag_p95']['baseline'])})")
    if "3" in done:
        d = done["3"].data
        sdk = ("all done" if d["baseline_large_done"] >= d["images"]
               else f"{d['baseline_large_done']:,} done, the rest lost to HTTP 429")
        parts.append(
            f"{d['images']:,} images in {_fmt(d['rss']['large'], 0)} MB peak at "
            f"{_fmt(d['jobs_per_second']['rpq'], 0)} jobs/s, paced under RunPod's /run limit "
            f"(SDK loop: {sdk})")
    if "4" in done:
        d = done["4"].data
        parts.append(
            f"a cold start plus a {d['stall']:g} s stall ridden out with "
            f"{'no' if d['cancelled'] == 0 else d['cancelled']} job cancelled, "
            f"{_over(d['makespan']['rpq'], d['ideal'])} the ideal")
    if "5" in done:
        parts.append(f"`rpq --help` in {done['5'].data['help']:.2f} s")
    parts += scale_bench.summary_parts({k: sc.data for k, sc in done.items()})
    if not parts:
        return "No scenario ran."
    return (f"rpq against a local endpoint on {cpus} CPUs: " + "; ".join(parts) + ".")


def _over(value: float | None, ideal: float) -> str:
    """'0.6% over' the ideal, or 'at' when not above it."""
    if value is None:
        return "n/a against"
    return f"{100 * (value / ideal - 1):.1f}% over" if value > ideal else "at"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def render(done: dict[str, Scenario], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"**Summary:** {summary_line(done, m['cpus'])}",
        "",
        f"Measured {m['date']} on {m['cpus']} CPUs ({m['cpu']}), {m['memory']} RAM, "
        f"Python {m['python']}, {m['os']}; {meta['reps']} run(s) per figure, medians; "
        f"{meta['minutes']:.1f} minutes in all{' (--quick sizes)' if meta['quick'] else ''}.",
        "",
        "Rerun: `make bench` (about 15 minutes; writes this file, raw figures in "
        "`BENCH_OUT/results.json`, logs in `BENCH_OUT/runs/`), or "
        "`.venv/bin/python bench/run_all.py --quick --markdown /tmp/b.md` for a one-minute smoke "
        "run. `--only 1,3` runs a subset; `--only photos`, `cpu` or `auto` runs scenario 7, 8 "
        "or 9 alone (a few minutes each).",
        "",
        "## How it is measured",
        "",
        "- The endpoint is `rpq serve`'s LocalEndpoint in its own process "
        "(`bench/endpoint_proc.py`), fresh for every client run, with RunPod's documented rate "
        "limits, the `echo` handler plus a simulated processing time, and always-on workers "
        "unless the scenario says otherwise. On SIGTERM it writes its request counts and "
        "job timeline.",
        "- rpq: `rpq batch DIR --out OUT --no-progress --concurrency N --fresh` (scenario 9: "
        "without `--concurrency`, its default `auto`) as a separate "
        "process, with RUNPOD_ENDPOINT_BASE_URL / RUNPOD_ENDPOINT_ID.",
        "- Baseline (`bench/baseline_sdk.py`): what a user writes today with runpod 1.12.0: "
        "`runpod.endpoint_url_base = BASE`, `runpod.Endpoint(ID)`, a ThreadPoolExecutor with the "
        "same concurrency, each task `job = endpoint.run({\"input\": {\"image\": b64}})`, "
        "`job.output(timeout=600)`, decode and write the image. Same images, same endpoint "
        "settings; rpq and the baseline alternate who runs first.",
        "- Makespan: first /run received by the endpoint to the last result written by the "
        "client. Wall: the client command from spawn to exit. Detection lag: result on disk "
        "(rpq's journal `end` event, the baseline's time after writing) minus the job's end on "
        "the endpoint, on one clock (CLOCK_MONOTONIC, anchored to wall time in the snapshot). "
        "CPU of the client: wait4(). Peak RSS: the client's own high-water mark (VmHWM), read "
        "every 0.1 s (wait4's ru_maxrss would also count the bench process it was forked "
        "from).",
        "",
        "## Figures",
        "",
        "| # | figure | rpq | baseline (runpod SDK) | rpq / baseline | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for sc in done.values():
        for r in sc.rows:
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(f"| {r.scenario} | {r.figure} | {r.rpq} | {r.baseline} | {r.ratio} | "
                         f"{r.target} | {met} |")
    misses = [r for sc in done.values() for r in sc.rows if r.met is False]
    lines += ["", "## Targets missed, and what bounds the figures", ""]
    if misses:
        for r in misses:
            lines.append(f"- **Missed** (scenario {r.scenario}) {r.figure}: {r.rpq} against "
                         f"the target {r.target}. Bound: {r.why}.")
    else:
        lines.append("- Every target was met in this run.")
    for sc in done.values():
        lines += [f"- {b}" for b in sc.bounds]
    for sc in done.values():
        lines += ["", f"## {sc.key}. {sc.title}", "", sc.setup, ""]
        if sc.detail:
            lines += [*sc.detail, ""]
        lines += [f"- {n}" for n in sc.notes]
    return "\n".join(lines).rstrip() + "\n"


def _sections(text: str) -> dict[str, str]:
    """A report's "## " sections by title; "" holds what comes before the first."""
    head, *rest = text.split("\n## ")
    parts = {"": head}
    for block in rest:
        title, _, body = block.partition("\n")
        parts[title.strip()] = body
    return parts


def merge(old: str, new: str, ran: set[str], meta: dict[str, Any]) -> str:
    """`old` report with the scenarios in `ran` replaced by (or added from) `new`."""
    def table_rows(text: str) -> list[str]:
        figures = _sections(text).get("Figures", "")
        return [line for line in figures.splitlines() if re.match(r"\| \d+ \| ", line)]

    def key_of(line: str) -> str:
        return line.split("|")[1].strip()

    rows = ([r for r in table_rows(old) if key_of(r) not in ran]
            + [r for r in table_rows(new) if key_of(r) in ran])
    rows.sort(key=lambda r: int(key_of(r)))
    old_s, new_s = _sections(old), _sections(new)
    keep = {title: body for title, body in old_s.items()
            if not re.match(r"\d+\. ", title) or title.split(".")[0] not in ran}
    for title, body in new_s.items():
        if re.match(r"\d+\. ", title) and title.split(".")[0] in ran:
            keep[title] = body
    m = meta["machine"]
    stamp = (f"Scenario{'s' if len(ran) > 1 else ''} {', '.join(sorted(ran, key=int))} "
             f"measured {m['date']} "
             f"(`--only`, {meta['minutes']:.1f} minutes); the others as dated above.")
    lines = [line for line in old_s[""].rstrip().splitlines()
             if not _stamp_of(line) or not _stamp_of(line) <= ran]
    while lines and not lines[-1].strip():
        lines.pop()
    lines += ["", stamp]
    numbered = sorted((t for t in keep if re.match(r"\d+\. ", t)),
                      key=lambda t: int(t.split(".")[0]))
    for title in [t for t in keep if t and not re.match(r"\d+\. ", t)] + numbered:
        body = keep[title]
        if title == "Figures":
            header = [line for line in body.splitlines() if line.startswith("| #")
                      or line.startswith("|---")]
            body = "\n" + "\n".join(header + rows) + "\n"
        elif title.startswith("Targets missed"):
            body = _merged_misses(old_s.get(title, ""), new_s.get(title, ""), ran)
        lines += ["", f"## {title}", body.rstrip()]
    return "\n".join(lines).rstrip() + "\n"


def _stamp_of(line: str) -> set[str]:
    """The scenarios a "Scenarios 7, 8 measured ..." (or "Scenario 8 ...") line dates, or none."""
    found = re.match(r"Scenarios? ([\d, ]+) measured ", line)
    return {k.strip() for k in found.group(1).split(",")} if found else set()


def _merged_misses(old: str, new: str, ran: set[str]) -> str:
    """Bullets of both reports; a scenario that ran keeps only its new ones."""
    def mine(line: str) -> str | None:
        found = re.search(r"\(scenario (\d+)\)|[Ss]cenario (\d+)", line)
        return (found.group(1) or found.group(2)) if found else None

    old_lines = [b for b in old.splitlines() if b.startswith("- ")
                 and mine(b) not in ran and "Every target was met" not in b]
    new_lines = [b for b in new.splitlines() if b.startswith("- ")
                 and "Every target was met" not in b and b not in old_lines]
    bullets = old_lines + new_lines
    if not any("**Missed**" in b for b in bullets):
        bullets.insert(0, "- Every target was met in the runs reported here.")
    return "\n" + "\n".join(bullets) + "\n"


# ---- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 1 repetition (a smoke run of a minute)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    parser.add_argument("--only", default="",
                        help="scenarios to run, e.g. 1,3 or photos,auto,journal,buckets (7-12)")
    parser.add_argument("--work", type=Path, default=h.REPO / "BENCH_OUT",
                        help="runs, logs, cached images and results.json go here")
    parser.add_argument("--markdown", type=Path, default=h.REPO / "BENCHMARKS.md",
                        help="where to write the report")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.reps is not None:
        if args.reps < 1:
            parser.error("--reps must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "reps": args.reps})
    aliases = {**scale_bench.ALIASES, **journal_bench.ALIASES, **bucket_bench.ALIASES}
    wanted = [aliases.get(k.strip(), k.strip()) for k in args.only.split(",")
              if k.strip()] or list(SCENARIOS)
    unknown = [k for k in wanted if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; use 1-{len(SCENARIOS)} or "
                     + ", ".join(aliases))
    args.work.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    ctx = Context(work=args.work, cache=args.work / "cache", sizes=sizes, log=log,
                  quick=args.quick)
    started = time.perf_counter()
    done: dict[str, Scenario] = {}
    for key in wanted:
        log(f"scenario {key}: {SCENARIOS[key].__name__}")
        done[key] = SCENARIOS[key](ctx)
    meta = {"machine": h.machine(), "reps": sizes.reps, "quick": args.quick,
            "minutes": (time.perf_counter() - started) / 60}
    results = {"meta": meta, "summary": summary_line(done, meta["machine"]["cpus"]), "scenarios": {
        k: {"title": sc.title, "rows": [r.__dict__ for r in sc.rows], "data": sc.data}
        for k, sc in done.items()}}
    (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = render(done, meta)
    if args.only and args.markdown.exists():
        # A subset: the other scenarios keep the figures of the run that measured them.
        text = merge(args.markdown.read_text(encoding="utf-8"), text, set(done), meta)
    args.markdown.write_text(text, encoding="utf-8")
    log(f"wrote {args.markdown} ({meta['minutes']:.1f} min)")
    log(results["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
