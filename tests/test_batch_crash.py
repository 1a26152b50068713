"""Killing and interrupting a batch: nothing lost, nothing paid twice, exit 130 on Ctrl-C."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from batchkit import (
    endpoint_env,
    gated_template,
    in_flight,
    interrupt,
    kill_when,
    rpq,
    rpq_process,
    stop,
)
from helpers import Gate, wait_for
from imaging import decodes, make_images

from rpq.journal import JOURNAL_NAME, Journal


def test_sigkill_then_rerun_resumes_without_resubmitting(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2, process_time=0.25)
    src = tmp_path / "in"
    make_images(src, 12)
    out = tmp_path / "out"
    args = ("batch", src, "--out", out, "--no-progress", "--concurrency", "4")
    proc = rpq_process(*args, env=endpoint_env(ep))
    kill_when(proc, lambda: sum(j["status"] == "COMPLETED" for j in ep.jobs()) >= 3, 20)
    assert proc.returncode == -signal.SIGKILL
    journal = Journal(out / JOURNAL_NAME)
    orphans = len(journal.orphans())
    in_flight = {e.job_id for e in journal.in_flight()}
    assert in_flight, "the kill should leave jobs the endpoint has"
    jobs_before = len(ep.jobs())

    run = rpq(*args, env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    outputs = sorted(p.name for p in out.glob("img_*.png"))
    assert outputs == sorted(p.name for p in src.glob("*.png"))
    assert all(decodes(out / name) for name in outputs)
    # Jobs the endpoint already had were polled again, not sent again: one job per image,
    # plus at most the submits cut off between sending and the answer (the kill may land
    # before or after the endpoint took such a request).
    per_image = Counter(j["input"]["image"] for j in ep.jobs())
    assert len(per_image) == 12
    assert 12 <= len(ep.jobs()) <= 12 + orphans
    assert sum(n - 1 for n in per_image.values()) <= orphans
    assert jobs_before <= len(ep.jobs())
    completed_ids = {j["job_id"] for j in run.metrics(out)["jobs"]}
    assert in_flight <= completed_ids


def test_ctrl_c_cancels_queued_jobs_and_lets_running_ones_finish(tmp_path: Path,
                                                                   make_endpoint) -> None:
    gate = Gate(timeout=30)
    ep = make_endpoint(handler=gate.echo, workers_max=1)
    src = tmp_path / "in"
    make_images(src, 4)
    out = tmp_path / "out"
    template = gated_template(tmp_path)
    proc = rpq_process("batch", src, "--out", out, "--no-progress", "--input-template", template,
                       env=endpoint_env(ep))
    try:
        wait_for(lambda: gate.started and ep.calls().get("run", 0) == 4, timeout=20)
        wait_for(lambda: in_flight(out) == 4, timeout=10)
        stderr = interrupt(proc, ep, gate, cancelled=3)
    finally:
        gate.open_all()
        stop(proc)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    statuses = Counter(j["status"] for j in ep.jobs())
    assert statuses == {"CANCELLED": 3, "COMPLETED": 1}
    metrics = (out / "job_metrics.json").read_text()
    assert '"interrupted": true' in metrics
    done = [p for p in out.glob("img_*.png")]
    assert len(done) == 1, stderr


def test_second_ctrl_c_cancels_everything(tmp_path: Path, make_endpoint) -> None:
    gate = Gate(timeout=30)
    ep = make_endpoint(handler=gate, workers_max=1)
    src = tmp_path / "in"
    make_images(src, 3)
    out = tmp_path / "out"
    proc = rpq_process("batch", src, "--out", out, "--no-progress", env=endpoint_env(ep))
    try:
        wait_for(lambda: gate.started and in_flight(out) == 3, timeout=20)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: sum(j["status"] == "CANCELLED" for j in ep.jobs()) == 2, timeout=20)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: sum(j["status"] == "CANCELLED" for j in ep.jobs()) == 3, timeout=20)
        _, stderr = proc.communicate(timeout=30)
    finally:
        gate.open_all()
        stop(proc)
    assert proc.returncode == 130, stderr
    journal = Journal(out / JOURNAL_NAME)
    assert not journal.in_flight()
    assert all(e.cancels for e in journal.entries.values())




def test_rerun_removes_temp_files_a_killed_run_left(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 1, sub="sub")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    torn = out / "sub" / ".img_000.png.k3j9.part"
    torn.write_bytes(b"\x89PNG half")
    keep = out / "notes.part"  # not one of rpq's temp files
    keep.write_text("mine")
    run = rpq("batch", src, "--out", out, "--no-progress", env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert not torn.exists() and keep.exists()
    assert (out / "sub" / "img_000.png").exists()
