"""Crashes and a hostile machine: SIGKILL at random moments, a full disk, an output folder made
read-only mid-run, the endpoint process killed and restarted. Each time: every image accounted
for, no output file half-written, nothing paid twice, and a rerun finishes the work."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from chaoskit import (
    NOBODY,
    as_nobody_in_a_fork,
    kill_loop,
    leftover_parts,
    make_unique_images,
    output_files,
    shared_folder,
    unique_png,
)
from helpers import wait_for
from PIL import Image

from rpq.journal import JOURNAL_NAME, Journal


def _jobs(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / "job_metrics.json").read_text())
    return {j["input"]: j for j in data["jobs"]}


def _noise_png(path: Path, side: int, seed: int) -> bytes:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    import random

    rng = random.Random(seed)
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(path, "PNG")
    return path.read_bytes()


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


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_writes_that_fail_lose_no_paid_result(tmp_path: Path, make_endpoint: Any) -> None:
    # The child may not write files over 64 KiB: the big results cannot be saved (EFBIG,
    # as on a full disk), the small ones and the journal can.
    ep = make_endpoint(handler="echo", workers_max=4)
    src, out = tmp_path / "in", tmp_path / "out"
    small = make_unique_images(src, 8)
    big = {f"big_{i}.png": _noise_png(src / f"big_{i}.png", 160, i) for i in range(4)}
    assert all(len(data) > 64 << 10 for data in big.values())
    exe = Path(sys.executable).with_name("rpq")
    args = [str(exe), *map(str, batch_args(src, out))]
    env = {**os.environ, **endpoint_env(ep)}
    child = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60,
                           preexec_fn=_limit_file_size(64 << 10))
    assert child.returncode == 1, child.stderr
    assert "Traceback" not in child.stderr
    jobs = _jobs(out)
    for name in small:
        assert jobs[name]["status"] == "COMPLETED"
        assert (out / name).read_bytes() == small[name]
    for name in big:
        assert jobs[name]["status"] == "FAILED" and jobs[name]["error_kind"] == "no_output"
        assert "could not save the result: File too large" in jobs[name]["error"]
        assert re.search(rf"{name}: could not save the result: File too large", child.stderr)
        assert not (out / name).exists()
    assert leftover_parts(out) == []  # no half-written file left behind
    runs = ep.calls()["run"]
    assert runs == len(small) + len(big)
    # With room again, a plain rerun saves those results: fetched again, not paid again.
    rerun = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert rerun.code == 0, rerun.stderr
    assert ep.calls()["run"] == runs
    for name, data in {**small, **big}.items():
        assert (out / name).read_bytes() == data
    assert all(e.state == "done" for e in Journal(out / JOURNAL_NAME).entries.values())


@contextlib.contextmanager
def _tiny_tmpfs(size: str) -> Iterator[Path]:
    """A small tmpfs (needs mount rights; the test is skipped without them)."""
    where = Path(tempfile.mkdtemp(prefix="rpq-full-"))
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                  str(where)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        mounted = False
    if not mounted:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.timeout(90)
def test_a_full_disk_is_reported_and_a_rerun_finishes(tmp_path: Path, make_endpoint: Any
                                                      ) -> None:
    # A real ENOSPC: results, journal lines and the metrics all stop fitting at some point.
    ep = make_endpoint(handler="echo", workers_max=4)
    src = tmp_path / "in"
    src.mkdir()
    images = {f"n{i:02d}.png": _noise_png(src / f"n{i:02d}.png", 90, i) for i in range(30)}
    with _tiny_tmpfs("400k") as disk:
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


# --- the output folder made read-only mid-run -------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_folder() as path:
        yield path


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
    images = {f"{name}.png": unique_png(i) for i, name in enumerate(names)}
    src.mkdir()
    for name, data in images.items():
        (src / name).write_bytes(data)
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


def _serve(port: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = Path(sys.executable).with_name("rpq")
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--handler", "echo", "--workers-max", "2",
             "--process-time", "0.15", "--rate-limits", "off"],
            stdout=subprocess.PIPE, stderr=fh, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/v2", line)
    assert match, line
    return proc, int(match.group(1))


@pytest.mark.timeout(120)
def test_endpoint_killed_and_restarted_mid_run(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server, port = _serve(0, log)
    src, out = tmp_path / "in", tmp_path / "out"
    images = make_unique_images(src, 30)
    env = {"RUNPOD_ENDPOINT_BASE_URL": f"http://127.0.0.1:{port}/v2",
           "RUNPOD_ENDPOINT_ID": "local"}
    exe = Path(sys.executable).with_name("rpq")
    args = [str(exe), *map(str, batch_args(src, out, "--concurrency", "6"))]
    batch_log = tmp_path / "batch.log"
    try:
        with batch_log.open("wb") as fh:
            batch = subprocess.Popen(args, env={**os.environ, **env}, stdout=fh, stderr=fh)
        try:
            wait_for(lambda: len(output_files(out)) >= 5 and
                     len(Journal(out / JOURNAL_NAME).in_flight()) >= 2, timeout=30)
            lost = {e.rel for e in Journal(out / JOURNAL_NAME).in_flight()}
            _stop(server)  # its queue and jobs live in memory: all gone
            server, _ = _serve(port, log)
            code = batch.wait(90)
        finally:
            if batch.poll() is None:
                batch.kill()
                batch.wait()
        stderr = batch_log.read_text()
        assert code == 1, stderr
        assert "Traceback" not in stderr
        jobs = _jobs(out)
        assert sorted(jobs) == sorted(images)
        expired = {name for name, j in jobs.items() if j["status"] != "COMPLETED"}
        assert expired and expired <= lost | expired
        for name in expired:
            assert jobs[name]["error_kind"] == "expired", jobs[name]
            assert "no longer knows the job" in jobs[name]["error"]
            assert re.search(rf"expired +{name}: the endpoint no longer knows the job", stderr)
        for name, j in jobs.items():
            if j["status"] == "COMPLETED":
                assert (out / name).read_bytes() == images[name]
        # The same command again finishes the lost ones, and only those are sent.
        rerun = subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        for name, data in images.items():
            assert (out / name).read_bytes() == data
        sent = json.loads((out / "job_metrics.json").read_text())["run"]["requests"]["run"]
        assert sent == len(expired)
    finally:
        _stop(server)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.kill()
    server.wait(10)
    if server.stdout:
        server.stdout.close()
