"""Scenarios 10-11 (`--only journal,flat`): resuming next to a 1,000,000-image journal, and
50,000 images end to end, both in flat memory."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import harness as h
from tables import Context, Row, Scenario, fmt

from rpq.journal import JOURNAL_NAME, Journal, index_path, job_key

# Targets from issue 13.
FIRST_RUN_S = 2.0
RSS_MB = 150.0
#: Peak RSS may grow this much per 1,000 images of one run: half of the 0.5 KB per image
#: that the run's seen keys and output names cost while they were held in memory.
GROWTH_MB = 0.25


#: What grows with the images of one run; one run of each size, so RSS noise of 1-2 MB moves
#: the figure by up to 0.05.
GROWTH_WHY = (
    "a flat folder's names, all read and sorted before the walk (held packed, about 15 bytes "
    "each), and at the end the folder's time figures (24 bytes per image) and their sort. "
    "SQLite's page caches and the journal's recent entries fill to their bounds in both runs")


@dataclass(frozen=True)
class JournalSizes:
    """Everything --quick shrinks in scenarios 10-11."""

    journal_images: int = 1_000_000
    new_images: int = 100
    e2e_images: int = 50_000
    e2e_small: int = 10_000  # the run the big one's peak RSS is compared with
    e2e_workers: int = 16
    e2e_concurrency: int = 64


FULL = JournalSizes()
QUICK = JournalSizes(journal_images=5_000, new_images=20, e2e_images=500, e2e_small=100,
                     e2e_workers=8,
                     e2e_concurrency=32)


def sizes_of(ctx: Context) -> JournalSizes:
    return QUICK if ctx.quick else FULL


def big_journal(ctx: Context, images: int) -> Path:
    """A folder whose journal shows `images` images done, written through Journal itself as a
    batch writes it (intent, submitted, end); made once and cached."""
    folder = ctx.cache / f"journal-{images}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    with Journal(folder / JOURNAL_NAME) as journal:
        for i in range(images):
            key = job_key(f"{i:064x}", "bench")
            rel = f"photos/{i // 1000:04d}/img_{i:07d}.jpg"
            job_id = f"{i:08x}-0000-4000-8000-000000000000-u1"
            journal.intent(key, rel, 1)
            journal.submitted(key, job_id, h.ENDPOINT_ID, "http://127.0.0.1:1/v2")
            journal.end(key, {
                "input": rel, "status": "COMPLETED", "job_id": job_id, "outputs": [rel],
                "attempts": 1, "submit_time": 1.8e9 + i, "queue_time": 0.2,
                "process_time": 1.5, "total_time": 1.8, "worker_id": "w1",
                "endpoint": h.ENDPOINT_ID, "timestamp": "2026-12-01T00:00:00.000Z"})
    (folder / ".complete").write_text("")
    ctx.log(f"  built a {images:,}-image journal in {time.perf_counter() - started:.0f} s "
            f"({(folder / JOURNAL_NAME).stat().st_size / 1e6:.0f} MB)")
    return folder


def _first_run_s(measured: h.Measured, snapshot: dict[str, object]) -> float | None:
    events = snapshot.get("events") or {}
    clock = snapshot["clock"]
    first = events.get("first_run") if isinstance(events, dict) else None
    if first is None or not isinstance(clock, dict):
        return None
    return float(first) + clock["wall"] - clock["monotonic"] - measured.start_wall


# ---- 10. resume next to a 1,000,000-image journal ------------------------------------------


def scenario_journal(ctx: Context) -> Scenario:
    z = sizes_of(ctx)
    sc = Scenario("10", "Resume next to a big journal", (
        f"An output folder whose journal shows {z.journal_images:,} images done (intent, "
        f"submitted and end lines written through rpq's Journal, as a batch writes them), and "
        f"{z.new_images} new 32x32 PNGs to send; `rpq batch` resumes into that folder against "
        f"the local endpoint (`echo`, 4 workers). Time to the first /run is from the client's "
        f"start (interpreter included) to the endpoint seeing it; peak RSS from wait4()."))
    source = big_journal(ctx, z.journal_images)
    folder = h.image_set(ctx.cache, z.new_images)
    firsts, peaks = [], []
    for rep in range(ctx.sizes.reps):
        out = h.fresh_folder(ctx.work / "runs" / f"s10-r{rep}")
        for name in (JOURNAL_NAME, index_path(Path(JOURNAL_NAME)).name):
            if (source / name).exists():
                shutil.copyfile(source / name, out / name)
        with h.EndpointProcess.beside(out, handler="echo", workers_max=4) as ep:
            measured = h.rpq_batch(folder, out, ep.env(), 8, timeout=600)
        snapshot = ep.snapshot
        first = _first_run_s(measured, snapshot)
        done = len(snapshot["jobs"])
        ctx.log(f"  s10 r{rep}: first /run after {fmt(first)} s, peak RSS "
                f"{measured.max_rss_mb:.0f} MB, {done}/{z.new_images} sent, exit {measured.code}")
        firsts.append(first if first is not None else float("inf"))
        peaks.append(measured.max_rss_mb)
        shutil.rmtree(out, ignore_errors=True)
    first, peak = sorted(firsts)[len(firsts) // 2], sorted(peaks)[len(peaks) // 2]
    label = f"{z.journal_images:,}-image journal"
    sc.rows.append(Row("10", f"time to the first /run, {label}, s", fmt(first), "", "",
                       f"<= {FIRST_RUN_S:g}", first <= FIRST_RUN_S,
                       why="interpreter start, imports and /health come first"))
    sc.rows.append(Row("10", f"peak RSS, resuming next to a {label}, MB", f"{peak:.0f}", "", "",
                       f"<= {RSS_MB:g}", peak <= RSS_MB))
    sc.notes.append(
        "The journal's index (`.rpq-journal.index`, SQLite) holds each image's state; a "
        "resume opens it and reads only the journal lines written after its last save. The "
        "previous version read the whole journal into memory: 28 s and 754 MB for a million "
        "images.")
    sc.data = {"first_run_s": firsts, "peak_rss_mb": peaks,
               "journal_mb": (source / JOURNAL_NAME).stat().st_size / 1e6}
    return sc


# ---- 11. 50,000 images end to end in flat memory -------------------------------------------


def end_to_end(ctx: Context, images: int) -> tuple[h.RunFigures, h.Measured, Path]:
    """`images` images through rpq against a local endpoint with no limits; the figures."""
    z = sizes_of(ctx)
    folder = h.image_set(ctx.cache, images)
    out = h.fresh_folder(ctx.work / "runs" / f"s11-{images}")
    with h.EndpointProcess.beside(out, handler="echo", workers_max=z.e2e_workers,
                                  rate_limits="off") as ep:
        measured = h.rpq_batch(folder, out, ep.env(), z.e2e_concurrency,
                               timeout=120 + images * 0.05, unpaced=True)
    snapshot = ep.snapshot
    figures = h.rpq_figures(images, out, measured, snapshot)
    ctx.log(f"  s11: {figures.completed}/{images} done, wall {figures.wall:.1f} s, "
            f"peak RSS {figures.max_rss_mb:.0f} MB, cpu {figures.cpu_seconds:.1f} s, "
            f"exit {figures.exit_code}")
    return figures, measured, out


def scenario_flat(ctx: Context) -> Scenario:
    z = sizes_of(ctx)
    sc = Scenario("11", "Many images end to end", (
        f"{z.e2e_small:,} then {z.e2e_images:,} 32x32 PNGs, `echo` handler with no delay, "
        f"{z.e2e_workers} workers, the endpoint's rate limits off and rpq's pacing lifted "
        f"(`bench/rpq_unpaced.py`), concurrency {z.e2e_concurrency}. Peak RSS and CPU from "
        "wait4(); the growth per 1,000 images compares the two runs."))
    small, _, small_out = end_to_end(ctx, z.e2e_small)
    figures, measured, out = end_to_end(ctx, z.e2e_images)
    growth = ((figures.max_rss_mb - small.max_rss_mb) / (z.e2e_images - z.e2e_small) * 1000)
    sc.rows.append(Row("11", f"peak RSS, {z.e2e_small:,} images, MB",
                       f"{small.max_rss_mb:.0f}", "", ""))
    sc.rows.append(Row("11", f"peak RSS, {z.e2e_images:,} images, MB",
                       f"{figures.max_rss_mb:.0f}", "", "", f"<= {RSS_MB:g}",
                       figures.max_rss_mb <= RSS_MB and figures.completed == z.e2e_images))
    sc.rows.append(Row("11", "peak RSS growth per 1,000 images, MB", f"{growth:.2f}", "", "",
                       f"<= {GROWTH_MB:g}", growth <= GROWTH_MB, why=GROWTH_WHY))
    sc.rows.append(Row("11", f"jobs per second, {z.e2e_images:,} images",
                       fmt(figures.jobs_per_second), "", ""))
    index = index_path(out / JOURNAL_NAME)
    sc.data = {"completed": figures.completed, "peak_rss_mb": figures.max_rss_mb,
               "peak_rss_small_mb": small.max_rss_mb, "growth_per_1000_mb": growth,
               "cpu_seconds": figures.cpu_seconds, "wall": figures.wall,
               "index_mb": index.stat().st_size / 1e6 if index.exists() else None,
               "rss_samples": measured.rss_samples[-5:]}
    for folder in (small_out, out):
        for child in folder.iterdir():
            if child.suffix == ".png":
                os.unlink(child)
    return sc


SCENARIOS = {"10": scenario_journal, "11": scenario_flat}
ALIASES = {"journal": "10", "flat": "11"}
