"""After Ctrl-C the summary, the report and its plot count done, cancelled and not started."""

from __future__ import annotations

import json
from pathlib import Path

from batchkit import (
    endpoint_env,
    gated_template,
    in_flight,
    interrupt,
    rpq,
    rpq_process,
    stop,
)
from helpers import Gate, wait_for
from imaging import make_images
from PIL import Image

from rpq.metrics import JobRecord
from rpq.report import cold_start_flags, plot_timeline


def test_ctrl_c_summary_counts_every_image_of_the_folder(tmp_path: Path, make_endpoint) -> None:
    gate = Gate(timeout=30)
    ep = make_endpoint(handler=gate.echo, workers_max=1)
    src = tmp_path / "in"
    make_images(src, 6)
    out = tmp_path / "out"
    template = gated_template(tmp_path)
    proc = rpq_process("batch", src, "--out", out, "--no-progress", "--input-template", template,
                       "--concurrency", "2", env=endpoint_env(ep))
    try:
        wait_for(lambda: gate.started and in_flight(out) == 2, timeout=20)
        stderr = interrupt(proc, ep, gate, cancelled=1)
    finally:
        gate.open_all()
        stop(proc)
    assert proc.returncode == 130, stderr
    assert "1 done, 1 cancelled, 4 not started, of 6" in stderr

    # The report and the plot's title give the same counts, cancelled apart from failures.
    plot = tmp_path / "timeline.png"
    report = rpq("report", out / "job_metrics.json", "--plot", plot, "--json")
    document = json.loads(report.stdout)
    summary = document["summary"]
    assert (summary["completed"], summary["cancelled"], summary["failed"]) == (1, 1, 0)
    assert document["plot_title"].startswith("rpq timeline: 2 jobs, 1 done, 0 failed, "
                                              "1 cancelled")
    text = rpq("report", out / "job_metrics.json")
    assert "completed 1 · failed 0 · cancelled 1" in text.stdout


def _job(name: str, submit: float, queue: float, status: str = "COMPLETED",
         kind: str | None = None, worker: str | None = "w1") -> JobRecord:
    return JobRecord(input=name, status=status, submit_time=submit, queue_time=queue,
                     process_time=1.0, total_time=queue + 1.0, error_kind=kind,
                     worker_id=worker)


def test_a_job_queued_behind_the_batch_is_not_a_cold_start() -> None:
    # One worker, 20 jobs submitted at once: each waits for those before it, none is cold
    # but the first, whose worker had to start.
    jobs = [_job(f"j{i}", 0.0, 30.0 + i * 1.0) for i in range(20)]
    jobs += [_job(f"k{i}", 0.0, 0.5, worker="w2") for i in range(30)]
    flags = cold_start_flags(jobs)
    assert flags[0] is True
    assert not any(flags[1:20])
    assert not any(flags[20:])


def test_the_plot_draws_user_cancelled_jobs_apart_from_failures(tmp_path: Path) -> None:
    jobs = [_job("done", 0.0, 1.0), _job("stopped", 0.0, 1.0, "CANCELLED", "cancelled")]
    path = tmp_path / "p.png"
    plot_timeline(jobs, path)
    colours = {colour for _, colour in Image.open(path).convert("RGB").getcolors(1 << 20)}
    assert (220, 38, 38) not in colours  # the failure red
    failed = tmp_path / "f.png"
    plot_timeline([_job("done", 0.0, 1.0), _job("bad", 0.0, 1.0, "FAILED", "worker_error")],
                  failed)
    assert (220, 38, 38) in {c for _, c in Image.open(failed).convert("RGB").getcolors(1 << 20)}
