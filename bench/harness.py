"""Benchmark plumbing: images, the endpoint process, measured client runs, and their figures."""

from __future__ import annotations

import io
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = Path(sys.executable)
RPQ = PYTHON.with_name("rpq")
ENDPOINT_ID = "bench"
RSS_EVERY = 0.1  # seconds between VmRSS / VmHWM samples of a running client


# ---- the machine -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "cpus": str(os.cpu_count() or "?"),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---- images ------------------------------------------------------------------------------


def image_pool(cache: Path, count: int, side: int = 32) -> Path:
    """`count` distinct small PNGs (noise, so each has its own content) in `cache`; made once."""
    from PIL import Image

    pool = cache / f"pool-{side}px"
    pool.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in pool.iterdir()}
    for n in range(count):
        name = f"img{n:05d}.png"
        if name in have:
            continue
        rng = random.Random(n)
        data = rng.randbytes(side * side * 3)
        tmp = pool / f".{name}.tmp"
        Image.frombytes("RGB", (side, side), data).save(tmp, format="PNG")
        os.replace(tmp, pool / name)
    return pool


def image_set(cache: Path, count: int) -> Path:
    """A folder holding exactly the first `count` images of the pool (hard links)."""
    pool = image_pool(cache, count)

    def link(_: int, target: Path) -> None:
        try:
            os.link(pool / target.name, target)
        except OSError:
            target.write_bytes((pool / target.name).read_bytes())

    return made_once(cache / f"set-{count}", [f"img{n:05d}.png" for n in range(count)], link)


def made_once(folder: Path, names: list[str], make: Callable[[int, Path], None]) -> Path:
    """`folder` holding `names`, the nth made by make(n, path) unless there, then marked
    complete: a later call returns it untouched (an interrupted one goes on where it stopped)."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        target = folder / name
        if not target.exists():
            make(n, target)
    marker.write_text("")
    return folder


#: Camera sizes: megapixels -> (width, height), 3:2 like most camera sensors.
PHOTO_SIZES = {"2 MP": (1800, 1200), "12 MP": (4200, 2800), "12 MP phone": (4032, 3024),
               "24 MP": (6000, 4000)}


def photo_bytes(seed: int, size: tuple[int, int]) -> bytes:
    """A JPEG that compresses like a camera photo (about 7 MB at 24 MP): smooth colour fields
    under fine grain, from a seeded generator so every run sends the same bytes."""
    from PIL import Image, ImageChops

    rng = random.Random(seed)
    w, h = size
    coarse = (max(1, w // 32), max(1, h // 32))
    base = Image.frombytes("RGB", coarse, rng.randbytes(coarse[0] * coarse[1] * 3))
    base = base.resize(size, Image.Resampling.BICUBIC)
    grain = Image.frombytes("L", size, rng.randbytes(w * h)).point(lambda v: v * 15 // 255)
    im = ImageChops.add(base, Image.merge("RGB", (grain, grain, grain)))
    tmp = io.BytesIO()
    im.save(tmp, "JPEG", quality=90)
    return tmp.getvalue()


def photo_set(cache: Path, count: int, kind: str) -> Path:
    """A folder of `count` distinct camera-size JPEGs of a PHOTO_SIZES kind; made once, then
    reused."""
    megapixels = int(kind.split()[0])

    def photo(n: int, target: Path) -> None:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(photo_bytes(1000 * megapixels + n, PHOTO_SIZES[kind]))
        os.replace(tmp, target)

    name = kind.lower().replace(" mp", "mp").replace(" ", "-")
    return made_once(cache / f"photos-{name}-{count}",
                     [f"photo{n:03d}.jpg" for n in range(count)], photo)


# ---- the endpoint process ----------------------------------------------------------------


class EndpointProcess:
    """bench/endpoint_proc.py in its own process; stop() returns its snapshot.

    As a context manager: stopped at the end of the block, its snapshot then in `snapshot`;
    killed instead if the block fails, so that it never outlives a failed client run.
    """

    def __init__(self, snapshot: Path, **options: Any) -> None:
        self.snapshot_path = snapshot
        self.snapshot: dict[str, Any] = {}
        args = [str(PYTHON), str(BENCH / "endpoint_proc.py"), "--snapshot", str(snapshot),
                "--endpoint-id", ENDPOINT_ID]
        for name, value in options.items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        snapshot.unlink(missing_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.base_url = self._first_line(timeout=30.0)

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),
                                  daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        line = box[0].strip() if box else ""
        if not line.startswith("http://"):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"endpoint process did not start: {line!r} {err[-2000:]}")
        return line

    def env(self) -> dict[str, str]:
        return {"RUNPOD_ENDPOINT_BASE_URL": self.base_url, "RUNPOD_ENDPOINT_ID": ENDPOINT_ID}

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("endpoint process did not stop on SIGTERM") from None
        if self.proc.returncode != 0 or not self.snapshot_path.exists():
            raise RuntimeError(f"endpoint process failed ({self.proc.returncode}): {err[-2000:]}")
        doc: dict[str, Any] = json.loads(self.snapshot_path.read_text(encoding="utf-8"))
        return doc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    @classmethod
    def beside(cls, out: Path, **options: Any) -> EndpointProcess:
        """An endpoint for a run into `out`, its snapshot kept next to that folder."""
        return cls(out.with_name(out.name + ".endpoint.json"), **options)

    def __enter__(self) -> EndpointProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.snapshot = self.stop()
        else:
            self.kill()


# ---- measured client processes -----------------------------------------------------------


@dataclass
class Measured:
    """One client process: exit code, wall time, peak RSS and CPU (from wait4)."""

    code: int
    wall: float
    start_wall: float
    end_wall: float
    max_rss_mb: float
    cpu_seconds: float
    log: Path
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (wall, MB)


def run_measured(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> Measured:
    """Run a child, wait for it with wait4 (its own rusage), kill it past `timeout`."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("RUNPOD_", "RPQ_"))}
    full_env.update(env)
    with log.open("wb") as sink:
        start_wall, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, env=full_env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        box: list[tuple[int, int, Any]] = []
        waiter = threading.Thread(target=lambda: box.append(os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()
        samples: list[tuple[float, float]] = []
        high = 0.0
        deadline = start + timeout
        while not box and time.perf_counter() < deadline:
            rss, hwm = _vm_mb(proc.pid)
            if rss is not None:
                samples.append((time.time(), rss))
            high = max(high, hwm or 0.0)
            waiter.join(min(RSS_EVERY, max(0.0, deadline - time.perf_counter())))
        if not box:
            os.kill(proc.pid, signal.SIGKILL)  # not proc.kill(): it would reap the child
            waiter.join(30)
        wall = time.perf_counter() - start
        end_wall = time.time()
    if not box:
        proc.returncode = -9
        raise RuntimeError(f"{cmd[0]} did not finish within {timeout:.0f} s (log: {log})")
    _, status, usage = box[0]
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here, so Popen must not wait for it again
    # wait4's ru_maxrss also counts what the child was before exec, a fork of this process
    # (which may hold decoded photos): the child's own high-water mark says what it used.
    return Measured(code=code, wall=wall, start_wall=start_wall, end_wall=end_wall,
                    max_rss_mb=high or usage.ru_maxrss / 1024,
                    cpu_seconds=usage.ru_utime + usage.ru_stime, log=log, rss_samples=samples)


def _vm_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of a running process in MB, from /proc (None once it is gone)."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line[:5]] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None, None
    return found.get("VmRSS"), found.get("VmHWM")


def log_of(out: Path) -> Path:
    """Where a run into `out` logs its client's output: beside the folder, not in it."""
    return out.with_name(out.name + ".log")


def rpq_batch(folder: Path, out: Path, env: dict[str, str], concurrency: int | None,
              timeout: float, extra: tuple[str, ...] = (), unpaced: bool = False) -> Measured:
    """`rpq batch --fresh` (`--concurrency` left to rpq when None); `unpaced`: through
    bench/rpq_unpaced.py, rpq with its request pacing lifted."""
    program = [str(PYTHON), str(BENCH / "rpq_unpaced.py")] if unpaced else [str(RPQ)]
    limit = ("--concurrency", str(concurrency)) if concurrency is not None else ()
    cmd = [*program, "batch", str(folder), "--out", str(out), "--no-progress", *limit,
           "--fresh", *extra]
    return run_measured(cmd, env, log_of(out), timeout)


def baseline_batch(folder: Path, out: Path, endpoint: EndpointProcess, concurrency: int,
                   timeout: float) -> Measured:
    cmd = [str(PYTHON), str(BENCH / "baseline_sdk.py"), str(folder), "--out", str(out),
           "--base-url", endpoint.base_url, "--endpoint-id", ENDPOINT_ID,
           "--concurrency", str(concurrency), "--result", str(out / "baseline.json")]
    return run_measured(cmd, {}, log_of(out), timeout)


def fresh_folder(path: Path) -> Path:
    """`path` as a new empty folder (whatever an earlier run left there is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---- figures -----------------------------------------------------------------------------


@dataclass
class RunFigures:
    """What one client run did, seen from both ends."""

    client: str
    images: int
    completed: int
    wall: float  # client process, spawn to exit
    makespan: float  # first /run at the server to the last result on disk
    startup: float  # client spawn to first /run at the server
    status_calls: int
    status_per_job: float
    run_calls: int
    server_calls: dict[str, int]
    lags: list[float]
    cancelled_on_server: int
    max_rss_mb: float
    rss_during_jobs_mb: float | None  # highest VmRSS sample up to the last result
    cpu_seconds: float
    server_cpu_seconds: float
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lag_p50(self) -> float | None:
        return quantile(self.lags, 0.50)

    @property
    def lag_p95(self) -> float | None:
        return quantile(self.lags, 0.95)

    @property
    def jobs_per_second(self) -> float:
        return self.completed / self.makespan if self.makespan > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "lags"}
        doc.update(lag_p50=self.lag_p50, lag_p95=self.lag_p95,
                   jobs_per_second=self.jobs_per_second)
        return doc


def quantile(values: list[float], q: float) -> float | None:
    """Linear-interpolated quantile, q in 0..1; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: list[float]) -> float:
    return statistics.median(values)


def _server_wall(snapshot: dict[str, Any]) -> Any:
    clock = snapshot["clock"]
    offset = clock["wall"] - clock["monotonic"]
    return lambda mono: None if mono is None else mono + offset


def _common(client: str, images: int, measured: Measured, snapshot: dict[str, Any],
            results: dict[str, float], completed: int) -> RunFigures:
    """Join the client's result times (job id -> wall) with the server's job snapshot."""
    to_wall = _server_wall(snapshot)
    jobs = snapshot["jobs"]
    calls = snapshot["calls"]
    first_run = to_wall(snapshot["events"].get("first_run"))
    if first_run is None:
        first_run = min((to_wall(j["created"]) for j in jobs), default=measured.start_wall)
    last_result = max(results.values(), default=measured.end_wall)
    lags = []
    for job in jobs:
        done = results.get(job["id"])
        finished = to_wall(job["finished"])
        if done is not None and finished is not None and job["status"] == "COMPLETED":
            lags.append(done - finished)
    status_calls = calls.get("status", 0) + calls.get("status-sync", 0)
    during = [mb for t, mb in measured.rss_samples if t <= last_result]
    return RunFigures(
        client=client,
        images=images,
        completed=completed,
        wall=measured.wall,
        makespan=last_result - first_run,
        startup=first_run - measured.start_wall,
        status_calls=status_calls,
        status_per_job=status_calls / images if images else 0.0,
        run_calls=calls.get("run", 0),
        server_calls={k: v for k, v in calls.items() if v},
        lags=lags,
        cancelled_on_server=sum(1 for j in jobs if j["status"] == "CANCELLED"),
        max_rss_mb=measured.max_rss_mb,
        rss_during_jobs_mb=max(during, default=None),
        cpu_seconds=measured.cpu_seconds,
        server_cpu_seconds=snapshot.get("server_cpu_seconds", 0.0),
        exit_code=measured.code,
    )


def rpq_figures(images: int, out: Path, measured: Measured,
                snapshot: dict[str, Any]) -> RunFigures:
    """rpq's result times come from its journal's "end" events (written after the image)."""
    results: dict[str, float] = {}
    journal = out / ".rpq-journal.jsonl"
    if journal.exists():
        with journal.open("rb") as fh:
            for raw in fh:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                record = event.get("record") or {}
                if event.get("event") == "end" and record.get("job_id"):
                    results[record["job_id"]] = float(event["ts"])
    metrics_path = out / "job_metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    completed = int((metrics.get("stats") or {}).get("completed") or 0)
    figures = _common("rpq", images, measured, snapshot, results, completed)
    figures.extra["client_requests"] = (metrics.get("run") or {}).get("requests")
    return figures


def baseline_figures(images: int, out: Path, measured: Measured,
                     snapshot: dict[str, Any]) -> RunFigures:
    """The baseline records when each job.output() returned and its image was written."""
    path = out / "baseline.json"
    doc = json.loads(path.read_text()) if path.exists() else {"jobs": []}
    results = {j["job_id"]: float(j["done"]) for j in doc["jobs"] if j.get("job_id")}
    completed = sum(1 for j in doc["jobs"] if j.get("ok"))
    figures = _common("baseline", images, measured, snapshot, results, completed)
    if "imported" in doc:
        figures.extra["sdk_import_seconds"] = doc["imported"] - doc["started"]
    errors = [j["error"] for j in doc["jobs"] if not j.get("ok")]
    if errors:
        figures.extra["errors"] = errors[:5]
    return figures
