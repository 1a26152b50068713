"""A LocalEndpoint in its own process: prints its base URL, writes a snapshot on SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The snapshot keeps what the benchmarks measure; inputs and outputs (base64 images) are dropped.
JOB_FIELDS = (
    "id", "status", "created", "queued", "started", "finished", "workerId", "retried",
    "attempts", "delayTime", "executionTime",
)


def parse_process_time(text: str) -> float | tuple[float, float]:
    """'0.5' -> 0.5, '4-6' -> (4.0, 6.0)."""
    lo, sep, hi = text.partition("-")
    return (float(lo), float(hi)) if sep else float(lo)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--handler", default="echo", help="echo or sleep (or any rpq handler)")
    parser.add_argument("--workers-min", type=int, default=None, help="default: --workers-max")
    parser.add_argument("--workers-max", type=int, default=4)
    parser.add_argument("--process-time", default="0", help="S, or LO-HI for a uniform spread")
    parser.add_argument("--cold-start", type=float, default=0.0)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--endpoint-id", default="bench")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--rate-limits", choices=("default", "off"), default="default",
        help="default: RunPod's documented per-10 s limits; off: none",
    )
    parser.add_argument(
        "--stall-after", type=float, default=None,
        help="pause the whole endpoint this many seconds after the first /run arrives",
    )
    parser.add_argument("--stall-for", type=float, default=0.0, help="seconds the pause lasts")
    parser.add_argument("--snapshot", type=Path, required=True, help="JSON file written on SIGTERM")
    return parser.parse_args(argv)


def _watch(ep: Any, events: dict[str, float], stop: threading.Event,
           stall_after: float | None, stall_for: float) -> None:
    """Note when the first /run arrives; with stall_after, pause the endpoint that much later."""
    while not stop.wait(0.002):
        if ep.calls()["run"] > 0:
            events["first_run"] = time.monotonic()
            break
    else:
        return
    if stall_after is None or stop.wait(stall_after):
        return
    ep.pause()
    events["paused"] = time.monotonic()
    stop.wait(stall_for)
    ep.resume()
    events["resumed"] = time.monotonic()


def snapshot(ep: Any, events: dict[str, float]) -> dict[str, Any]:
    """calls(), slimmed jobs(), and a wall/monotonic anchor to convert the jobs' clock."""
    mono, wall = time.monotonic(), time.time()
    jobs = [{k: j.get(k) for k in JOB_FIELDS} for j in ep.jobs()]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "calls": ep.calls(),
        "jobs": jobs,
        "events": events,
        "clock": {"monotonic": mono, "wall": wall},
        "server_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "server_max_rss_kb": usage.ru_maxrss,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rpq.local import LocalEndpoint

    ep = LocalEndpoint(
        endpoint_id=args.endpoint_id,
        handler=args.handler,
        workers_max=args.workers_max,
        workers_min=args.workers_max if args.workers_min is None else args.workers_min,
        idle_timeout=args.idle_timeout,
        cold_start=args.cold_start,
        process_time=parse_process_time(args.process_time),
        seed=args.seed,
        rate_limits=None if args.rate_limits == "default" else {},
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    events: dict[str, float] = {}
    ep.start()
    watcher = threading.Thread(
        target=_watch, args=(ep, events, done, args.stall_after, args.stall_for), daemon=True
    )
    watcher.start()
    print(ep.base_url, flush=True)
    while not done.wait(0.5):
        pass
    doc = snapshot(ep, events)
    ep.stop()
    tmp = args.snapshot.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, args.snapshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
