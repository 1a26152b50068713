"""Crashes and a hostile machine: SIGKILL at random moments, a full disk, an output folder made
read-only mid-run, the endpoint process killed and restarted. Each time: every image accounted
for, no output file half-written, nothing paid twice, and a rerun finishes the work."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from chaoskit import (
    NOBODY,
    as_nobody_in_a_fork,
    failing_writes,
    kill_loop,
    leftover_parts,
    noise_png,
    output_files,
    restart_endpoint,
)
from helpers import tiny_tmpfs, wait_for
from imaging import make_images

from rpq.journal import JOURNAL_NAME, Journal


def _jobs(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / "job_metrics.json").read_text())
    return {j["input"]: j for j in data["jobs"]}


# --- SIGKILL at 20 moments --------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_sigkill_at_twenty_moments_then_rerun(tmp_path: Path) -> None:
    # Killed after k more /run requests reach the endpoint, k more status polls, k more
    # output files or k more journal lines (k and the kind drawn from the seed), and rerun
    # each time; then once more to the end.
    outcome = kill_loop(tmp_path, images=120, seed=7, kills=20)
    assert not outcome.violations, "\n".join(outcome.violations)
    assert outcome.figures["kills"] >= 15, outcome.figures  # the batch did not end first
    assert len(outcome.figures["moments"]) >= 3


# --- a full disk --------------------------------------------------------------------------------


def test_writes_that_fail_lose_no_paid_result(tmp_path: Path) -> None:
    # The child may not write files over 64 KiB (EFBIG, as a full disk would refuse them):
    # the big results cannot be saved, each named on stderr, nothing half-written is left;
    # with room again a plain rerun saves them, fetched again rather than paid again.
    outcome = failing_writes(tmp_path, seed=1)
    assert not outcome.violations, "\n".join(outcome.violations)
    assert outcome.figures["unsaved_first"] == 4 and outcome.figures["resent"] == 0


@pytest.mark.timeout(90)
def test_a_full_disk_is_reported_and_a_rerun_finishes(tmp_path: Path, make_endpoint: Any
                                                      ) -> None:
    # A real ENOSPC: results, journal lines and the metrics all stop fitting at some point.
    ep = make_endpoint(handler="echo", workers_max=4)
    src = tmp_path / "in"
    src.mkdir()
    images = {f"n{i:02d}.png": noise_png(src / f"n{i:02d}.png", 90, i) for i in range(30)}
    with tiny_tmpfs("400k") as disk:
        out = disk / "out"
        exe = Path(sys.executable).with_name("rpq")
        child = subprocess.run([str(exe), *map(str, batch_args(src, out))],
                               env={**os.environ, **endpoint_env(ep)}, capture_output=True,
                               text=True, timeout=60)
        assert child.returncode == 1, child.stderr
        assert "Traceback" not in child.stderr
        assert "No space left on device" in child.stderr
        # Each image is either saved whole or named on stderr with the reason.
        saved = {p.name for p in output_files(out)}
        for name, data in images.items():
            if name in saved:
                assert (out / name).read_bytes() == data
            else:
                assert any(name in line and "No space left on device" in line
                           for line in child.stderr.splitlines()), name
        assert saved and len(saved) < len(images)
        assert leftover_parts(out) == []
        runs = ep.calls()["run"]
        # Room again: the rerun finishes, and sends only what was never sent.
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True, timeout=10)
        rerun = rpq(*batch_args(src, out), env=endpoint_env(ep))
        assert rerun.code == 0, rerun.stderr
        for name, data in images.items():
            assert (out / name).read_bytes() == data
        assert ep.calls()["run"] - runs <= len(images) - len(saved)
        assert len(ep.jobs()) == ep.calls()["run"]  # the endpoint made one job per /run
        per_image = {}
        for job in ep.jobs():
            per_image[job["input"]["image"]] = per_image.get(job["input"]["image"], 0) + 1
        assert max(per_image.values()) == 1, "an image was paid for twice"


def test_a_full_disk_still_takes_the_lines_of_jobs_already_paid_for() -> None:
    # Once /run has answered, the job's lines must reach the journal whatever filled the disk
    # meanwhile, or a rerun would pay for the image again; a new job is refused instead.
    with tiny_tmpfs("64k") as disk:
        journal = Journal(disk / JOURNAL_NAME, room=True)
        keys = [f"k{i:02d}" for i in range(30)]
        for key in keys:
            journal.intent(key, f"{key}.png", 1)
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while os.write(fd, bytes(1024)):
                pass
        os.close(fd)
        for key in keys:  # more than the journal's last page holds
            journal.submitted(key, f"job-{key}", "ep", "http://127.0.0.1")
            journal.end(key, {"input": f"{key}.png", "status": "COMPLETED",
                              "outputs": [f"{key}.png"]})
        with pytest.raises(OSError) as refused:
            journal.intent("new", "new.png", 1)
        assert refused.value.errno == errno.ENOSPC
        journal.close()
        lines = (disk / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
        assert all(line.endswith(b"\n") and json.loads(line) for line in lines)
        again = Journal(disk / JOURNAL_NAME)
        assert all(again.get(key).state == "done" for key in keys)  # type: ignore[union-attr]
        assert again.get("new") is None
        assert sorted(p.name for p in disk.iterdir()) == [JOURNAL_NAME, "filler"]


# --- the output folder made read-only mid-run -------------------------------------------------


@pytest.mark.timeout(90)
def test_output_folder_made_read_only_mid_run(shared_dir: Path, make_endpoint: Any) -> None:
    release = threading.Event()

    def handler(job: dict[str, Any]) -> dict[str, Any]:
        if job["input"]["name"].startswith("late"):
            release.wait(30)
        return {"image": job["input"]["image"]}

    ep = make_endpoint(handler=handler, workers_max=8)
    src, out = shared_dir / "in", shared_dir / "out"
    names = ["early_0", "early_1", "early_2", "late_0", "late_1", "late_2"]
    images = {path.name: path.read_bytes() for path in make_images(src, names)}
    for name in images:
        (src / name).chmod(0o644)
    template = shared_dir / "t.json"
    template.write_text(json.dumps({"input": {"image": "{{image_base64}}", "name": "{{stem}}"}}))
    template.chmod(0o644)
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    home = shared_dir / "home"
    home.mkdir()
    args = [str(a) for a in batch_args(src, out, "--input-template", template)]
    env = {**endpoint_env(ep), "HOME": str(home)}
    # Warm up in this process: every module the batch imports lazily is loaded before the
    # fork, so the child, which cannot read root's files, never needs to import one.
    warm = rpq(*batch_args(src, shared_dir / "warm", "--include", "early_0.png",
                           "--input-template", template), env=env)
    assert warm.code == 0, warm.stderr
    log = shared_dir / "child.log"
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(
        code=as_nobody_in_a_fork(args, env, log)))
    thread.start()
    try:
        wait_for(lambda: all((out / f"early_{i}.png").exists() for i in range(3)), timeout=30)
        out.chmod(0o555)  # owner nobody: r-x
    finally:
        release.set()
        thread.join(60)
    stderr = log.read_text()
    assert result.get("code") == 1, stderr
    assert "Traceback" not in stderr
    for i in range(3):
        assert f"late_{i}.png: could not save the result: Permission denied" in stderr
        assert not (out / f"late_{i}.png").exists()
    # The metrics could not be written either: said so, in one line.
    assert re.search(r"error: .*job_metrics\.json.*Permission denied", stderr), stderr
    assert leftover_parts(out) == []
    runs = ep.calls()["run"]
    out.chmod(0o755)
    rerun = rpq(*batch_args(src, out, "--input-template", template), env=env)
    assert rerun.code == 0, rerun.stderr
    assert ep.calls()["run"] == runs  # the results were fetched again, not paid again
    for name, data in images.items():
        assert (out / name).read_bytes() == data


# --- the endpoint killed and restarted --------------------------------------------------------


@pytest.mark.timeout(120)
def test_endpoint_killed_and_restarted_mid_run(tmp_path: Path) -> None:
    # rpq serve in its own process, SIGKILLed with jobs in flight and started again on the
    # same port: the lost jobs are reported as expired, and the same command finishes them.
    outcome = restart_endpoint(tmp_path, seed=1)
    assert not outcome.violations, "\n".join(outcome.violations)
    assert outcome.figures["lost_jobs"] >= 1
