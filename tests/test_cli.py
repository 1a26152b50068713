"""The CLI as a user meets it: help, the built-in endpoint, the live table, the installed script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from helpers import FakeClock
from imaging import make_images
from PIL import Image
from rich.console import Console

from rpq.metrics import JobRecord
from rpq.options import options_of
from rpq.progress import LiveReporter, Tracker
from rpq.settings import BatchSettings


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
    clock = FakeClock()
    tracker = Tracker(clock=clock)
    tracker.total = 10
    tracker.add("queued", 3)
    tracker.add("done", 2)
    tracker.add("retried")
    tracker.health = {"workers": {"idle": 1, "running": 2}}
    tracker.finished(JobRecord(input="a.png", status="COMPLETED", queue_time=1.0,
                               process_time=2.0))
    tracker.finished(JobRecord(input="b.png", status="FAILED", error="ValueError: boom"))
    clock.now = 60.0
    reporter = LiveReporter()
    reporter.console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
    reporter.tracker = tracker
    reporter.console.print(reporter.render())
    text = reporter.console.export_text()
    reporter.console.file.close()
    for piece in ("queued", "running", "done", "failed", "retried", "cancelled", "ETA",
                  "queue p50 1.0s", "process p50 2.0s", "workers idle 1", "running 2",
                  "b.png: ValueError: boom", "jobs/min"):
        assert piece in text, piece


def test_every_batch_option_is_on_help_and_recorded_in_the_metrics(
        tmp_path: Path, make_endpoint: Any) -> None:
    # Each option is declared once, on its BatchSettings field: it shows in the help, reaches
    # the engine, and job_metrics.json records its value (secrets only as set or not).
    help_text = rpq("batch", "--help").stdout
    option_fields = {f.name: spec for f, spec in options_of(BatchSettings)}
    for spec in option_fields.values():
        assert spec.flag in help_text, spec.flag
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    run = rpq(*batch_args(src, out, "--format", "JPG", "-c", "3", "--rate", "100/1",
                          "--include", "*.png", "--poll", "status", "--cost-per-hour", "0.5",
                          "--budget", "10", "--halt-on-fail", "5", "--save-json"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    settings = run.metrics(out)["run"]["settings"]
    assert set(settings) == set(option_fields) | {"root", "endpoint", "base_url"}
    assert settings["fmt"] == "jpeg" and settings["concurrency"] == 3
    assert settings["rate"] == "100/1" and settings["include"] == ["*.png"]
    assert settings["poll_mode"] == "status" and settings["budget"] == 10
    assert settings["out"] == str(out) and settings["alert_webhook"] is False
    assert (out / "img_000.json").exists()  # --save-json reached the writer


@pytest.mark.parametrize(("args", "words"), [
    (["--format", "gif"], "--format: 'gif': use png, jpeg or webp"),
    (["--poll", "often"], "--poll: 'often': use auto, sync or status"),
    (["--budget", "5"], "--budget needs --cost-per-hour"),
])
def test_bad_batch_options_name_the_option(tmp_path: Path, args: list[str], words: str) -> None:
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq("batch", src, *args)
    assert run.code == 2 and words in run.stderr, run.stderr
    assert run.stdout == ""
