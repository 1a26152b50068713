"""`make chaos`: the chaos and crash scenarios at the issue's scale with several seeds; writes
RELIABILITY.md (what was tried, how many times, what held, with figures).

    .venv/bin/python bench/chaos.py            # full: 1,000 images x 3 seeds, ... (~6 min)
    .venv/bin/python bench/chaos.py --quick    # smoke test: small sizes, one seed, stdout

The scenarios live in tests/chaoskit.py, shared with tests/test_chaos.py and
tests/test_crashes.py, which run them smaller in CI. Exit code 1 when any invariant failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import chaoskit as ck  # noqa: E402

ALSO_RUN = ("tests/test_bad_endpoint.py", "tests/test_bad_input.py", "tests/test_crashes.py",
            "tests/test_trust.py", "tests/test_secrets.py", "tests/test_fuzz.py",
            "tests/test_chaos.py")


@dataclass(frozen=True)
class Plan:
    chaos_images: int
    chaos_seeds: tuple[int, ...]
    kill_images: int
    kills: int
    kill_seeds: tuple[int, ...]
    restart_seeds: tuple[int, ...]
    write_seeds: tuple[int, ...]
    also_run: tuple[str, ...]


FULL = Plan(chaos_images=1000, chaos_seeds=(1, 2, 3), kill_images=120, kills=20,
            kill_seeds=(1, 2, 3), restart_seeds=(1, 2, 3), write_seeds=(1, 2, 3),
            also_run=ALSO_RUN)
QUICK = Plan(chaos_images=60, chaos_seeds=(1,), kill_images=30, kills=4, kill_seeds=(1,),
             restart_seeds=(1,), write_seeds=(1,), also_run=())


def _isolate() -> None:
    """As the tests do: a private HOME, no RunPod or rpq settings from the environment."""
    home = tempfile.mkdtemp(prefix="rpq-chaos-home-")
    os.environ["HOME"] = home
    for name in list(os.environ):
        if name.startswith(("RUNPOD_", "RPQ_")):
            del os.environ[name]


def _run(name: str, seed: int, scenario: Callable[[Path], ck.Outcome]) -> ck.Outcome:
    work = Path(tempfile.mkdtemp(prefix=f"rpq-chaos-{name}-{seed}-"))
    started = time.monotonic()
    print(f"chaos: {name} seed {seed} ...", file=sys.stderr, flush=True)
    try:
        outcome = scenario(work)
    except Exception as exc:  # a scenario that cannot finish is a failure, with its reason
        outcome = ck.Outcome(name, seed, 0)
        outcome.check(False, f"the scenario stopped: {type(exc).__name__}: {exc}")
    if not outcome.seconds:
        outcome.seconds = round(time.monotonic() - started, 2)
    state = "held" if not outcome.violations else f"{len(outcome.violations)} FAILED"
    print(f"chaos: {name} seed {seed}: {outcome.checks} checks, {state} "
          f"({outcome.seconds:.1f} s)", file=sys.stderr, flush=True)
    for line in outcome.violations[:10]:
        print(f"  ! {line}", file=sys.stderr)
    if not outcome.violations:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"  files kept in {work}", file=sys.stderr)
    return outcome


def _pytest(files: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Run the other reliability test files once; tests, failures and skips per file."""
    if not files:
        return {}
    print("chaos: running " + " ".join(files), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}", *files], cwd=ROOT, stdout=subprocess.DEVNULL,
                       check=False)
        counts: dict[str, dict[str, int]] = {f: {"tests": 0, "failed": 0, "skipped": 0}
                                             for f in files}
        if not report.exists():
            for f in files:
                counts[f]["failed"] = 1
            return counts
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            name = next((f for f in files if Path(f).stem == module), None)
            if name is None:
                continue
            counts[name]["tests"] += 1
            if case.find("failure") is not None or case.find("error") is not None:
                counts[name]["failed"] += 1
            elif case.find("skipped") is not None:
                counts[name]["skipped"] += 1
        return counts


# --- the report -------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _held(outcomes: list[ck.Outcome]) -> str:
    bad = sum(1 for o in outcomes if o.violations)
    return "all held" if not bad else f"**{bad} run(s) failed**"


def _kinds(figures: dict[str, Any]) -> str:
    kinds = figures.get("failed_by_kind") or {}
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def report(plan: Plan, results: dict[str, list[ck.Outcome]],
           also: dict[str, dict[str, int]], seconds: float) -> str:
    chaos, kills = results["chaos"], results["sigkill"]
    restarts, writes = results["endpoint_restart"], results["failing_writes"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Reliability",
        "",
        "What `rpq batch` was put through, how many times, and what held. Generated by "
        "`make chaos` (`bench/chaos.py`; the scenarios are in `tests/chaoskit.py`, and "
        "`tests/test_chaos.py` and `tests/test_crashes.py` run them smaller in CI).",
        "",
        f"Run {now} at commit {_commit()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU(s), {seconds / 60:.1f} min in all. Every number below is "
        "counted, not estimated: on the local endpoint's side (`rpq.local.LocalEndpoint`, "
        "which records each request and job) and in rpq's own `job_metrics.json` and journal.",
        "",
        "## At a glance",
        "",
    ]
    glance = []
    for label, runs, what in [
        ("Chaos at scale", chaos, f"{plan.chaos_images:,} images, every fault at once"),
        ("SIGKILL at random moments", kills,
         f"{plan.kills} kills per run, {plan.kill_images} images"),
        ("Endpoint process killed and restarted", restarts, "30 images, jobs in flight"),
        ("Writes that fail (EFBIG, as a full disk)", writes, "12 images, 4 too big to save"),
    ]:
        glance.append([label, what, len(runs), f"{sum(o.checks for o in runs):,}",
                       _held(runs)])
    out += _table(["Scenario", "Each run", "Runs (seeds)", "Checks", "Result"], glance)
    if also:
        total = sum(c["tests"] for c in also.values())
        failed = sum(c["failed"] for c in also.values())
        out += ["", f"Plus {total} tests in {len(also)} files, run once: "
                + ("all passed" if not failed else f"**{failed} failed**")
                + " (see the end)."]

    out += [
        "",
        "## Chaos at scale",
        "",
        f"{plan.chaos_images:,} distinct images per run through `rpq batch` against the local "
        "endpoint with, together: 10% HTTP 500, 5% HTTP 429, 2% dropped connections, 10% slow "
        "answers (+0.2 s), 5% handler failures, 2% stuck jobs (queued forever); 8 workers with "
        "a 0.2 s cold start that leave after 0.5 s idle; rpq with `--concurrency 16 "
        "--max-queue-time 2 --max-retries 6 --job-retries 2`. Then a plain rerun (must send "
        "nothing), then `--retry-failed` reruns, faults still on, until every image is done.",
        "",
        "Checked after each batch: one record per image; each completed image has exactly one "
        "output, byte-identical to what was sent (the handler echoes it); each failure has a "
        "cause (`error`, `error_kind`); no other file was written and no temp file was left; "
        "nothing is queued or running on the endpoint; `/run` calls on the server = attempts "
        "+ `run_request_retries` in `job_metrics.json`; rpq's request counts per operation = "
        "the server's; every server job is a recorded job or an earlier attempt rpq cancelled; "
        "the server's completed and failed counts = rpq's; the journal reads back with nothing "
        "in flight.",
        "",
    ]
    rows = []
    for o in chaos:
        f = o.figures
        inj = f.get("injected", {})
        rows.append([o.seed, f"{o.seconds:.0f} s", f.get("requests_seen", "-"),
                     inj.get("500", "-"), inj.get("429", "-"), inj.get("drop", "-"),
                     inj.get("slow", "-"), f.get("stuck_jobs", "-"), f.get("completed", "-"),
                     _kinds(f), f.get("run_calls", "-"), f.get("run_retries", "-"),
                     f.get("resubmissions", "-"), f.get("reruns_to_finish", "-"),
                     f"{o.checks:,}", "held" if not o.violations else "**FAILED**"])
    out += _table(["Seed", "First pass", "Requests", "500s", "429s", "Drops", "Slow", "Stuck",
                   "Done 1st pass", "Failed 1st pass (cause)", "/run calls", "/run retries",
                   "Resubmits", "Reruns to finish", "Checks", "Result"], rows)
    out += _violations(chaos)

    out += [
        "",
        "## SIGKILL at random moments",
        "",
        f"`rpq batch` as a real process over {plan.kill_images} images (4 workers, 0.02-0.1 s "
        f"per job, `--concurrency 8`), killed with SIGKILL {plan.kills} times per run and "
        "rerun with the same command after each kill; then run once more to the end. Each "
        "kill lands after k more `/run` requests reach the endpoint (during submits), k more "
        "status polls (during polls), k more output files (during writes) or k more journal "
        "lines, with the kind and k in 1..6 drawn from the seed.",
        "",
        "Checked: every image has exactly one output, the image sent, and it decodes; no "
        "temp file is left at the end; the "
        "journal reads back with every image done; nothing queued or running on the server; "
        "the final metrics list every image once, completed; **no job sent again that the "
        "server already had**: the journal never shows a new `intent` after a `submitted` "
        "without an end, a loss or a confirmed cancel in between, and on the server each "
        "image has at most 1 + (times it was an orphan) jobs.",
        "",
    ]
    rows = []
    for o in kills:
        f = o.figures
        moments = ", ".join(f"{n} {k}" for k, n in (f.get("moments") or {}).items())
        rows.append([o.seed, f.get("kills", "-"), moments or "-", f.get("server_jobs", "-"),
                     f.get("orphaned_submits", "-"), f.get("duplicates", "-"),
                     f.get("torn_journal_lines", "-"), f.get("temp_files_after_kills", "-"),
                     f"{o.checks:,}", "held" if not o.violations else "**FAILED**"])
    out += _table(["Seed", "Kills", "Moments", "Server jobs", "Orphaned submits",
                   "Images sent twice", "Torn journal lines", "Temp files after kills", "Checks",
                   "Result"], rows)
    out += _violations(kills)
    dup = sum(o.figures.get("duplicates", 0) for o in kills)
    orphans = sum(o.figures.get("orphaned_submits", 0) for o in kills)
    out += [
        "",
        f"The images sent twice ({dup} in all) are all orphans: a kill between sending "
        "`/run` and writing its answer to the journal leaves an intent with no job id, and "
        "RunPod has no idempotency key to ask whether that request arrived, so the next run "
        "sends it again. Kills timed on a `/run` reaching the endpoint hit that window on "
        f"purpose, with up to 8 submits in flight. Of the {orphans} submits cut off that way, "
        f"{dup} had reached the endpoint before the kill. A kill during a write can leave a "
        "hidden `.NAME.XXXX.part` temp file (counted right after each kill); the next run "
        "removes them, and no output file is ever partial.",
    ]

    out += [
        "",
        "## Endpoint process killed and restarted",
        "",
        "`rpq serve` in its own process (2 workers, 0.15 s per job), SIGKILLed once some "
        "outputs are written and at least 2 jobs are in flight, then started again on the same "
        "port. Its queue lives in memory, so the jobs in flight are gone. Checked: the batch "
        "ends (exit 1) with no traceback; each lost job is reported as `expired` with one "
        "line on stderr naming the image; the other images are done; the same command again "
        "finishes the lost ones and sends exactly as many `/run` as jobs were lost.",
        "",
    ]
    rows = [[o.seed, o.figures.get("killed_after_outputs", "-"), o.figures.get("lost_jobs", "-"),
             o.figures.get("resent_by_rerun", "-"), f"{o.checks:,}",
             "held" if not o.violations else "**FAILED**"] for o in restarts]
    out += _table(["Seed", "Killed after outputs", "Jobs lost", "Sent by the rerun", "Checks",
                   "Result"], rows)
    out += _violations(restarts)

    out += [
        "",
        "## Writes that fail",
        "",
        "`rpq batch` with RLIMIT_FSIZE at 64 KiB: 4 results over that size cannot be saved "
        "(EFBIG, as a full disk would refuse them), the 8 small ones and the journal can. "
        "Checked: exit 1, no traceback; each unsaved image FAILED with 'could not save the "
        "result: File too large' on its own stderr line; no file or temp file left for them; "
        "then, with room again, a plain rerun saves all 4 **without sending them again** (the "
        "journal keeps their jobs in flight and the results are fetched from the endpoint). "
        "`tests/test_crashes.py` also fills a real 400 KB tmpfs (ENOSPC for results, journal "
        "and metrics) and makes the output folder read-only mid-run (the batch runs as the "
        "user nobody, since root ignores file modes).",
        "",
    ]
    rows = [[o.seed, o.figures.get("images", "-"), o.figures.get("unsaved_first", "-"),
             o.figures.get("saved_by_rerun", "-"), o.figures.get("resent", "-"),
             f"{o.checks:,}", "held" if not o.violations else "**FAILED**"] for o in writes]
    out += _table(["Seed", "Images", "Not saved, 1st run", "Saved by the rerun",
                   "Sent again", "Checks", "Result"], rows)
    out += _violations(writes)

    if also:
        out += ["", "## Also run", "",
                "The other reliability tests, run once by `make chaos` (and by `make test`):", ""]
        what = {
            "tests/test_bad_endpoint.py": "bad answers from the endpoint: non-JSON, an HTML "
            "502 page, missing id or status, an unknown status, dropped connections, output "
            "not base64 or not an image, `../` names, file: URLs and redirects to them, "
            "hanging, trickling and oversized downloads, a 50 MB output",
            "tests/test_bad_input.py": "bad input: truncated PNG, symlink loops, broken "
            "symlinks, names with spaces, unicode, newlines and tabs, 100 megapixels, "
            "unreadable files and folders, identical images, output folder inside or equal "
            "to the input, bad templates, an invalid config file",
            "tests/test_crashes.py": "the scenarios above, smaller, plus a full tmpfs and a "
            "read-only output folder",
            "tests/test_trust.py": "plain http only to loopback, downloads http(s) only and "
            "without the key, nothing written outside OUT, the key in no log record (DEBUG) "
            "or file on failing paths, `rpq serve` binds and constant-time key checks",
            "tests/test_secrets.py": "the API key in no output, file, error or traceback",
            "tests/test_fuzz.py": "property tests (Hypothesis) of the journal reader and the "
            "output extractor",
            "tests/test_chaos.py": "chaos at scale, 300 images x 2 seeds; this script's "
            "--quick smoke test",
        }
        rows = [[f"`{name}`", what.get(name, ""), c["tests"], c["skipped"],
                 "passed" if not c["failed"] else f"**{c['failed']} failed**"]
                for name, c in also.items()]
        out += _table(["File", "What", "Tests", "Skipped", "Result"], rows)

    out += [
        "",
        "## Found and fixed while building these tests",
        "",
        "- A deadlock when `/status-sync` is answered at once: the batch never ended.",
        "- A stalled job that had finished meanwhile was sent again (paid twice).",
        "- One unreadable status answer (a proxy's page) failed a job the endpoint still had.",
        "- Downloads were bounded per read only: a trickling server held the batch forever.",
        "- A full disk or read-only output folder ended in a traceback; a result that could "
        "not be saved was paid again on `--retry-failed`; it is now fetched again by a rerun.",
        "- A job the endpoint lost (restart, ttl) was skipped by a rerun; Ctrl-C-cancelled "
        "jobs were counted as orphans.",
        "- A journal line with a field of the wrong type crashed every later run at startup.",
        "- `--out` inside the input folder was read back as input on each rerun; `--out` equal "
        "to it replaced the inputs.",
        "- A failed result shared by identical images was reported under one name twice.",
        "- Output bytes that only start like an image were saved (now decoded first).",
        "",
    ]
    return "\n".join(out)


def _violations(outcomes: list[ck.Outcome]) -> list[str]:
    lines = []
    for o in outcomes:
        for v in o.violations[:10]:
            lines.append(f"- seed {o.seed}: {v}")
    return ["", "Failed checks:", "", *lines] if lines else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one seed; prints the report unless --out")
    parser.add_argument("--out", type=Path, help="where to write the report "
                        "(default: RELIABILITY.md, or stdout with --quick)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    _isolate()
    started = time.monotonic()
    results: dict[str, list[ck.Outcome]] = {
        "chaos": [_run("chaos", s, lambda w, s=s: ck.chaos_batch(
            w, images=plan.chaos_images, seed=s)) for s in plan.chaos_seeds],
        "sigkill": [_run("sigkill", s, lambda w, s=s: ck.kill_loop(
            w, images=plan.kill_images, seed=s, kills=plan.kills)) for s in plan.kill_seeds],
        "endpoint_restart": [_run("endpoint_restart", s, lambda w, s=s: ck.restart_endpoint(
            w, seed=s)) for s in plan.restart_seeds],
        "failing_writes": [_run("failing_writes", s, lambda w, s=s: ck.failing_writes(
            w, seed=s)) for s in plan.write_seeds],
    }
    also = _pytest(plan.also_run)
    text = report(plan, results, also, time.monotonic() - started)
    out = args.out if args.out is not None else (None if args.quick else ROOT / "RELIABILITY.md")
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n")
        print(f"chaos: wrote {out}", file=sys.stderr)
    failed = any(o.violations for runs in results.values() for o in runs) or any(
        c["failed"] for c in also.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
