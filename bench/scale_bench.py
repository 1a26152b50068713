"""Scenarios 7-9 (`--only photos,cpu,auto`): camera photos in bounded memory, CPU per image
against Pillow's floor, and --concurrency auto against fixed 8 and the runpod SDK loop."""

from __future__ import annotations

import io
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h
from tables import Context, Row, Scenario, fmt, ratio

# Targets from issue 11.
PHOTO_RSS_MB = 300.0
CPU_OVER_FLOOR = 1.25
AUTO_WARM_OVER_IDEAL = 1.3
AUTO_QUEUE_MAX = 8
AUTO_SCALE_OVER_IDEAL = 1.2


@dataclass(frozen=True)
class ScaleSizes:
    """Everything --quick shrinks in scenarios 7-9."""

    photos: int = 40
    photo_size: str = "24 MP"
    photo_concurrency: tuple[int, ...] = (8, 32, 64)
    cpu_sizes: tuple[str, ...] = ("12 MP", "12 MP phone", "24 MP")
    cpu_max_side_only: tuple[str, ...] = ("12 MP phone",)  # as they are: as 12 MP
    cpu_images: int = 40
    max_side: int = 2048
    warm_jobs: int = 960
    warm_workers: int = 48
    small_jobs: int = 60
    small_workers: int = 2
    scale_jobs: int = 400
    scale_workers: int = 16
    cold: float = 3.0
    job: float = 0.5


FULL = ScaleSizes()
QUICK = ScaleSizes(photos=4, photo_size="2 MP", photo_concurrency=(8, 32), cpu_sizes=("2 MP",),
                   cpu_images=4,
                   max_side=600, warm_jobs=48, warm_workers=8, small_jobs=12, scale_jobs=24,
                   scale_workers=4, cold=0.5, job=0.2)


def sizes_of(ctx: Context) -> ScaleSizes:
    return QUICK if ctx.quick else FULL


# ---- one measured client run ---------------------------------------------------------------


def run(ctx: Context, tag: str, client: str, folder: Path, images: int,
        endpoint: dict[str, Any], args: tuple[str, ...] = (), concurrency: int = 8,
        timeout: float = 600.0, keep: bool = False) -> tuple[h.RunFigures, dict[str, Any]]:
    """rpq with `args` (its defaults otherwise), or the SDK loop with `concurrency` threads;
    returns the figures and the endpoint's snapshot (its job timeline)."""
    out = h.fresh_folder(ctx.work / "runs" / f"{tag}-{client}")
    with h.EndpointProcess.beside(out, **endpoint) as ep:
        if client == "baseline":
            measured = h.baseline_batch(folder, out, ep, concurrency, timeout)
        else:
            measured = h.rpq_batch(folder, out, ep.env(), None, timeout, extra=args)
    snapshot = ep.snapshot
    figures = (h.baseline_figures if client == "baseline" else h.rpq_figures)(
        images, out, measured, snapshot)
    figures.client = client
    figures.extra["queued_max"] = queued_max(snapshot)
    ctx.log(f"  {tag} {client} {' '.join(args)}: {figures.completed}/{images} done, makespan "
            f"{figures.makespan:.2f} s, wall {figures.wall:.2f} s, rss {figures.max_rss_mb:.0f} "
            f"MB, cpu {figures.cpu_seconds:.1f} s, queued max {figures.extra['queued_max']}, "
            f"exit {figures.exit_code}")
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return figures, snapshot


def queued_max(snapshot: dict[str, Any]) -> int:
    """Most jobs of the run waiting in the endpoint's queue at once (created, not started)."""
    events = []
    for job in snapshot["jobs"]:
        if job.get("created") is None:
            continue
        events.append((job["created"], 1))
        end = job.get("started") or job.get("finished")
        if end is not None:
            events.append((end, -1))
    depth = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        depth += step
        most = max(most, depth)
    return most


# ---- 7. photos in bounded memory -------------------------------------------------------------


def scenario_photos(ctx: Context) -> Scenario:
    z = sizes_of(ctx)
    sc = Scenario("7", "Camera photos in bounded memory", (
        f"{z.photos} JPEGs of {z.photo_size} ({'x'.join(map(str, h.PHOTO_SIZES[z.photo_size]))}, "
        f"`bench/harness.py` photo_bytes: smooth colour under fine grain, about "
        f"{7 * int(z.photo_size.split()[0]) // 24} MB each, the same bytes every run), "
        f"`echo` handler (each result is the photo itself, base64 in the status reply), 16 "
        f"workers. rpq with `--concurrency N` and its default memory budget, as they are and "
        f"with `--max-side {z.max_side}`. Peak RSS of the client from wait4()."))
    folder = h.photo_set(ctx.cache, z.photos, z.photo_size)
    endpoint = {"handler": "echo", "workers_max": 16}
    table = ["| concurrency | options | done | peak RSS MB | client CPU s | wall s | exit |",
             "|---|---|---|---|---|---|---|"]
    peaks: dict[str, float] = {}
    for conc in z.photo_concurrency:
        for extra in ((), ("--max-side", str(z.max_side))):
            args = ("--concurrency", str(conc), *extra)
            r, _ = run(ctx, f"s7-c{conc}{'-ms' if extra else ''}", "rpq", folder, z.photos,
                       endpoint, args, timeout=600)
            label = " ".join(extra) or "as they are"
            peaks[f"{conc} {label}"] = r.max_rss_mb
            ok = r.max_rss_mb <= PHOTO_RSS_MB and r.completed == z.photos
            sc.rows.append(Row("7", f"peak RSS, {z.photos} x {z.photo_size}, concurrency "
                               f"{conc}, {label}, MB", f"{r.max_rss_mb:.0f}", "", "",
                               f"<= {PHOTO_RSS_MB:g}", ok,
                               why="see the per-run table; the memory budget bounds image "
                               "bytes, not the interpreter, threads and buffers of requests"))
            table.append(f"| {conc} | {label} | {r.completed}/{z.photos} | "
                         f"{r.max_rss_mb:.0f} | {r.cpu_seconds:.1f} | {r.wall:.1f} | "
                         f"{r.exit_code} |")
    sc.data = {"peak_rss_mb": peaks}
    sc.detail = table
    sc.notes.append(
        "Issue 11 measured the same 40 photos before this work at 4.0 GB (concurrency 32) and "
        "6.7 GB (with --max-side 2048).")
    return sc


# ---- 8. CPU per image against the floor ------------------------------------------------------


def floor_seconds(inputs: list[Path], outputs: list[Path]) -> float:
    """CPU of Pillow decoding each input once and each result once, in this process."""
    from PIL import Image

    start = time.process_time()
    for path in [*inputs, *outputs]:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            im.load()
    return time.process_time() - start


def resize_floor_seconds(inputs: list[Path], outputs: list[Path],
                         max_side: int) -> tuple[float, float]:
    """CPU of the least --max-side itself asks for: decoding each input at the libjpeg scale
    nearest the target (as rpq does, at most 1/32 under it, where it is sent as it is),
    shrinking it with bilinear when it is over (as rpq does), encoding it as JPEG; and
    decoding each result once. Returns (all of it, the resize and the encode alone)."""
    from PIL import Image

    from rpq.images import _near  # rpq's own rule for how far under the target a scale may be

    start = time.process_time()
    own = 0.0
    for path in inputs:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            scale = max_side / max(im.size)
            size = (round(im.width * scale), round(im.height * scale))
            im.draft(None, (_near(size[0]), _near(size[1])))
            im.load()
            begin = time.process_time()
            small = im.resize(size, Image.Resampling.BILINEAR) if max(im.size) > max_side \
                else im.copy()
        small.save(io.BytesIO(), "JPEG", quality=92)
        own += time.process_time() - begin
    for path in outputs:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            im.load()
    return time.process_time() - start, own


@dataclass(frozen=True)
class CpuRun:
    """One measured batch of scenario 8 and the floor measured right after it."""

    per_image: float  # client CPU seconds per image, start-up left out
    floor: float  # Pillow decoding an input and its result, seconds per image
    resize_floor: float | None  # the least --max-side asks for, seconds per image
    resize_own: float | None  # of which the resize and the encode
    per_second: float
    complete: bool

    @property
    def over(self) -> float:
        return self.per_image / self.floor if self.floor > 0 else math.inf


def cpu_run(ctx: Context, tag: str, folder: Path, images: int, endpoint: dict[str, Any],
            extra: tuple[str, ...], single_cpu: float, max_side: int) -> CpuRun:
    full, _ = run(ctx, tag, "rpq", folder, images, endpoint, extra, keep=True)
    out = ctx.work / "runs" / f"{tag}-rpq"
    inputs = sorted(folder.glob("*.jpg"))
    outputs = sorted(out.glob("*.jpg"))
    # The median of three passes: one pass alone moved by 15% from run to run (77-89 ms per
    # 12 MP photo) while rpq's own CPU moved by 2%.
    passes = 1 if ctx.quick else 3
    floor = statistics.median(floor_seconds(inputs, outputs)
                              for _ in range(passes)) / max(1, len(inputs))
    resize_floor = resize_own = None
    if extra:
        both = sorted((resize_floor_seconds(inputs, outputs, max_side)
                       for _ in range(passes)), key=lambda t: t[0])[passes // 2]
        resize_floor, resize_own = (t / len(inputs) for t in both)
    shutil.rmtree(out, ignore_errors=True)
    return CpuRun((full.cpu_seconds - single_cpu) / (images - 1), floor, resize_floor,
                  resize_own, full.jobs_per_second, len(outputs) == len(inputs))


def scenario_cpu(ctx: Context) -> Scenario:
    z = sizes_of(ctx)
    reps = ctx.sizes.reps
    sc = Scenario("8", "Client CPU per image", (
        f"{z.cpu_images} photos per size, `echo` handler, 16 workers, rpq with its defaults. "
        f"CPU per image = (client CPU of the run - client CPU of the same command on one "
        f"photo, median of three) / {z.cpu_images - 1}: start-up and imports left out. "
        "Floor = Pillow decoding each input once plus each result rpq wrote once, measured in "
        "the bench process right after the run (the median of three passes). Each case runs "
        f"{reps} time(s), each with its "
        "own floor (this machine's speed drifts by a fifth from minute to minute); the run "
        "with the median ratio is shown, with the range of the ratios. Images per second: "
        "first /run to last result; at the floor, two cores would do 2 / floor."))
    endpoint = {"handler": "echo", "workers_max": 16}
    table = ["| photos | options | CPU per image ms | floor ms | ratio (range) | images/s | "
             "2 cores at the floor, images/s |", "|---|---|---|---|---|---|---|"]
    data: dict[str, Any] = {}
    for mp in z.cpu_sizes:
        folder = h.photo_set(ctx.cache, z.cpu_images, mp)
        one = h.photo_set(ctx.cache, 1, mp)
        max_side = ("--max-side", str(z.max_side))
        for extra in (max_side,) if mp in z.cpu_max_side_only else ((), max_side):
            tag = f"s8-{mp.lower().replace(' ', '-')}{'-ms' if extra else ''}"
            # Start-up alone varies from run to run on a busy machine: the median of three.
            singles = [run(ctx, f"{tag}-one", "rpq", one, 1, endpoint, extra)[0].cpu_seconds
                       for _ in range(1 if ctx.quick else 3)]
            single_cpu = statistics.median(singles)
            runs = sorted((cpu_run(ctx, tag, folder, z.cpu_images, endpoint, extra, single_cpu,
                                   z.max_side) for _ in range(reps)), key=lambda r: r.over)
            m = runs[len(runs) // 2]
            spread = (f"; {runs[0].over:.2f}-{runs[-1].over:.2f}x over {reps} runs"
                      if reps > 1 else "")
            label = " ".join(extra) or "as they are"
            why = ("base64, JSON and HTTP of the request and the result, a SHA-256 of each "
                   "file, and the job's own bookkeeping")
            if m.resize_floor is not None and m.resize_own is not None:
                why = (f"the resize and the JPEG encode that --max-side asks for take "
                       f"{m.resize_own / m.floor:.2f}x the floor on their own, which leaves "
                       f"them out; the least --max-side asks for (scaled decode, resize, "
                       f"encode, result decode) is {m.resize_floor / m.floor:.2f}x the floor, "
                       f"and rpq runs at {m.per_image / m.resize_floor:.2f}x of that: {why}")
            sc.rows.append(Row(
                "8", f"client CPU per image / floor, {mp}, {label}",
                f"{m.over:.2f}x ({m.per_image * 1000:.0f} ms / {m.floor * 1000:.0f} ms"
                f"{spread})", "", "",
                f"<= {CPU_OVER_FLOOR:g}x", m.over <= CPU_OVER_FLOOR and m.complete, why=why))
            if m.resize_floor is not None and m.resize_own is not None:
                sc.rows.append(Row(
                    "8", f"client CPU per image / (scaled decode + resize + encode + result "
                    f"decode), {mp}, {label}",
                    f"{m.per_image / m.resize_floor:.2f}x ({m.resize_floor * 1000:.0f} ms = "
                    f"{m.resize_floor / m.floor:.2f}x the floor)", ""))
                sc.rows.append(Row(
                    "8", f"the resize and the JPEG encode alone, {mp}, {label}, ms",
                    f"{m.resize_own * 1000:.0f} ({m.resize_own / m.floor:.2f}x the floor)", "",
                    "", f"(all the target leaves over the floor: {CPU_OVER_FLOOR - 1:.2f}x)"))
            sc.rows.append(Row("8", f"images per second, {mp}, {label}",
                               fmt(m.per_second), "", "",
                               f"(two cores at the floor: {2 / m.floor:.1f})"))
            dims = "x".join(map(str, h.PHOTO_SIZES[mp]))
            table.append(f"| {mp} ({dims}) | {label} | {m.per_image * 1000:.0f} | "
                         f"{m.floor * 1000:.0f} | {m.over:.2f}x ({runs[0].over:.2f}-"
                         f"{runs[-1].over:.2f}) | {m.per_second:.2f} | {2 / m.floor:.2f} |")
            data[f"{mp} {label}"] = {"per_image": m.per_image, "floor": m.floor,
                                     "over": m.over, "per_second": m.per_second,
                                     "resize_floor": m.resize_floor,
                                     "resize_own": m.resize_own,
                                     "over_range": [runs[0].over, runs[-1].over]}
    sc.data = data
    sc.detail = table
    sc.notes.append(
        "rpq checks a JPEG (input and result) at 1/8 scale in grey: libjpeg still reads and "
        "entropy-decodes every byte, so a truncated file fails as at full size, for about 40% "
        "of a full decode. The figures include everything else the client does per image.")
    sc.notes.append(
        "With --max-side, rpq decodes a JPEG at the libjpeg scale nearest the target (1/2 for "
        "every size here), straight from the file, and reuses the digest it made for the "
        "journal key. A scale that lands at most 1/32 under the target is sent as it is: "
        "the phone photo's 1/2 scale, 2016 x 1512 for 2048, needs no resize at all (it was "
        "scaled up the last 1.6% with LANCZOS before, which added pixels but no detail, for "
        "about 50 ms). The two passes of a resize run one after the other; at most one photo "
        "per CPU is prepared at a time, and Pillow keeps freed pixel blocks for the next one "
        "(in a quarter of the memory budget at most), instead of mapping and faulting in "
        "fresh memory for each of the three images a resize makes. A shrink is bilinear: BOX "
        "(area averaging) would save 5-11 ms per "
        "photo, but lands 7 dB of PSNR further from a LANCZOS resize of the full decode (38 "
        "against 46 dB at 12 MP).")
    return sc


# ---- 9. concurrency that follows the endpoint ------------------------------------------------


def scenario_auto(ctx: Context) -> Scenario:
    z = sizes_of(ctx)
    warm_ideal = z.warm_jobs * z.job / z.warm_workers
    scale_ideal = z.cold + math.ceil(z.scale_jobs / z.scale_workers) * z.job
    sc = Scenario("9", "Concurrency that follows the endpoint", (
        f"Small PNGs, `echo` handler + {z.job:g} s per job. rpq with its defaults "
        "(`--concurrency auto`), rpq with `--concurrency 8` (the old default), and the SDK "
        f"loop with 8 threads. (a) {z.warm_jobs} jobs, {z.warm_workers} warm workers: ideal "
        f"{warm_ideal:g} s, wall time from spawn to exit. (b) {z.small_jobs} jobs, "
        f"{z.small_workers} warm workers: the most of the batch's jobs waiting in the "
        f"endpoint's queue at once (its job timeline). (c) {z.scale_jobs} jobs, workers "
        f"0 -> {z.scale_workers} started on demand with a {z.cold:g} s cold start: ideal = "
        f"cold start + ceil({z.scale_jobs}/{z.scale_workers}) x {z.job:g} s = "
        f"{scale_ideal:g} s, makespan from the first /run."))
    clients = (("rpq", ()), ("rpq", ("--concurrency", "8")), ("baseline", ()))
    names = ("auto", "fixed 8", "SDK loop, 8 threads")
    warm = {"handler": "echo", "workers_max": z.warm_workers, "process_time": z.job}
    small = {"handler": "echo", "workers_max": z.small_workers, "process_time": z.job}
    scaling = {"handler": "echo", "workers_min": 0, "workers_max": z.scale_workers,
               "cold_start": z.cold, "process_time": z.job, "idle_timeout": 60}
    table = ["| case | client | done | wall s | makespan s | queued at most | status req/job | "
             "client CPU s |", "|---|---|---|---|---|---|---|---|"]
    found: dict[str, list[h.RunFigures]] = {}
    for case, jobs, endpoint in (("a", z.warm_jobs, warm), ("b", z.small_jobs, small),
                                 ("c", z.scale_jobs, scaling)):
        folder = h.image_set(ctx.cache, jobs)
        found[case] = []
        for (client, args), name in zip(clients, names, strict=True):
            r, _ = run(ctx, f"s9{case}", client, folder, jobs, endpoint, args,
                       timeout=120 + 20 * warm_ideal)
            found[case].append(r)
            table.append(f"| {case} | {name} | {r.completed}/{jobs} | {r.wall:.2f} | "
                         f"{r.makespan:.2f} | {r.extra['queued_max']} | "
                         f"{r.status_per_job:.2f} | {r.cpu_seconds:.1f} |")
    a, b, c = found["a"], found["b"], found["c"]
    sc.rows += [
        Row("9", f"(a) {z.warm_workers} warm workers, {z.warm_jobs} jobs: wall / ideal "
            f"{warm_ideal:g} s", f"{a[0].wall / warm_ideal:.2f}x ({a[0].wall:.1f} s)",
            f"{a[2].wall / warm_ideal:.2f}x", ratio(a[0].wall, a[2].wall),
            f"<= {AUTO_WARM_OVER_IDEAL:g}x", a[0].wall <= AUTO_WARM_OVER_IDEAL * warm_ideal
            and a[0].completed == z.warm_jobs,
            why="rpq's /run pacing (90 per second) and its start-up"),
        Row("9", "(a) the same with --concurrency 8", f"{a[1].wall / warm_ideal:.2f}x", ""),
        Row("9", f"(b) {z.small_workers} workers: most of the batch's jobs queued at once",
            str(b[0].extra["queued_max"]), str(b[2].extra["queued_max"]), "",
            f"<= {AUTO_QUEUE_MAX}", b[0].extra["queued_max"] <= AUTO_QUEUE_MAX,
            why="jobs submitted between two /health snapshots"),
        Row("9", "(b) the same with --concurrency 8", str(b[1].extra["queued_max"]), ""),
        Row("9", "(b) makespan, s", fmt(b[0].makespan), fmt(b[2].makespan),
            ratio(b[0].makespan, b[2].makespan)),
        Row("9", f"(c) 0 -> {z.scale_workers} workers: makespan / ideal {scale_ideal:g} s",
            f"{c[0].makespan / scale_ideal:.2f}x ({c[0].makespan:.1f} s)",
            f"{c[2].makespan / scale_ideal:.2f}x", ratio(c[0].makespan, c[2].makespan),
            f"<= {AUTO_SCALE_OVER_IDEAL:g}x", c[0].makespan <= AUTO_SCALE_OVER_IDEAL * scale_ideal
            and c[0].completed == z.scale_jobs,
            why="the scaler starts one worker per queued job, and rpq keeps at most "
            "8 queued beyond the workers it sees"),
        Row("9", "(c) the same with --concurrency 8", f"{c[1].makespan / scale_ideal:.2f}x", ""),
    ]
    sc.data = {case: {name: r.summary() for name, r in zip(names, runs, strict=True)}
               for case, runs in found.items()}
    sc.data["ideal"] = {"a": warm_ideal, "c": scale_ideal}
    sc.detail = table
    return sc


def summary_parts(data: dict[str, dict[str, Any]]) -> list[str]:
    """Scenarios 7-9 in the report's one-sentence summary."""
    parts = []
    if data.get("7", {}).get("peak_rss_mb"):
        peaks = data["7"]["peak_rss_mb"]
        parts.append(f"{len(peaks)} runs of camera photos in at most {max(peaks.values()):.0f} "
                     "MB peak")
    if data.get("8"):
        worst = max(v["over"] for v in data["8"].values())
        parts.append(f"client CPU per photo at most {worst:.2f}x Pillow's decode floor")
    if data.get("9", {}).get("a"):
        a, c, ideal = data["9"]["a"], data["9"]["c"], data["9"]["ideal"]
        parts.append(
            f"default settings {a['auto']['wall'] / ideal['a']:.2f}x the ideal on "
            f"{a['auto']['images']} jobs over warm workers (fixed 8: "
            f"{a['fixed 8']['wall'] / ideal['a']:.2f}x) and "
            f"{c['auto']['makespan'] / ideal['c']:.2f}x on an endpoint scaling from zero")
    return parts


SCENARIOS = {"7": scenario_photos, "8": scenario_cpu, "9": scenario_auto}
ALIASES = {"photos": "7", "cpu": "8", "auto": "9"}


__all__ = ["ALIASES", "SCENARIOS"]
