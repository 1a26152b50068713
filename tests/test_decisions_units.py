"""Pinned decisions of the pure parts: which image an output yields, how fast rpq may call,
what counts toward the SLA, and what a crash mid-write or a damaged journal leaves behind."""

from __future__ import annotations

import base64
import bisect
import gc
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FakeClock
from imaging import png_bytes

from rpq import files
from rpq.api import is_transient
from rpq.errors import APIError, UsageError
from rpq.extract import extract
from rpq.files import TEMP_SUFFIX, atomic_write, sweep_temp_files
from rpq.journal import Journal
from rpq.limiter import Limiter, Limiters, Rate
from rpq.metrics import JobRecord, Metrics
from rpq.report import ReportOptions, build_report, parse_sla

PNG = [png_bytes(i) for i in range(3)]
B64 = [base64.b64encode(data).decode() for data in PNG]


def _decoded(output: object) -> list[bytes | None]:
    return [artifact.data for artifact in extract(output)]


# --- extract: which image an output yields ---------------------------------------------------


def test_single_image_keys_in_the_order_the_known_workers_use_them() -> None:
    # image_b64 (BiRefNet) before image (rembg, the guide) before image_base64.
    assert _decoded({"image_base64": B64[2], "image": B64[1], "image_b64": B64[0]}) == [PNG[0]]
    assert _decoded({"image_base64": B64[2], "image": B64[1]}) == [PNG[1]]
    assert _decoded({"image_base64": B64[2], "image_b64": B64[0]}) == [PNG[0]]
    assert _decoded({"image_base64": B64[2], "image": " "}) == [PNG[2]]  # blank is no image


def test_a_list_of_images_comes_before_a_nested_output() -> None:
    out = {"images": [{"type": "base64", "data": B64[0]}], "output": {"image": B64[1]}}
    assert _decoded(out) == [PNG[0]]
    assert _decoded({"image": B64[0], "output": {"image": B64[1]}}) == [PNG[0]]
    # Only an empty list lets the nested output speak.
    assert _decoded({"images": [], "output": {"image": B64[1]}}) == [PNG[1]]
    assert _decoded({"output": {"output": {"image": B64[2]}}}) == [PNG[2]]


def test_the_workers_file_name_travels_with_a_single_image() -> None:
    [artifact] = extract({"image": B64[0], "filename": "cut.png"})
    assert artifact.name == "cut.png"


# --- api: what is worth asking again ---------------------------------------------------------


@pytest.mark.parametrize(("status", "transient"), [
    (429, True), (408, True), (500, True), (502, True), (503, True), (599, True),
    (400, False), (401, False), (403, False), (404, False), (409, False), (499, False),
])
def test_429_and_5xx_are_transient_other_4xx_final(status: int, transient: bool) -> None:
    assert is_transient(APIError("x", status=status)) is transient


def test_an_error_without_a_status_is_final() -> None:
    assert is_transient(APIError("x")) is False
    assert is_transient(ValueError("x")) is False


# --- limiter: how fast rpq may call ----------------------------------------------------------


def _free_calls(limiter: Limiter) -> tuple[int, float]:
    """How many calls go through at one instant, and the wait of the first that cannot."""
    n = 0
    while (wait := limiter.reserve()) == 0:
        n += 1
    return n, wait


@pytest.mark.parametrize(("count", "per", "burst"), [(100, 10.0, 10), (900, 10.0, 90),
                                                     (25, 1.0, 2), (9, 1.0, 1), (1, 60.0, 1)])
def test_default_burst_is_a_tenth_of_the_rate(count: int, per: float, burst: int) -> None:
    clock = FakeClock(1000.0)
    free, wait = _free_calls(Limiter(Rate(count, per), clock=clock, sleep=clock.sleep))
    assert free == burst
    assert wait == pytest.approx(per / count)  # then one call per interval, a whole one


def test_a_free_call_waits_zero_never_less() -> None:
    clock = FakeClock(1000.0)
    limiter = Limiter(Rate(10, 1.0), burst=2, clock=clock, sleep=clock.sleep)
    assert limiter.reserve() == 0.0
    clock.now += 0.05  # half a token back: 1.5 in the bucket
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == pytest.approx(0.05)


def test_a_limiter_on_a_clock_that_starts_at_zero_is_not_paused() -> None:
    limiter = Limiter(Rate(1, 1.0), clock=lambda: 0.0)
    assert limiter.reserve() == 0.0


def test_status_and_status_sync_share_one_budget() -> None:
    # RunPod counts /status and /status-sync together (2000 per 10 s).
    clock = FakeClock(1000.0)
    limiters = Limiters(clock=clock, sleep=clock.sleep)
    times = []
    for i in range(4000):
        limiters.acquire("status-sync" if i % 2 else "status")
        times.append(clock.now)
    assert _busiest_window(times, 10.0) <= 2000


def test_after_the_burst_calls_are_spaced_evenly() -> None:
    clock = FakeClock(1000.0)
    limiter = Limiter(Rate(100, 10.0), clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire() for _ in range(13)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1, 0.1, 0.1])
    assert clock.now == pytest.approx(1000.3)


def _busiest_window(times: list[float], width: float) -> int:
    """The most calls in any window [t, t + width) that starts at a call (times ascending)."""
    return max(bisect.bisect_left(times, t + width) - i for i, t in enumerate(times))


@pytest.mark.parametrize(("op", "documented"), [("run", 1000), ("status", 2000), ("cancel", 100)])
def test_no_10s_window_exceeds_runpods_documented_limit(op: str, documented: int) -> None:
    clock = FakeClock(1000.0)
    limiters = Limiters(clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(documented * 2):
        limiters.acquire(op)
        times.append(clock.now)
    busiest = _busiest_window(times, 10.0)
    assert busiest <= documented
    assert busiest >= documented * 0.8  # the limit is used, not wasted


@pytest.mark.parametrize(("text", "gap"),
                         [("2/1", 0.5), ("5/60", 12.0), ("3", 1 / 3), ("20/10", 0.5)])
def test_the_users_rate_spaces_submissions_with_no_burst(text: str, gap: float) -> None:
    clock = FakeClock(1000.0)
    limiters = Limiters(Rate.parse(text), clock=clock, sleep=clock.sleep)
    for _ in range(4):
        limiters.acquire("run")
    assert clock.slept == pytest.approx([gap] * 3)


@pytest.mark.parametrize(("text", "rate"), [
    ("5/60s", Rate(5, 60.0)), ("5/min", Rate(5, 60.0)), ("300/h", Rate(300, 3600.0)),
    ("5/2m", Rate(5, 120.0)), ("5/1.5", Rate(5, 1.5)), (" 7 ", Rate(7, 1.0)),
])
def test_a_rate_reads_seconds_minutes_or_hours(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


def test_rate_units_are_read_in_any_case() -> None:
    assert Rate.parse("5/MIN") == Rate.parse("5/Min") == Rate(5, 60.0)
    assert Rate.parse("300/H") == Rate(300, 3600.0)


def test_a_bad_rate_says_how_to_write_one() -> None:
    with pytest.raises(UsageError) as caught:
        Rate.parse("5/fortnight")
    assert str(caught.value) == (
        "--rate '5/fortnight' is not a rate. Write N/SECONDS, e.g. 5/60 or 5/60s for 5 jobs a "
        "minute, or N/UNIT with s, min or h, e.g. 5/min or 300/h.")


@pytest.mark.parametrize("bad", ["5/60X", "5/6/0", "5/", "/60", "5/0", "0/60", "5/-1",
                                 "five/min", "5/days"])
def test_anything_else_is_no_rate(bad: str) -> None:
    with pytest.raises(UsageError, match="--rate"):
        Rate.parse(bad)


def test_the_users_rate_applies_to_submissions_only() -> None:
    clock = FakeClock(1000.0)
    limiters = Limiters(Rate.parse("1/60"), clock=clock, sleep=clock.sleep)
    for op in ("status", "status-sync", "cancel", "health"):
        limiters.acquire(op)
        limiters.acquire(op)
    assert clock.slept == []


def test_each_wait_for_a_limit_is_logged_and_says_whose_limit(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rpq")
    clock = FakeClock(1000.0)
    limiters = Limiters(Rate.parse("2/1"), clock=clock, sleep=clock.sleep)
    limiters.acquire("run")  # no wait: nothing to say
    limiters.acquire("run")
    for _ in range(9):
        limiters.acquire("cancel")  # RunPod's /cancel burst
    limiters.acquire("cancel")
    assert [r.getMessage() for r in caplog.records] == [
        "pacing: waited 0.50s before submitting (--rate)",
        "pacing: waited 0.11s before cancel (RunPod's rate limit)",
    ]


def test_a_429_pause_holds_that_operation_only() -> None:
    clock = FakeClock(1000.0)
    limiters = Limiters(clock=clock, sleep=clock.sleep)
    limiters.pause("run", 5.0)
    limiters.acquire("status")
    assert clock.slept == []
    limiters.acquire("run")
    assert clock.slept == pytest.approx([5.0])


# --- report: the SLA ------------------------------------------------------------------------


def _sla(spec: str, totals: list[float | None]) -> dict[str, object]:
    jobs = [JobRecord(input=f"{i}.png", status="COMPLETED" if t is not None else "FAILED",
                      total_time=t) for i, t in enumerate(totals)]
    report = build_report(Metrics(stats={}, jobs=jobs, run={}), ReportOptions(sla=parse_sla(spec)))
    line: dict[str, object] = report["sla"]["targets"][0]
    assert report["sla"]["passed"] is line["passed"]
    return line


def test_a_job_done_exactly_at_the_limit_is_within_it() -> None:
    line = _sla("50:10", [10.0, 10.001])
    assert (line["within"], line["jobs"], line["share"], line["passed"]) == (1, 2, 50.0, True)


def test_a_share_just_under_the_target_fails() -> None:
    line = _sla("50:10", [9.0, 11.0, 12.0])
    assert (line["within"], line["share"], line["passed"]) == (1, 33.33, False)


def test_jobs_with_no_known_time_count_against_the_sla() -> None:
    # Denominator: every job of the run, not only those that reported a time.
    line = _sla("60:10", [1.0, None])
    assert (line["within"], line["jobs"], line["share"], line["passed"]) == (1, 2, 50.0, False)


def test_sla_on_no_jobs_is_not_a_pass() -> None:
    line = _sla("95:60", [])
    assert (line["share"], line["passed"]) == (None, False)


def test_the_sla_line_shows_the_actual_percentile() -> None:
    line = _sla("50:10", [1.0, 2.0, 3.0, 4.0, None])
    assert line["actual_s"] == 2.5  # the median of the known times
    assert _sla("50:10", [None])["actual_s"] is None


@pytest.mark.parametrize(("spec", "targets"), [
    ("100:60", [(100.0, 60.0)]), ("95%:60s", [(95.0, 60.0)]), (" 95 : 60 ", [(95.0, 60.0)]),
    ("95:60,99:120", [(95.0, 60.0), (99.0, 120.0)]), ("50:0.5", [(50.0, 0.5)]),
    ("1:60", [(1.0, 60.0)]), ("0.5:60", [(0.5, 60.0)]), ("1:1", [(1.0, 1.0)]),
])
def test_sla_pairs_that_are_read(spec: str, targets: list[tuple[float, float]]) -> None:
    assert [(t.percent, t.limit) for t in parse_sla(spec)] == targets


HINT = " (if {0} is the seconds, the percent comes first: {1}:{0})"
SHARE = "{}% is not a share of jobs: the percent must be over 0 and at most 100"


@pytest.mark.parametrize(("spec", "problem"), [
    ("95", "'95' is not PERCENT:SECONDS"),
    ("95:", "'95:' is not PERCENT:SECONDS"),
    ("x:60", "'x:60' is not PERCENT:SECONDS"),
    ("95X:60", "'95X:60' is not PERCENT:SECONDS"),
    ("95:60X", "'95:60X' is not PERCENT:SECONDS"),
    ("95:nan", "'95:nan' is not PERCENT:SECONDS"),
    ("95:60,99", "'99' is not PERCENT:SECONDS"),
    ("0:60", SHARE.format(0)),
    ("-5:60", SHARE.format(-5)),
    ("150:101", SHARE.format(150)),
    ("150:0", SHARE.format(150)),
    ("150:10", SHARE.format(150) + HINT.format(150, 10)),
    ("150:100", SHARE.format(150) + HINT.format(150, 100)),
    ("150:0.5", SHARE.format(150) + HINT.format(150, 0.5)),
    ("101:100", SHARE.format(101) + HINT.format(101, 100)),
    ("100.5:60", SHARE.format(100.5) + HINT.format(100.5, 60)),
    ("95:0", "0 s is not a time limit: the seconds must be over 0"),
    ("95:-1", "-1 s is not a time limit: the seconds must be over 0"),
    ("95:inf", "inf s is not a time limit: the seconds must be over 0"),
])
def test_a_bad_sla_pair_is_named_with_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_sla(spec)
    assert str(caught.value) == (
        f"bad --sla {spec!r}: {problem}. Give PERCENT:SECONDS pairs separated by commas, for "
        "example --sla 95:60,99:120 (95% of jobs within 60 s, 99% within 120 s)")


def test_every_target_must_pass() -> None:
    report = build_report(
        Metrics(stats={}, jobs=[JobRecord(input="a", status="COMPLETED", total_time=30.0)],
                run={}),
        ReportOptions(sla=parse_sla("95:60,99:20")))
    assert [t["passed"] for t in report["sla"]["targets"]] == [True, False]
    assert report["sla"]["passed"] is False


# --- files: a crash mid-write ---------------------------------------------------------------


def _crashing(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts
    raise KeyboardInterrupt  # the process is stopped halfway through the file


def test_a_crash_mid_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "out" / "result.png"
    path.parent.mkdir()
    path.write_bytes(PNG[0])
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, _crashing([PNG[1][:20], PNG[1][20:40]]))
    assert path.read_bytes() == PNG[0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.png"]  # no temp file left


def test_a_crash_mid_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.png"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, _crashing([PNG[1][:20]]))
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_finished_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "result.png"
    path.write_bytes(b"old")
    atomic_write(path, [PNG[1][:20], PNG[1][20:]], fsync=True)
    assert path.read_bytes() == PNG[1]
    atomic_write(path, PNG[2])
    assert path.read_bytes() == PNG[2]
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_a_killed_write_is_a_hidden_temp_file_beside_the_target(tmp_path: Path) -> None:
    # What a SIGKILL would leave: the temp file, named so a later run sweeps it.
    path = tmp_path / "out" / "result.png"
    seen: list[str] = []

    def parts() -> Iterator[bytes]:
        seen.extend(p.name for p in path.parent.iterdir())
        yield PNG[0]

    atomic_write(path, parts())
    [temp] = seen
    assert temp.startswith(".result.png.") and temp.endswith(TEMP_SUFFIX)


def test_missing_folders_are_made(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.png"
    atomic_write(path, PNG[0])
    assert path.read_bytes() == PNG[0]


def test_the_cleanup_of_a_failed_write_never_hides_why_it_failed(tmp_path: Path) -> None:
    # The temp file is already gone (a sweep, a full disk): unlinking it fails quietly and the
    # error the caller sees is the one that stopped the write.
    path = tmp_path / "out" / "result.png"

    def parts() -> Iterator[bytes]:
        yield PNG[0][:10]
        for temp in path.parent.glob(f".*{TEMP_SUFFIX}"):
            temp.unlink()
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, parts())
    assert list(path.parent.iterdir()) == []


@pytest.mark.parametrize("fsync", [False, True])
def test_fsync_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               fsync: bool) -> None:
    # fsync costs disk flushes per file (the file, then its folder for the rename): output
    # images skip them, the metrics ask for them.
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    atomic_write(tmp_path / "a.png", PNG[0], fsync=fsync)
    assert len(synced) == (2 if fsync else 0)
    atomic_write(tmp_path / "b.png", PNG[0])
    assert len(synced) == (2 if fsync else 0)


def test_flushing_a_folder_never_opens_what_is_not_one(tmp_path: Path) -> None:
    # A folder swapped for a named pipe must not hang the run: opening a pipe to read waits
    # for a writer, so fsync_folder opens folders only and leaves anything else alone.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    done = threading.Event()
    flusher = threading.Thread(target=lambda: (files.fsync_folder(pipe), done.set()),
                               daemon=True)
    flusher.start()
    finished = done.wait(10)
    if not finished:  # let the stuck open through so the thread ends
        os.close(os.open(pipe, os.O_WRONLY))
    flusher.join(10)
    assert finished


def test_the_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert files._current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still in force
    finally:
        os.umask(old)


def test_a_rerun_sweeps_only_temp_files_a_killed_write_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / ".a.png.x1.part").write_bytes(b"half")
    (out / "sub" / ".b.png.x2.part").write_bytes(b"half")
    (out / "keep.part").write_bytes(b"not hidden: not ours")
    (out / ".dir.part").mkdir()
    (out / ".link.part").symlink_to(out / "keep.part")
    (out / "a.png").write_bytes(PNG[0])
    assert sweep_temp_files(out) == 2
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == [".dir.part", ".link.part", "a.png", "keep.part", "sub"]


def test_a_temp_file_that_cannot_be_removed_does_not_stop_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.png.x1.part").write_bytes(b"half")
    (out / ".b.png.x2.part").write_bytes(b"half")
    real = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith(".a.png"):
            raise PermissionError(13, "Permission denied")
        real(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert sweep_temp_files(out) == 1
    assert [p.name for p in out.iterdir()] == [".a.png.x1.part"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.png", PNG[0])
    finally:
        os.umask(old)
    # The umask read at import applies (0o022 in the test process), not mkstemp's 0600.
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~old


# --- journal: a damaged line ----------------------------------------------------------------


def _line(event: dict[str, object]) -> str:
    return json.dumps(event) + "\n"


def test_a_line_nested_too_deep_to_parse_is_skipped_like_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    good = _line({"event": "submitted", "key": "k1", "rel": "a.png", "job_id": "j1"})
    deep = "[" * 100_000 + "]" * 100_000 + "\n"  # json.loads raises RecursionError on it
    later = _line({"event": "intent", "key": "k2", "rel": "b.png", "attempt": 1})
    path.write_text(good + deep + later)
    # No garbage collection at the bottom of the recursion: a finalizer another test left
    # would then run out of stack and fail this test as an unraisable exception.
    gc.collect()
    gc.disable()
    try:
        journal = Journal(path)
    finally:
        gc.enable()
    assert journal.torn_lines == 1
    assert [e.job_id for e in journal.in_flight()] == ["j1"]
    assert [e.rel for e in journal.orphans()] == ["b.png"]
