"""What the user sees while a batch runs: a live table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from rpq.eta import Eta
from rpq.metrics import JobRecord, percentile
from rpq.states import COLUMNS, Column, Status

STATES = COLUMNS
#: Columns whose jobs are over, in this run or an earlier one.
_FINISHED = (Column.DONE, Column.FAILED, Column.CANCELLED, Column.SKIPPED)
_SHOWN = (Column.QUEUED, Column.RUNNING, Column.DONE, Column.FAILED, Column.RETRIED,
          Column.CANCELLED, Column.SKIPPED)


@dataclass
class Snapshot:
    """A consistent copy of the tracker for drawing."""

    counts: dict[str, int]
    total: int | None
    elapsed: float
    throughput: float  # finished jobs per second
    eta: float | None
    queue_p50: float | None
    queue_p95: float | None
    process_p50: float | None
    process_p95: float | None
    errors: list[str]
    health: dict[str, Any] | None
    spend: float | None = None
    target: int | None = None  # jobs the batch keeps out now (--concurrency)
    title: str = "rpq batch"


class Tracker:
    """Thread-safe counters of a running batch; stages report, reporters read snapshots."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(STATES, 0)
        self.total: int | None = None
        self.started = clock()
        self._queue: deque[float] = deque(maxlen=2000)
        self._process: deque[float] = deque(maxlen=2000)
        self._errors: deque[str] = deque(maxlen=4)
        self._finished = 0
        self._eta = Eta()
        self.health: dict[str, Any] | None = None
        self.health_at: float | None = None  # when `health` was asked for (None: unknown)
        self._last_end: float | None = None
        self.spend: float | None = None
        self.target: int | None = None
        self.title = "rpq batch"

    def add(self, state: str, n: int = 1) -> None:
        with self._lock:
            self.counts[state] = self.counts.get(state, 0) + n

    def move(self, old: str | None, new: str | None) -> None:
        with self._lock:
            if old:
                self.counts[old] -= 1
            if new:
                self.counts[new] = self.counts.get(new, 0) + 1

    def finished(self, record: JobRecord) -> None:
        with self._lock:
            self._finished += 1
            self._last_end = self._clock()
            self._eta.finished(self._last_end)
            if record.queue_time is not None:
                self._queue.append(record.queue_time)
            if record.process_time is not None:
                self._process.append(record.process_time)
            if record.status != Status.COMPLETED and record.error:
                self._errors.append(f"{record.input}: {record.error}"[:160])

    def observe_health(self, health: dict[str, Any]) -> None:
        with self._lock:
            self.health, self.health_at = health, self._clock()

    def error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text[:160])

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._clock()
            elapsed = max(now - self.started, 1e-9)
            throughput = self._finished / elapsed
            remaining = None if self.total is None else max(
                self.total - sum(self.counts[c] for c in _FINISHED), 0)
            eta = self._eta.estimate(now, remaining)
            queue, process = list(self._queue), list(self._process)
            counts, health = self._split(), self.health
            if self.health_at is not None and self._last_end is not None and \
                    self.health_at < self._last_end and not counts["queued"] + counts["running"]:
                health = None  # it shows workers at a moment before the last job ended
            return Snapshot(
                counts=counts, total=self.total, elapsed=elapsed, title=self.title,
                throughput=throughput, eta=eta,
                queue_p50=percentile(queue, 50), queue_p95=percentile(queue, 95),
                process_p50=percentile(process, 50), process_p95=percentile(process, 95),
                errors=list(self._errors), health=health, spend=self.spend,
                target=self.target,
            )


    def _split(self) -> dict[str, int]:
        """Counts with in-flight jobs split as the endpoint sees them.

        A long poll held until a job ends never sees it IN_PROGRESS: the endpoint's own count
        of jobs in progress (capped at ours in flight) is the better figure then.
        """
        counts = dict(self.counts)
        in_flight = counts["queued"] + counts["running"]
        jobs = (self.health or {}).get("jobs") if self.health_at is not None else None
        busy = jobs.get("inProgress") if isinstance(jobs, dict) else None
        if isinstance(busy, int) and not isinstance(busy, bool):
            counts["running"] = min(in_flight, max(counts["running"], busy))
            counts["queued"] = in_flight - counts["running"]
        return counts


class Reporter(Protocol):
    def start(self, tracker: Tracker) -> None: ...
    def job_done(self, record: JobRecord, skipped: bool = False,
                 twin_of: str | None = None) -> None: ...
    def message(self, text: str) -> None: ...
    def stop(self) -> None: ...


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


def describe(record: JobRecord, skipped: bool = False, twin_of: str | None = None) -> str:
    """One plain line per finished job (a newline in a file name is shown as \\n)."""
    return _one_line(_describe(record, skipped, twin_of))


def describe_not_an_image(rel: str, reason: str) -> str:
    """The plain line for a file skipped for not being an image."""
    return _one_line(f"ignored {rel}: {reason}")


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _describe(record: JobRecord, skipped: bool, twin_of: str | None = None) -> str:
    if twin_of is not None:
        # The same request as another file of this run: sent once, its result copied.
        if record.status == Status.COMPLETED:
            return f"same    {record.input} -> {', '.join(record.outputs) or '-'} " \
                   f"(same request as {twin_of})"
        return f"same    {record.input}: {record.error or record.status} " \
               f"(same request as {twin_of})"
    if skipped:
        state = "done" if record.status == Status.COMPLETED else "failed"
        return f"skip    {record.input} ({state} in an earlier run)"
    times = f"queue {_secs(record.queue_time)} run {_secs(record.process_time)}"
    if record.status == Status.COMPLETED:
        outs = ", ".join(record.outputs) or "-"
        return f"done    {record.input} -> {outs} ({times})"
    kind = record.error_kind or record.status.lower()
    return f"{kind:<7} {record.input}: {record.error or record.status}"


class PlainReporter:
    """One line per finished job on stderr: for pipes, CI logs and --no-progress.

    failures_only (-q): only the lines of images that failed, and no notes.
    """

    def __init__(self, stream: TextIO | None = None, *, failures_only: bool = False) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self.failures_only = failures_only

    def start(self, tracker: Tracker) -> None:
        pass

    def job_done(self, record: JobRecord, skipped: bool = False,
                 twin_of: str | None = None) -> None:
        if self.failures_only and (skipped or record.status == Status.COMPLETED):
            return
        self._line(describe(record, skipped, twin_of))

    def message(self, text: str) -> None:
        if not self.failures_only:
            self._line(text)

    def _line(self, text: str) -> None:
        # One write per line, under a lock: print() writes the text and its newline apart,
        # so jobs ending at once would share a line and leave a blank one.
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def stop(self) -> None:
        pass


class LiveReporter:
    """A Rich table on stderr, redrawn a few times a second.

    Pass the console that log lines go through, so they print above the table, not into it.
    """

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._live: Any = None
        self.tracker: Tracker | None = None

    def start(self, tracker: Tracker) -> None:
        from rich.live import Live

        self.tracker = tracker
        self._live = Live(get_renderable=self.render, console=self.console,
                          refresh_per_second=4, transient=False)
        self._live.start()

    def job_done(self, record: JobRecord, skipped: bool = False,
                 twin_of: str | None = None) -> None:
        pass

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()

    def render(self) -> Any:
        """The table as it stands now (what the live display redraws)."""
        from rich.table import Table

        assert self.tracker is not None
        s = self.tracker.snapshot()
        c = s.counts
        table = Table(show_header=True, header_style="bold", expand=False)
        for name in _SHOWN:
            table.add_column(name, justify="right")
        table.add_row(*(str(c.get(n, 0)) for n in _SHOWN))
        finished = sum(c[n] for n in _FINISHED)
        total = "?" if s.total is None else str(s.total)
        lines = [
            f"{finished}/{total} finished   {s.throughput * 60:.1f} jobs/min   "
            f"ETA {_secs(s.eta)}   elapsed {_secs(s.elapsed)}",
            f"queue p50 {_secs(s.queue_p50)} p95 {_secs(s.queue_p95)}   "
            f"process p50 {_secs(s.process_p50)} p95 {_secs(s.process_p95)}"
            + ("" if s.target is None else f"   jobs out at most {s.target}"),
        ]
        if s.health:
            w = s.health.get("workers") or {}
            lines.append("workers " + "  ".join(
                f"{k} {w.get(k, 0)}" for k in
                ("idle", "ready", "initializing", "running", "throttled", "unhealthy")))
        if s.spend is not None:
            lines.append(f"estimated spend ${s.spend:.4f}")
        lines += [f"! {e}" for e in s.errors]
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table as Grid
        from rich.text import Text

        bar = Grid.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=s.total, completed=finished, width=40),
                    Text(f"{finished}/{total}"))
        # The title on its own line: a table's title wraps at the table's width.
        return Group(Text(s.title, style="bold", overflow="ellipsis", no_wrap=True), table, bar,
                     *(Text(line) for line in lines))
