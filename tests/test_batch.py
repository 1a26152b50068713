"""`rpq batch` end to end against the local endpoint over real HTTP."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import decodes, jpeg_bytes, make_images, png_bytes
from PIL import Image


def outputs_of(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith((".", "job_")))


def test_round_trip_writes_every_image_and_metrics(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 4)
    make_images(src, 2, start=10, sub="nested/deeper")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert run.stdout == ""  # stdout is for data only
    written = [p.relative_to(out).as_posix() for p in outputs_of(out)]
    assert written == ["img_000.png", "img_001.png", "img_002.png", "img_003.png",
                       "nested/deeper/img_010.png", "nested/deeper/img_011.png"]
    # echo returns the image it got: the bytes must come back unchanged.
    assert (out / "img_002.png").read_bytes() == (src / "img_002.png").read_bytes()
    data = run.metrics(out)
    assert data["stats"]["total_jobs"] == 6 and data["stats"]["completed"] == 6
    assert data["stats"]["success_rate"] == 100.0
    for key in ("avg_queue_time", "avg_process_time", "avg_total_time", "p95_total_time"):
        assert key in data["stats"]
    job = data["jobs"][0]
    for key in ("job_id", "submit_time", "queue_time", "process_time", "total_time", "status",
                "timestamp", "input", "outputs", "attempts", "worker_id", "endpoint"):
        assert key in job
    assert data["run"]["settings"]["concurrency"] == "auto"
    assert data["run"]["settings"]["memory_budget"] == 192
    assert ep.calls()["run"] == 6
    assert "6 of 6 images done" in run.stderr
    # Results are ordinary files (the umask applies), not private temp files.
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (out / "img_000.png", out / "job_metrics.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_rerun_skips_done_work_even_after_rename(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 3)
    out = tmp_path / "out"
    assert rpq(*batch_args(src, out), env=endpoint_env(ep)).code == 0
    assert ep.calls()["run"] == 3
    (src / "img_001.png").rename(src / "renamed.png")
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert ep.calls()["run"] == 3  # nothing sent again
    assert (out / "renamed.png").read_bytes() == (src / "renamed.png").read_bytes()
    assert rpq(*batch_args(src, out, "--fresh"), env=endpoint_env(ep)).code == 0
    assert ep.calls()["run"] == 6


def test_rerun_sends_again_an_image_whose_result_a_power_cut_emptied(
    tmp_path: Path, make_endpoint
) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 3)
    out = tmp_path / "out"
    assert rpq(*batch_args(src, out), env=endpoint_env(ep)).code == 0
    # What a power cut leaves of a file renamed into place before its data reached the disk.
    (out / "img_001.png").write_bytes(b"")
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert ep.calls()["run"] == 4  # that image alone went again
    assert (out / "img_001.png").read_bytes() == (src / "img_001.png").read_bytes()


def test_transient_errors_lose_nothing_and_duplicate_nothing(tmp_path: Path, make_endpoint
                                                             ) -> None:
    ep = make_endpoint(handler="echo", workers_max=4, faults="500=0.15,drop=0.08,429=0.03",
                       seed=11)
    src = tmp_path / "in"
    make_images(src, 24)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--max-retries", "8"), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    outputs = outputs_of(out)
    assert len(outputs) == 24 and all(decodes(p) for p in outputs)
    data = run.metrics(out)
    # Every /run the server saw is one image or one retry rpq recorded.
    assert ep.calls()["run"] == 24 + data["run"]["run_request_retries"]
    # The server created exactly one job per image: faults happen before a request is applied.
    assert len(ep.jobs()) == 24


def test_stuck_jobs_are_cancelled_and_resubmitted(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=3, faults="stuck=0.3", seed=5)
    src = tmp_path / "in"
    make_images(src, 10)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--max-queue-time", "1", "--job-retries", "4"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    data = run.metrics(out)
    retried = [j for j in data["jobs"] if j["attempts"] > 1]
    assert retried, "the seed must make at least one job stick"
    cancelled = [j for j in ep.jobs() if j["status"] == "CANCELLED"]
    assert len(cancelled) == sum(j["attempts"] - 1 for j in data["jobs"])
    assert len(outputs_of(out)) == 10
    journal = (out / ".rpq-journal.jsonl").read_text()
    assert journal.count('"event":"cancel"') == len(cancelled)


def test_handler_failure_is_reported_with_the_workers_message(tmp_path: Path, make_endpoint
                                                              ) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(
        "def handler(job):\n"
        "    if job['input']['name'].startswith('img_001'):\n"
        "        raise ValueError('cannot segment this image')\n"
        "    if job['input']['name'].startswith('img_002'):\n"
        "        return {'error': 'image too dark'}\n"
        "    return {'image': job['input']['image']}\n"
    )
    ep = make_endpoint(handler=f"{worker}:handler", workers_max=2)
    template = tmp_path / "t.json"
    body = {"input": {"image": "{{image_base64}}", "name": "{{filename}}"}}
    template.write_text(json.dumps(body))
    src = tmp_path / "in"
    make_images(src, 4)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--input-template", template), env=endpoint_env(ep))
    assert run.code == 1
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    assert jobs["img_001.png"]["status"] == "FAILED"
    assert jobs["img_001.png"]["error"] == "ValueError: cannot segment this image"
    assert jobs["img_002.png"]["error"] == "image too dark"
    assert jobs["img_000.png"]["status"] == "COMPLETED"
    assert "img_001.png: ValueError: cannot segment this image" in run.stderr


def test_broken_inputs_are_skipped_with_reasons(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 2)
    (src / "truncated.jpg").write_bytes(jpeg_bytes(3, (200, 200))[:400])
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("this is text, not a picture\n")
    bomb = Image.new("1", (20000, 20000))
    buf = io.BytesIO()
    bomb.save(buf, "PNG")
    (src / "bomb.png").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 1
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    assert jobs["img_000.png"]["status"] == jobs["img_001.png"]["status"] == "COMPLETED"
    for name in ("truncated.jpg", "empty.png", "notes.png", "bomb.png"):
        assert jobs[name]["status"] == "FAILED" and jobs[name]["error_kind"] == "bad_input", name
        assert jobs[name]["error"]
    assert "empty" in jobs["empty.png"]["error"]
    assert "truncated" in jobs["truncated.jpg"]["error"].lower() or "corrupt" in \
        jobs["truncated.jpg"]["error"].lower()
    assert ep.calls()["run"] == 2


def test_completed_without_image_is_a_failure(tmp_path: Path, make_endpoint) -> None:
    worker = tmp_path / "w.py"
    worker.write_text(
        "def handler(job):\n"
        "    name = job['input']['name']\n"
        "    if name == 'img_000.png':\n"
        "        return {'status': 'error', 'message': 'Some images failed to upload'}\n"
        "    return {'note': 'no picture here'}\n"
    )
    ep = make_endpoint(handler=f"{worker}:handler")
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"img": "{{image_base64}}", "name": "{{filename}}"}}))
    src = tmp_path / "in"
    make_images(src, 2)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--input-template", template), env=endpoint_env(ep))
    assert run.code == 1
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    assert "Some images failed to upload" in jobs["img_000.png"]["error"]
    assert jobs["img_001.png"]["error_kind"] == "no_output"
    assert "note" in jobs["img_001.png"]["error"]
    assert outputs_of(out) == []


def test_oversized_request_is_refused_with_advice(tmp_path: Path, make_endpoint) -> None:

    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    src.mkdir()
    noise = Image.frombytes("RGB", (2000, 1800), os.urandom(2000 * 1800 * 3))
    noise.save(src / "noise.png")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 1
    job = run.metrics(out)["jobs"][0]
    assert job["error_kind"] == "bad_input" and "--max-side" in job["error"]
    assert ep.calls()["run"] == 0
    run = rpq(*batch_args(src, out, "--max-side", "512", "--format", "jpeg"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    with Image.open(out / "noise.jpg") as im:
        assert max(im.size) == 512


def test_max_wait_cancels_and_fails(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="sleep", workers_max=1)
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"seconds": 30, "image": "{{image_base64}}"}}))
    src = tmp_path / "in"
    make_images(src, 1)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--input-template", template, "--max-wait", "1.5"),
              env=endpoint_env(ep))
    assert run.code == 1
    job = run.metrics(out)["jobs"][0]
    assert job["status"] == "TIMED_OUT" and job["error_kind"] == "timed_out"
    assert "cancel: CANCELLED" in job["error"]
    assert ep.job(job["job_id"])["status"] == "CANCELLED"


def test_expired_job_is_reported_as_expired(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", faults="stuck=1.0", seed=1)
    src = tmp_path / "in"
    make_images(src, 1)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--ttl", "1", "--max-queue-time", "60", "--poll", "status"),
              env=endpoint_env(ep))
    assert run.code == 1
    job = run.metrics(out)["jobs"][0]
    assert job["error_kind"] == "expired" and "404" in job["error"]


def test_dry_run_sends_nothing(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 3)
    run = rpq(*batch_args(src, tmp_path / "out", "--dry-run"), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    plan = json.loads(run.stdout)
    assert [i["file"] for i in plan["images"]] == ["img_000.png", "img_001.png", "img_002.png"]
    assert "<base64" in json.dumps(plan["request_example"])
    assert ep.calls()["run"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "gif"], "--format"),
        (["--rate", "fast"], "--rate"),
        (["--poll", "often"], "--poll"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, make_endpoint, args: list[str], message: str) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq(*batch_args(src, tmp_path / "out", *args), env=endpoint_env(ep))
    assert run.code == 2
    assert message in run.stderr and run.stderr.startswith("error: ")


def test_missing_folder_and_insecure_url(tmp_path: Path) -> None:
    run = rpq("batch", tmp_path / "nope")
    assert run.code == 2 and "not a folder" in run.stderr
    (tmp_path / "in").mkdir()
    run = rpq("batch", tmp_path / "in", env={"RUNPOD_ENDPOINT_BASE_URL": "http://example.com/v2",
                                             "RUNPOD_ENDPOINT_ID": "abc"})
    assert run.code == 2 and "http://" in run.stderr


def test_endpoint_problems_exit_3(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", api_key="right-key-123")
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq(*batch_args(src, tmp_path / "o1"), env=endpoint_env(ep, key="wrong-key-456"))
    assert run.code == 3 and "401" in run.stderr
    assert "wrong-key-456" not in run.stderr + run.stdout
    env = endpoint_env(ep, key="right-key-123") | {"RUNPOD_ENDPOINT_ID": "other"}
    run = rpq(*batch_args(src, tmp_path / "o2"), env=env)
    assert run.code == 3 and "not found" in run.stderr
    url = ep.base_url
    ep.stop()
    run = rpq(*batch_args(src, tmp_path / "o3"),
              env={"RUNPOD_ENDPOINT_BASE_URL": url, "RUNPOD_ENDPOINT_ID": "local"})
    assert run.code == 3 and "cannot reach" in run.stderr
    assert ep.calls()["run"] == 0


def test_output_goes_to_folder_out_by_default(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg_bytes(1))
    (src / "a.png").write_bytes(png_bytes(2))
    run = rpq("batch", src, "--no-progress", env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    out = tmp_path / "photos_out"
    # Two inputs with one stem never overwrite each other.
    assert sorted(p.name for p in outputs_of(out)) == ["a.jpg", "a.png"] or \
        len(outputs_of(out)) == 2


def test_adaptive_status_polling_is_economical(tmp_path: Path, make_endpoint) -> None:
    # Without long polls, rpq learns how long jobs take and polls near their expected end.
    ep = make_endpoint(handler="echo", workers_max=4, process_time=1.0)
    src = tmp_path / "in"
    make_images(src, 12)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--poll", "status", "--concurrency", "4"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    calls = ep.calls()
    assert calls.get("status-sync", 0) == 0
    # Polling every 0.25 s to notice results as fast would make about 5 requests per job.
    assert calls["status"] / 12 <= 2.5
