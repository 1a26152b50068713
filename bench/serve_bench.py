"""Status requests per second `rpq serve` answers over keep-alive, per client thread count."""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from urllib.parse import urlsplit

import requests

# Safety bound per client thread, whatever the duration.
MAX_REQUESTS_PER_THREAD = 2_000_000


@dataclass(frozen=True)
class Round:
    threads: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def start_server(extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start `rpq serve` in its own process on a free loopback port; (process, endpoint URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpq", "serve", "--port", "0", "--handler", "echo",
         "--rate-limits", "off", "--workers-max", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("rpq serve: http://"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"rpq serve did not start: {line!r}")
    base = line.split()[2]
    endpoint_id = line.split()[4]
    return proc, f"{base}/{endpoint_id}"


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def make_jobs(url: str, count: int) -> list[str]:
    """Finished jobs with small outputs, plus one queued job, to poll."""
    with requests.Session() as http:
        ids = [
            http.post(f"{url}/runsync", json={"input": {"n": n, "text": "x" * 200}}, timeout=30)
            .json()["id"]
            for n in range(count)
        ]
    return ids


class _RequestsClient:
    """What rpq and the runpod SDK use: requests.Session over keep-alive."""

    def __init__(self) -> None:
        self._http = requests.Session()
        # Loopback needs no proxy or netrc lookups, which otherwise run on every request.
        self._http.trust_env = False

    def get(self, url: str) -> int:
        return self._http.get(url, timeout=10).status_code

    def close(self) -> None:
        self._http.close()


class _StdlibClient:
    """http.client over keep-alive: far less client CPU, so it shows the server's ceiling."""

    def __init__(self) -> None:
        self._conn: HTTPConnection | None = None

    def get(self, url: str) -> int:
        parts = urlsplit(url)
        if self._conn is None:
            self._conn = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        self._conn.request("GET", parts.path)
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


CLIENTS = {"requests": _RequestsClient, "http.client": _StdlibClient}


def hammer(url: str, ids: list[str], threads: int, seconds: float, client: str) -> Round:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop_at = [time.perf_counter() + 3600]  # moved to the real end once all are connected

    def run_client(index: int) -> None:
        mine = latencies[index]
        urls = [f"{url}/status/{job_id}" for job_id in ids]
        http = CLIENTS[client]()
        try:
            http.get(urls[0])  # open the keep-alive connection before timing
            barrier.wait()
            n = 0
            clock = time.perf_counter
            while n < MAX_REQUESTS_PER_THREAD:
                t0 = clock()
                if t0 >= stop_at[0]:
                    break
                code = http.get(urls[n % len(urls)])
                mine.append(clock() - t0)
                if code != 200:
                    errors[index] += 1
                n += 1
        finally:
            http.close()

    workers = [
        threading.Thread(target=run_client, args=(i,), daemon=True) for i in range(threads)
    ]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for w in workers:
        w.join(timeout=seconds + 30)
    elapsed = time.perf_counter() - started
    every = sorted(x for per in latencies for x in per)
    return Round(
        threads=threads,
        requests=len(every),
        errors=sum(errors),
        seconds=elapsed,
        p50_ms=_quantile(every, 0.50) * 1000,
        p99_ms=_quantile(every, 0.99) * 1000,
    )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", default="1,4,16", help="client thread counts, e.g. 1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each round")
    parser.add_argument("--jobs", type=int, default=8, help="jobs to poll")
    parser.add_argument(
        "--client",
        choices=[*CLIENTS, "both"],
        default="requests",
        help="HTTP client in the load threads; http.client shows the server's own ceiling",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    seconds = args.seconds
    if args.quick:
        threads, seconds, args.jobs = [1, 4], 0.3, 2
    if not threads or min(threads) < 1 or seconds <= 0 or args.jobs < 1:
        parser.error("threads, seconds and jobs must be positive")

    proc, url = start_server([])
    try:
        ids = make_jobs(url, args.jobs)
        clients = list(CLIENTS) if args.client == "both" else [args.client]
        rounds = [(c, hammer(url, ids, n, seconds, c)) for c in clients for n in threads]
    finally:
        stop_server(proc)

    if args.json:
        print(json.dumps([
            {"client": c, **r.__dict__, "per_second": round(r.per_second, 1)} for c, r in rounds
        ]))
    else:
        print(f"GET /status over keep-alive, {seconds:g} s per round, server in its own process")
        print(f"{'client':>11} {'threads':>7} {'requests':>9} {'req/s':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
        for c, r in rounds:
            print(
                f"{c:>11} {r.threads:>7} {r.requests:>9} {r.per_second:>8.0f} "
                f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.errors:>6}"
            )
    return 1 if any(r.errors for _, r in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
