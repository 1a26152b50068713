"""`rpq report`: latency, SLA, failures, comparison, cost and a timeline plot of one run."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpq.errors import UsageError
from rpq.files import atomic_write
from rpq.metrics import (
    TIME_FIELDS,
    JobRecord,
    Metrics,
    job_end,
    percentile,
    round3,
    summarize,
)
from rpq.states import Kind, Status
from rpq.text import one_line

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont
    from rich.console import Console

__all__ = [
    "COLD_START_RULE",
    "DEFAULT_SLA",
    "ReportOptions",
    "SlaTarget",
    "build_report",
    "cold_start_flags",
    "combine",
    "failure_cause",
    "parse_sla",
    "plot_timeline",
    "render_text",
]

DEFAULT_SLA = "95:60,99:120"
# A queue wait counts as a cold start when it stands well clear of the run's typical wait.
COLD_START_MARGIN_S = 5.0
COLD_START_FACTOR = 2.0
COLD_START_RULE = (
    "cold_start recorded by rpq batch; when unknown, a job whose queue time is more than "
    f"{COLD_START_MARGIN_S:g} s above and more than {COLD_START_FACTOR:g}x the run's median "
    "queue time, unless its worker had already run another job of the batch (it waited behind "
    "the batch's own work, not for a worker to start)"
)
COST_RULE = (
    "estimate: billed seconds = processing time of every job + queue time of cold-started jobs "
    "(taken as their cold start); idle time before workers scale down is not included"
)
HOURS_PER_MONTH = 24 * 30
# A figure is flagged as a regression when it gets worse by more than both thresholds.
REGRESSION_RELATIVE = 0.10
REGRESSION_ABSOLUTE = {"seconds": 0.5, "percent": 1.0, "per_min": 0.0, "count": 0.0}


@dataclass(frozen=True)
class SlaTarget:
    """`percent` % of jobs must finish (total time) within `limit` seconds."""

    percent: float
    limit: float


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """What `rpq report` computes besides the summary."""

    sla: tuple[SlaTarget, ...] = field(default_factory=lambda: parse_sla(DEFAULT_SLA))
    slowest: int = 5
    cost_per_hour: float | None = None


def parse_sla(spec: str) -> tuple[SlaTarget, ...]:
    """Parse `95:60,99:120` (percent:seconds pairs); UsageError with an example if malformed."""
    targets = []
    for part in spec.split(","):
        pct_text, colon, limit_text = part.strip().partition(":")
        try:
            pct, limit = float(pct_text.rstrip("%")), float(limit_text.rstrip("s"))
        except ValueError:
            pct = limit = math.nan
        problem = _sla_problem(part.strip(), colon, pct, limit)
        if problem:
            raise UsageError(
                f"bad --sla {spec!r}: {problem}. Give PERCENT:SECONDS pairs separated by "
                "commas, for example --sla 95:60,99:120 (95% of jobs within 60 s, 99% within "
                "120 s)"
            )
        targets.append(SlaTarget(pct, limit))
    return tuple(targets)


def _sla_problem(part: str, colon: str, pct: float, limit: float) -> str | None:
    """What is wrong with one PERCENT:SECONDS pair, in words; None when nothing is."""
    if not colon or math.isnan(pct) or math.isnan(limit):
        return f"{part!r} is not PERCENT:SECONDS"
    if not 0 < pct <= 100:
        swapped = 0 < limit <= 100 and pct > 100
        hint = f" (if {pct:g} is the seconds, the percent comes first: {limit:g}:{pct:g})" \
            if swapped else ""
        return f"{pct:g}% is not a share of jobs: the percent must be over 0 and at most " \
               f"100{hint}"
    if not 0 < limit < math.inf:
        return f"{limit:g} s is not a time limit: the seconds must be over 0"
    return None


def cold_start_flags(jobs: Sequence[JobRecord]) -> list[bool]:
    """Per job: cold start as recorded, else inferred by COLD_START_RULE."""
    median = percentile([j.queue_time for j in jobs if j.queue_time is not None], 50)
    later = _queued_behind(jobs)
    flags = []
    for index, job in enumerate(jobs):
        if job.cold_start is not None:
            flags.append(job.cold_start)
        elif job.queue_time is None or median is None or index in later:
            flags.append(False)
        else:
            threshold = max(median + COLD_START_MARGIN_S, median * COLD_START_FACTOR)
            flags.append(job.queue_time > threshold)
    return flags


def _queued_behind(jobs: Sequence[JobRecord]) -> set[int]:
    """Jobs that a worker of the batch ran after another of its jobs: they waited behind the
    batch's own work, not for a worker to start."""
    first: dict[str, tuple[float, int]] = {}
    for index, job in enumerate(jobs):
        if job.worker_id is None or job.submit_time is None:
            continue
        began = job.submit_time + (job.queue_time or 0.0)
        if job.worker_id not in first or began < first[job.worker_id][0]:
            first[job.worker_id] = (began, index)
    starters = {index for _, index in first.values()}
    return {index for index, job in enumerate(jobs)
            if job.worker_id is not None and job.submit_time is not None
            and index not in starters}


def user_cancelled(job: JobRecord) -> bool:
    """Cancelled by the user (Ctrl-C, `rpq cancel`): not a failure of the image."""
    return failure_cause(job) == Kind.CANCELLED


def outcome_counts(jobs: Sequence[JobRecord]) -> dict[str, int]:
    """done / failed / cancelled, the same in the text report and the plot's title."""
    done = sum(j.status == Status.COMPLETED for j in jobs)
    cancelled = sum(j.status != Status.COMPLETED and user_cancelled(j) for j in jobs)
    return {"done": done, "failed": len(jobs) - done - cancelled, "cancelled": cancelled}


def build_report(
    metrics: Metrics,
    options: ReportOptions,
    *,
    source: str = "",
    baseline: Metrics | None = None,
    baseline_source: str = "",
    merged: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything `rpq report` shows, as one JSON-ready dict; `merged` comes from combine()."""
    jobs = metrics.jobs
    cold = cold_start_flags(jobs)
    summary = _summary(metrics, cold)
    report: dict[str, Any] = {
        "source": source,
        "summary": summary,
        "cold_starts": {
            "count": sum(cold),
            "recorded": sum(1 for j in jobs if j.cold_start is not None),
            "rule": COLD_START_RULE,
        },
        "sla": _sla(jobs, options.sla),
        "failures": _failures(jobs),
        "slowest": _slowest(jobs, cold, options.slowest),
        "histogram": {"field": "total_time", "buckets": _histogram(_known(jobs, "total_time"))},
        "cost": _cost(jobs, cold, options.cost_per_hour),
        "compare": None,
        "plot": None,
        "merged": dict(merged) if merged and len(merged["files"]) > 1 else None,
    }
    if baseline is not None:
        other = _summary(baseline, cold_start_flags(baseline.jobs))
        report["compare"] = _compare(summary, other, baseline_source)
    return report


def combine(parts: Sequence[Metrics], sources: Sequence[str]) -> tuple[Metrics, dict[str, Any]]:
    """Several metrics files (one per shard or machine) as one run, and what was merged.

    Jobs are pooled, so percentiles, SLA and throughput are those of the whole run (wall time
    from the first submit of any part to the last result of any). An input found in more than
    one file is counted once per file and named in `overlap`: shards never overlap, so it
    means a part was given twice or two runs of the same images were mixed.
    """
    if len(parts) == 1:
        return parts[0], {"files": list(sources), "overlap": {"count": 0, "examples": []}}
    # In submission order, as one machine would have written them.
    jobs = sorted((job for part in parts for job in part.jobs),
                  key=lambda j: math.inf if j.submit_time is None else j.submit_time)
    owner: dict[str, int] = {}
    repeated: list[str] = []
    for number, part in enumerate(parts):
        for name in {job.input for job in part.jobs}:
            if owner.setdefault(name, number) != number:
                repeated.append(name)
    runs = [
        {"source": src, "jobs": len(part.jobs), "start": part.run.get("start"),
         "end": part.run.get("end"), "shard": _shard_of_run(part.run)}
        for src, part in zip(sources, parts, strict=True)
    ]
    merged = Metrics(stats=summarize(jobs), jobs=jobs, run={"parts": runs})
    overlap = {"count": len(set(repeated)), "examples": sorted(set(repeated))[:5]}
    return merged, {"files": list(sources), "parts": runs, "overlap": overlap}


def _shard_of_run(run: Mapping[str, object]) -> str | None:
    settings = run.get("settings")
    shard = settings.get("shard") if isinstance(settings, dict) else None
    return shard if isinstance(shard, str) else None


# --- figures ---------------------------------------------------------------------------------


def _summary(metrics: Metrics, cold: list[bool]) -> dict[str, Any]:
    # Recompute from the jobs (the file's stats may be partial); an empty jobs list keeps them.
    stats = summarize(metrics.jobs) if metrics.jobs else dict(metrics.stats)
    if metrics.jobs:
        counts = outcome_counts(metrics.jobs)
        stats["failed"], stats["cancelled"] = counts["failed"], counts["cancelled"]
    stats["cold_starts"] = sum(cold)
    return stats


def _known(jobs: Sequence[JobRecord], name: str) -> list[float]:
    return [v for v in (getattr(j, name) for j in jobs) if v is not None]


def _sla(jobs: Sequence[JobRecord], targets: Sequence[SlaTarget]) -> dict[str, Any]:
    # A job with no total time never reported back in a known time, so it counts as a miss.
    times = _known(jobs, "total_time")
    lines = []
    for target in targets:
        within = sum(1 for t in times if t <= target.limit)
        share = 100 * within / len(jobs) if jobs else None
        lines.append(
            {
                "percent": target.percent,
                "limit_s": target.limit,
                "within": within,
                "jobs": len(jobs),
                "share": None if share is None else round(share, 2),
                "actual_s": round3(percentile(times, target.percent)),
                "passed": share is not None and share >= target.percent,
            }
        )
    return {"passed": all(line["passed"] for line in lines), "targets": lines}


def failure_cause(job: JobRecord) -> str:
    """The job's error_kind, else one derived from its status."""
    if job.error_kind:
        return job.error_kind
    derived = {Status.TIMED_OUT: Kind.TIMED_OUT, Status.CANCELLED: Kind.CANCELLED,
               Status.FAILED: Kind.WORKER_ERROR}
    return derived.get(job.status, "unknown")


def _failures(jobs: Sequence[JobRecord]) -> list[dict[str, Any]]:
    groups: dict[str, list[JobRecord]] = {}
    for job in jobs:
        if job.status != Status.COMPLETED:
            groups.setdefault(failure_cause(job), []).append(job)
    rows = []
    for cause, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        example = next((j for j in members if j.error), members[0])
        rows.append(
            {
                "cause": cause,
                "count": len(members),
                "example": example.error or f"(no message; status {example.status})",
                "example_job": example.input or example.job_id or "",
            }
        )
    return rows


def _slowest(jobs: Sequence[JobRecord], cold: list[bool], n: int) -> list[dict[str, Any]]:
    timed = [(j, c) for j, c in zip(jobs, cold, strict=True) if j.total_time is not None]
    timed.sort(key=lambda jc: jc[0].total_time or 0.0, reverse=True)
    return [
        {
            "input": j.input,
            "job_id": j.job_id,
            "status": j.status,
            "queue_time": j.queue_time,
            "process_time": j.process_time,
            "total_time": j.total_time,
            "attempts": j.attempts,
            "cold_start": c,
        }
        for j, c in timed[: max(n, 0)]
    ]


def _histogram(values: Sequence[float], buckets: int = 10) -> list[dict[str, Any]]:
    if not values:
        return []
    low, high = min(values), max(values)
    width = _nice_step((high - low) / buckets) if high > low else 1.0
    start = math.floor(low / width) * width
    count = max(1, math.floor((high - start) / width) + 1)
    counts = [0] * count
    for v in values:
        counts[min(int((v - start) // width), count - 1)] += 1
    return [
        {"low": round3(start + i * width), "high": round3(start + (i + 1) * width), "count": c}
        for i, c in enumerate(counts)
    ]


def _cost(
    jobs: Sequence[JobRecord], cold: list[bool], price: float | None
) -> dict[str, Any] | None:
    if price is None:
        return None
    processing = sum(_known(jobs, "process_time"))
    cold_time = sum(j.queue_time or 0.0 for j, c in zip(jobs, cold, strict=True) if c)
    billed = processing + cold_time
    run_cost = billed * price / 3600
    completed = sum(1 for j in jobs if j.status == Status.COMPLETED)
    return {
        "price_per_hour": price,
        "processing_s": round3(processing),
        "cold_start_s": round3(cold_time),
        "billed_s": round3(billed),
        "run_cost": round(run_cost, 4),
        "per_completed_image": round(run_cost / completed, 6) if completed else None,
        "always_on_worker_per_month": round(price * HOURS_PER_MONTH, 2),
        "note": COST_RULE,
    }


# (stat key, label, better direction, unit kind for the absolute regression threshold)
_COMPARED = (
    ("total_jobs", "jobs", None, "count"),
    ("success_rate", "success rate %", "higher", "percent"),
    ("failed", "failed", None, "count"),
    ("throughput_per_min", "throughput /min", "higher", "per_min"),
    ("wall_time", "wall time s", "lower", "seconds"),
    ("avg_queue_time", "avg queue s", "lower", "seconds"),
    ("p95_queue_time", "p95 queue s", "lower", "seconds"),
    ("avg_process_time", "avg process s", "lower", "seconds"),
    ("p95_process_time", "p95 process s", "lower", "seconds"),
    ("avg_total_time", "avg total s", "lower", "seconds"),
    ("p50_total_time", "p50 total s", "lower", "seconds"),
    ("p95_total_time", "p95 total s", "lower", "seconds"),
    ("p99_total_time", "p99 total s", "lower", "seconds"),
    ("cold_starts", "cold starts", None, "count"),
)


def _compare(current: Mapping[str, Any], base: Mapping[str, Any], source: str) -> dict[str, Any]:
    rows = []
    for key, label, better, unit in _COMPARED:
        now, before = _number(current.get(key)), _number(base.get(key))
        delta = None if now is None or before is None else now - before
        change = None if delta is None or not before else 100 * delta / abs(before)
        worse = delta is not None and better is not None and (delta > 0) == (better == "lower")
        regression = (
            worse
            and delta is not None
            and abs(delta) > REGRESSION_ABSOLUTE[unit]
            and (change is None or abs(change) > 100 * REGRESSION_RELATIVE)
        )
        rows.append(
            {
                "metric": key,
                "label": label,
                "current": now,
                "baseline": before,
                "delta": round3(delta),
                "change_pct": None if change is None else round(change, 1),
                "better": better,
                "regression": bool(regression) and delta != 0,
            }
        )
    return {
        "baseline": source,
        "rows": rows,
        "regressions": [r["metric"] for r in rows if r["regression"]],
        "rule": (
            f"a figure is a regression when it is worse by more than "
            f"{100 * REGRESSION_RELATIVE:g}% and by more than a small absolute margin "
            "(0.5 s for times, 1 point for the success rate)"
        ),
    }


# --- text ------------------------------------------------------------------------------------


def render_text(report: Mapping[str, Any], console: Console) -> None:
    """Print the report as Rich tables and lines."""
    from rich.table import Table

    s = report["summary"]
    console.print(f"[bold]rpq report[/bold] {report['source']}")
    if report.get("merged"):
        _render_merged(report["merged"], console)
    console.print(
        f"jobs {s.get('total_jobs', 0)} · completed {s.get('completed', 0)} · "
        f"failed {s.get('failed', 0)} · cancelled {s.get('cancelled', 0)} · "
        f"success {_fmt(s.get('success_rate'))}% · "
        f"retried {s.get('retried', 0)} · throughput {_fmt(s.get('throughput_per_min'))}/min · "
        f"wall {_fmt_duration(s.get('wall_time'))} · cold starts {s.get('cold_starts', 0)}"
    )
    latency = Table(title="Latency (seconds)", title_justify="left")
    latency.add_column("")
    for head in ("avg", "p50", "p95", "p99", "max"):
        latency.add_column(head, justify="right")
    for name in TIME_FIELDS:
        cells = [_fmt(s.get(f"{p}_{name}")) for p in ("avg", "p50", "p95", "p99", "max")]
        latency.add_row(name.removesuffix("_time"), *cells)
    console.print(latency)
    _render_sla(report["sla"], console)
    _render_failures(report["failures"], console, Table)
    _render_slowest(report["slowest"], console, Table)
    _render_histogram(report["histogram"]["buckets"], console)
    if report["cost"]:
        _render_cost(report["cost"], console)
    if report["compare"]:
        _render_compare(report["compare"], console, Table)
    if report["plot"]:
        console.print(f"timeline plot: {report['plot']}")


def _render_merged(merged: Mapping[str, Any], console: Console) -> None:
    parts = ", ".join(
        f"{p['source']} ({p['jobs']} jobs" + (f", shard {p['shard']})" if p["shard"] else ")")
        for p in merged["parts"]
    )
    console.print(f"one run from {len(merged['parts'])} files: {parts}")
    overlap = merged["overlap"]
    if overlap["count"]:
        console.print(
            f"[yellow]note[/yellow]: {overlap['count']} input(s) appear in more than one file "
            f"(e.g. {', '.join(overlap['examples'])}); each copy is counted"
        )


def _render_sla(sla: Mapping[str, Any], console: Console) -> None:
    console.print("[bold]SLA[/bold] (total time, submit to result)")
    for t in sla["targets"]:
        mark = "[green]PASS[/green]" if t["passed"] else "[red]FAIL[/red]"
        share = "no jobs" if t["share"] is None else f"{t['share']:g}%"
        console.print(
            f"  {mark} {t['percent']:g}% within {t['limit_s']:g} s: {share} "
            f"({t['within']}/{t['jobs']}; p{t['percent']:g} = {_fmt(t['actual_s'])} s)"
        )


def _render_failures(rows: Sequence[Mapping[str, Any]], console: Console, table: Any) -> None:
    if not rows:
        console.print("[bold]Failures[/bold]: none")
        return
    out = table(title="Failures by cause", title_justify="left")
    out.add_column("cause")
    out.add_column("jobs", justify="right")
    out.add_column("example")
    for row in rows:
        example = one_line(row["example"], 160)
        if row["example_job"]:
            example = f"{row['example_job']}: {example}"
        out.add_row(row["cause"], str(row["count"]), example)
    console.print(out)


def _render_slowest(rows: Sequence[Mapping[str, Any]], console: Console, table: Any) -> None:
    if not rows:
        return
    out = table(title=f"Slowest {len(rows)} jobs", title_justify="left")
    for head in ("job", "status", "queue s", "process s", "total s", "tries"):
        out.add_column(head, justify="left" if head in ("job", "status") else "right")
    for r in rows:
        cold = " (cold)" if r["cold_start"] else ""
        name = one_line(r["input"] or r["job_id"] or "?", 40) + cold
        out.add_row(
            name,
            r["status"],
            _fmt(r["queue_time"]),
            _fmt(r["process_time"]),
            _fmt(r["total_time"]),
            str(r["attempts"]),
        )
    console.print(out)


def _render_histogram(buckets: Sequence[Mapping[str, Any]], console: Console) -> None:
    if not buckets:
        return
    console.print("[bold]Total time histogram[/bold] (seconds)")
    unicode_ok = (console.encoding or "").lower().startswith("utf")
    edge = "│" if unicode_ok else "|"
    peak = max(b["count"] for b in buckets) or 1
    labels = [f"{b['low']:g}-{b['high']:g}" for b in buckets]
    width = max(map(len, labels))
    for b, label in zip(buckets, labels, strict=True):
        label = label.rjust(width)
        bar = _bar(b["count"] / peak, 40, unicode_ok)
        console.print(f"  {label} {edge}{bar:<40} {b['count']}", highlight=False)


def _render_cost(cost: Mapping[str, Any], console: Console) -> None:
    per_image = cost["per_completed_image"]
    console.print(
        f"[bold]Cost[/bold] at ${cost['price_per_hour']:g}/h: about ${cost['run_cost']:.4f} "
        f"for this run ({_fmt(cost['billed_s'])} billed s = {_fmt(cost['processing_s'])} s "
        f"processing + {_fmt(cost['cold_start_s'])} s cold start)"
        + (f", ${per_image:.6f} per completed image" if per_image is not None else "")
    )
    console.print(
        f"  one always-on worker: ${cost['always_on_worker_per_month']:,.2f}/month "
        f"(price × 24 h × 30 days). This is an {cost['note']}."
    )


def _render_compare(cmp: Mapping[str, Any], console: Console, table: Any) -> None:
    out = table(title=f"Compared with {cmp['baseline']}", title_justify="left")
    for head in ("figure", "this run", "baseline", "delta", "change", ""):
        out.add_column(head, justify="left" if head in ("figure", "") else "right")
    for r in cmp["rows"]:
        change = "" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%"
        delta = "" if r["delta"] is None else f"{r['delta']:+g}"
        flag = "[red]regression[/red]" if r["regression"] else ""
        out.add_row(r["label"], _fmt(r["current"]), _fmt(r["baseline"]), delta, change, flag)
    console.print(out)
    if cmp["regressions"]:
        console.print(f"[red]regressions:[/red] {', '.join(cmp['regressions'])}")


def _bar(fraction: float, width: int, unicode_ok: bool) -> str:
    if not unicode_ok:
        return "#" * round(fraction * width)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[part]


# --- plot ------------------------------------------------------------------------------------

_WIDTH = 1400
_MAX_PLOT_HEIGHT = 1800
_MAX_ROW = 24
_COLOURS = {
    "background": (255, 255, 255),
    "grid": (228, 228, 228),
    "text": (30, 30, 30),
    "queue": (160, 196, 255),
    "cold": (245, 158, 11),
    "process": (37, 99, 176),
    "other": (190, 190, 190),
    "failed": (220, 38, 38),
    "failed_queue": (248, 170, 170),
    "cancelled": (139, 92, 246),
}


@dataclass(frozen=True)
class _Span:
    start: float
    queue: float
    process: float
    end: float
    failed: bool
    cold: bool
    label: str
    cancelled: bool = False

    def edges(self) -> tuple[float, float, float, float]:
        """Start, end of queue, end of processing, end; clipped to the job's end."""
        queue_end = min(self.start + self.queue, self.end)
        return self.start, queue_end, min(queue_end + self.process, self.end), self.end


def timeline_title(jobs: Sequence[JobRecord]) -> str:
    """The plot's heading: the counts the text report gives, for the jobs it can draw."""
    spans = _spans(jobs)
    counts = outcome_counts(jobs)
    span = max(s.end for s in spans) - min(s.start for s in spans) if spans else 0.0
    return (f"rpq timeline: {len(jobs)} jobs, {counts['done']} done, {counts['failed']} failed, "
            f"{counts['cancelled']} cancelled, {sum(s.cold for s in spans)} cold starts, "
            f"span {_fmt_duration(max(span, 1e-3))}")


def plot_timeline(jobs: Sequence[JobRecord], path: Path, *, title: str = "") -> str:
    """Draw one bar per job (queue, processing, rest) on a shared time axis; write a PNG.

    Returns the title drawn.
    """
    from PIL import Image, ImageDraw

    spans = _spans(jobs)
    if not spans:
        raise UsageError("cannot plot: no job has a submit time and a total time")
    t0 = min(s.start for s in spans)
    span = max(max(s.end for s in spans) - t0, 1e-3)
    # Many jobs share a pixel row (implicit binning) so the picture stays under ~2000 px.
    row = min(_MAX_ROW, _MAX_PLOT_HEIGHT / len(spans))
    labelled = row >= 14
    font, big = _font(14), _font(18)
    left, top = (200 if labelled else 80), 60
    plot_w, plot_h = _WIDTH - left - 40, math.ceil(row * len(spans))
    image = Image.new("RGB", (_WIDTH, top + plot_h + 96), _COLOURS["background"])
    draw = ImageDraw.Draw(image)
    _draw_axis(draw, font, (left, top, plot_w, plot_h), span)
    # Failures and cold starts last, so a shared pixel row shows them rather than hides them.
    order = sorted(range(len(spans)), key=lambda i: (spans[i].failed, spans[i].cold))
    for index in order:
        s = spans[index]
        y0 = top + index * row
        y1 = y0 + row - (max(1.0, row * 0.2) if row >= 6 else 0)
        xs = [left + (t - t0) / span * plot_w for t in s.edges()]
        _draw_bar(draw, s, xs, (int(y0), max(int(y0), math.ceil(y1) - 1)), left)
        if labelled:
            draw.text(
                (10, y0 + row / 2),
                one_line(s.label, 26),
                fill=_COLOURS["text"],
                font=font,
                anchor="lm",
            )
    if not labelled:
        _draw_row_ticks(draw, font, len(spans), row, top, left)
    heading = title or timeline_title(jobs)
    draw.text((left, 20), heading, fill=_COLOURS["text"], font=big)
    _draw_legend(draw, font, left, top + plot_h + 56,
                 (any(s.failed for s in spans), any(s.cancelled for s in spans)))
    _save_png(image, Path(path))
    return heading


def _spans(jobs: Sequence[JobRecord]) -> list[_Span]:
    cold = cold_start_flags(jobs)
    spans = []
    for number, (job, is_cold) in enumerate(zip(jobs, cold, strict=True), start=1):
        end = job_end(job)
        start = job.submit_time
        if start is None and end is not None and job.total_time is not None:
            start = end - job.total_time
        if start is None or end is None:
            continue
        queue = max(job.queue_time or 0.0, 0.0)
        process = max(job.process_time or 0.0, 0.0)
        label = job.input or job.job_id or f"job {number}"
        stopped = job.status != Status.COMPLETED and user_cancelled(job)
        failed = job.status != Status.COMPLETED and not stopped
        spans.append(_Span(start, queue, process, max(end, start), failed, is_cold, label, stopped))
    spans.sort(key=lambda s: s.start)
    return spans


def _draw_bar(
    draw: ImageDraw.ImageDraw, s: _Span, xs: list[float], rows: tuple[int, int], left: int
) -> None:
    # Queue first, then processing; what is left of the total (polling, transfer) is grey.
    y0, y1 = rows
    queue = _COLOURS["cold" if s.cold else ("failed_queue" if s.failed else "queue")]
    process = _COLOURS["failed" if s.failed else "cancelled" if s.cancelled else "process"]
    rest = _COLOURS["failed" if s.failed else "cancelled" if s.cancelled else "other"]
    for a, b, colour in ((xs[0], xs[1], queue), (xs[1], xs[2], process), (xs[2], xs[3], rest)):
        if b - a >= 0.5:
            draw.rectangle((round(a), y0, max(round(a), round(b) - 1), y1), fill=colour)
    if xs[3] - xs[0] < 1:
        draw.rectangle((round(xs[0]), y0, round(xs[0]), y1), fill=process)
    # Gutter marks keep failures and cold starts visible even at one pixel per job.
    if s.failed:
        draw.rectangle((left - 8, y0, left - 5, y1), fill=_COLOURS["failed"])
    if s.cancelled:
        draw.rectangle((left - 8, y0, left - 5, y1), fill=_COLOURS["cancelled"])
    if s.cold:
        draw.rectangle((left - 13, y0, left - 10, y1), fill=_COLOURS["cold"])


def _draw_axis(
    draw: ImageDraw.ImageDraw, font: Any, box: tuple[int, int, int, int], span: float
) -> None:
    left, top, plot_w, plot_h = box
    step = _time_step(span / 8)
    tick = 0.0
    while tick <= span + 1e-9:
        x = left + tick / span * plot_w
        draw.line((x, top, x, top + plot_h), fill=_COLOURS["grid"])
        draw.line((x, top + plot_h, x, top + plot_h + 5), fill=_COLOURS["text"])
        draw.text(
            (x, top + plot_h + 8),
            _fmt_clock(tick, span),
            fill=_COLOURS["text"],
            font=font,
            anchor="ma",
        )
        tick += step
    draw.line((left, top + plot_h, left + plot_w, top + plot_h), fill=_COLOURS["text"])
    draw.text(
        (left + plot_w, top + plot_h + 28),
        "time since first submit" + (" (m:ss)" if span >= 120 else ""),
        anchor="ra",
        fill=_COLOURS["text"],
        font=font,
    )


def _draw_row_ticks(
    draw: ImageDraw.ImageDraw, font: Any, n: int, row: float, top: int, left: int
) -> None:
    every = int(_nice_step(n / 12, integers=True))
    draw.text((10, top - 20), "job #", fill=_COLOURS["text"], font=font)
    for number in (1, *range(every, n + 1, every)):
        y = top + (number - 0.5) * row
        draw.line((left - 22, y, left - 18, y), fill=_COLOURS["text"])
        draw.text((left - 25, y), str(number), fill=_COLOURS["text"], font=font, anchor="rm")


def _draw_legend(draw: ImageDraw.ImageDraw, font: Any, x: int, y: int,
                 shown: tuple[bool, bool] = (True, True)) -> None:
    """The swatches; failed and cancelled only when the plot has such jobs."""
    items = [
        ("queue", _COLOURS["queue"]),
        ("cold start (queue)", _COLOURS["cold"]),
        ("processing", _COLOURS["process"]),
        ("polling / transfer", _COLOURS["other"]),
    ]
    items += [("failed", _COLOURS["failed"])] if shown[0] else []
    items += [("cancelled by the user", _COLOURS["cancelled"])] if shown[1] else []
    for label, colour in items:
        draw.rectangle((x, y, x + 14, y + 14), fill=colour)
        draw.text((x + 20, y + 7), label, fill=_COLOURS["text"], font=font, anchor="lm")
        x += 40 + round(draw.textlength(label, font=font))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def _save_png(image: Any, path: Path) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    try:
        atomic_write(path, buf.getvalue())
    except OSError as exc:
        raise UsageError(
            f"cannot write the plot to {path}: {exc.strerror or exc}. Pass a file path"
        ) from None


# --- formatting ------------------------------------------------------------------------------


def _nice_step(raw: float, integers: bool = False) -> float:
    """The smallest step of the form 1, 2, 2.5 or 5 x 10^k that is >= raw."""
    if raw <= 0:
        return 1.0
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 2, 2.5, 5, 10):
        step = mantissa * 10**exponent
        if step >= raw and (not integers or step == int(step)):
            return float(step)
    return float(10 ** (exponent + 1))


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def _fmt_duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _time_step(raw: float) -> float:
    """A tick step that reads well on a clock: 1-2-5 below a minute, whole minutes or hours."""
    if raw < 10:
        return _nice_step(raw)
    for step in (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200):
        if step >= raw:
            return float(step)
    return 86400 * math.ceil(raw / 86400)


def _fmt_clock(seconds: float, span: float) -> str:
    """Axis label: seconds for short runs, m:ss (or h:mm:ss) for longer ones."""
    if span < 120:
        return f"{seconds:g}s"
    minutes, secs = divmod(round(seconds), 60)
    if span < 3600:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _number(value: object) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


