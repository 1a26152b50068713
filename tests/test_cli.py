"""The CLI as a user meets it: help, the built-in endpoint, the live table, the installed script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batchkit import rpq
from imaging import make_images
from PIL import Image
from rich.console import Console

from rpq.metrics import JobRecord
from rpq.progress import LiveReporter, Tracker


def test_help_lists_every_command() -> None:
    run = rpq("--help")
    assert run.code == 0
    for name in ("batch", "serve", "health", "cancel", "purge", "report"):
        assert name in run.stdout


def test_installed_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("rpq")
    done = subprocess.run([str(exe), "batch", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "--max-queue-time" in done.stdout
    done = subprocess.run([sys.executable, "-m", "rpq", "report", str(tmp_path / "nope.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


def test_no_endpoint_uses_the_built_in_one(tmp_path: Path) -> None:
    src = tmp_path / "in"
    make_images(src, 2)
    out = tmp_path / "out"
    run = rpq("batch", src, "--out", out, "--no-progress")
    assert run.code == 0, run.stderr
    assert "built-in local endpoint" in run.stderr
    with Image.open(out / "img_000.png") as im:
        assert im.mode == "RGBA" and im.size == (48, 32)


def test_live_table_shows_counts_and_latency() -> None:
    now = [0.0]
    tracker = Tracker(clock=lambda: now[0])
    tracker.total = 10
    tracker.add("queued", 3)
    tracker.add("done", 2)
    tracker.add("retried")
    tracker.health = {"workers": {"idle": 1, "running": 2}}
    tracker.finished(JobRecord(input="a.png", status="COMPLETED", queue_time=1.0,
                               process_time=2.0))
    tracker.finished(JobRecord(input="b.png", status="FAILED", error="ValueError: boom"))
    now[0] = 60.0
    reporter = LiveReporter()
    reporter.console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
    reporter._tracker = tracker
    reporter.console.print(reporter._render())
    text = reporter.console.export_text()
    reporter.console.file.close()
    for piece in ("queued", "running", "done", "failed", "retried", "cancelled", "ETA",
                  "queue p50 1.0s", "process p50 2.0s", "workers idle 1", "running 2",
                  "b.png: ValueError: boom", "jobs/min"):
        assert piece in text, piece
