"""Bad answers from the endpoint: each one is reported against its image or job, and the rest
of the batch is unharmed; nothing is written outside the output folder."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from batchkit import RecordingReporter, batch_args, rpq
from endpointkit import (
    DROP,
    FAKE_KEY,
    FakeEndpoint,
    FakeJob,
    Reply,
    Script,
    job_records,
    named_images,
    scripted_batch,
)
from helpers import LoopbackServer, respond
from imaging import decodes, png_bytes
from PIL import Image

from rpq.local import LocalEndpoint
from rpq.pipeline import Batch
from rpq.settings import BatchSettings, EndpointSettings

HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


# --- helpers ----------------------------------------------------------------------------------


def _files_outside(work: Path, out: Path) -> list[Path]:
    return [p for p in work.rglob("*") if not p.is_relative_to(out)]


def _leftover_parts(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.part")]


# --- long polls the endpoint does not hold ----------------------------------------------------


@pytest.mark.timeout(60)
def test_status_sync_answered_at_once_falls_back_to_status_polls(
    tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]
) -> None:
    # An endpoint (or proxy) that answers /status-sync at once instead of holding it: after
    # a few such answers rpq polls /status instead, and the jobs finish.
    def script(op: str, job: FakeJob | None) -> Reply | None:
        if op == "status-sync" and job is not None:
            return Reply(200, {"id": job.id, "status": "IN_QUEUE"})
        if op == "status" and job is not None and job.polls < 5:
            return Reply(200, {"id": job.id, "status": "IN_PROGRESS"})
        return None

    fake = fake_endpoint(script)
    run, _, out = scripted_batch(tmp_path, fake, ["a", "b", "c"])
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert fake.calls["status-sync"] >= 3 and fake.calls["status"] >= 1


def test_answers_with_a_byte_order_mark_or_other_than_utf8_text_are_still_read(
    tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]
) -> None:
    # A proxy that prefixes a UTF-8 BOM to every JSON answer, and a worker error in French:
    # JSON is UTF-8, and a leading BOM is tolerated as it always was. A 502 page in Latin-1
    # is quoted with its odd bytes replaced, not a crash.
    def script(op: str, job: FakeJob | None) -> Reply | None:
        if job is None or op not in ("run", "status", "status-sync"):
            return None
        if job.name == "latin1":
            return Reply(502, "<html><title>Passerelle d\u00e9faillante</title></html>"
                         .encode("latin-1"), "text/html")
        if op == "run":
            return Reply(200, b"\xef\xbb\xbf" + json.dumps(
                {"id": job.id, "status": "IN_QUEUE"}).encode())
        if job.name == "failed":
            return Reply(200, b"\xef\xbb\xbf" + json.dumps(
                {"id": job.id, "status": "FAILED", "error": "d\u00e9j\u00e0 vu \u2713"},
                ensure_ascii=False).encode())
        return Reply(200, b"\xef\xbb\xbf" + json.dumps(
            {"id": job.id, "status": "COMPLETED", "output": {"image": job.input["image"]}}
        ).encode())

    fake = fake_endpoint(script)
    run, _, out = scripted_batch(tmp_path, fake, ["done", "failed", "latin1"],
                                 "--max-retries", "0", "--job-retries", "0")
    assert run.code == 1, run.stderr
    jobs = job_records(out)
    assert jobs["done.png"]["status"] == "COMPLETED" and decodes(out / "done.png")
    assert "d\u00e9j\u00e0 vu \u2713" in jobs["failed.png"]["error"]
    assert jobs["latin1.png"]["status"] != "COMPLETED"
    assert "HTTP 502" in jobs["latin1.png"]["error"]
    assert "Passerelle d\ufffdfaillante" in jobs["latin1.png"]["error"]


# --- output shapes from a worker (a user handler on the local endpoint) ----------------------

SHAPES_WORKER = '''
import base64

BIG = {big!r}
SERVED = {served!r}
_big = None


def handler(job):
    global _big
    name = job["input"]["name"]
    b64 = job["input"]["image"]
    if name.startswith("dotdot"):
        return {{"images": [{{"filename": "../../../escape.png", "type": "base64", "data": b64}}]}}
    if name.startswith("absolute"):
        return {{"images": [{{"filename": "/tmp/abs.png", "type": "base64", "data": b64}}]}}
    if name.startswith("notbase64"):
        return {{"image": "this is %%% not base64 at all"}}
    if name.startswith("b64text"):
        return {{"image": base64.b64encode(b"just some text, not a picture").decode()}}
    if name.startswith("b64magic"):
        return {{"image": base64.b64encode(b"GIF89a" + b"\\0" * 20).decode()}}
    if name.startswith("huge"):
        if _big is None:
            with open(BIG, "rb") as fh:
                _big = base64.b64encode(fh.read()).decode()
        return {{"image": _big}}
    if name.startswith("url-"):
        return {{"image": SERVED + "/" + name[4:]}}
    if name.startswith("fileurl"):
        return {{"image": "file:///etc/passwd"}}
    return {{"image": b64}}
'''


@pytest.fixture
def picture_server(loopback: Callable[..., LoopbackServer]) -> Iterator[str]:
    """Output URLs: /ok, /hang, /trickle, /to-file, /to-ok, /huge, /missing."""
    picture = png_bytes(77)
    release = threading.Event()

    def serve(h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if path == "/ok":
            respond(h, 200, picture)
        elif path == "/hang":  # headers, then nothing
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.flush()
            release.wait(60)
        elif path == "/trickle":  # a byte at a time, each well within the read timeout
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(picture[:8])
            h.wfile.flush()
            while not release.wait(0.2):
                h.wfile.write(b"\0")
                h.wfile.flush()
        elif path in ("/to-file", "/to-ok"):
            location = "file:///etc/passwd" if path == "/to-file" else "/ok"
            respond(h, 302, headers=(("Location", location),))
        elif path == "/huge":  # 12 MB that start like a PNG
            h.send_response(200)
            h.send_header("Content-Length", str(12 << 20))
            h.end_headers()
            h.wfile.write(picture[:8])
            chunk = b"\0" * (1 << 20)
            with contextlib_suppress_broken_pipe():
                for _ in range(12):
                    h.wfile.write(chunk)
        else:
            respond(h, 404, b"not here")

    yield loopback(serve, protocol="HTTP/1.1").url
    release.set()


class contextlib_suppress_broken_pipe:
    """The client may hang up once it has read enough."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, (BrokenPipeError, ConnectionResetError))


def _shapes_endpoint(tmp_path: Path, make_endpoint: Callable[..., LocalEndpoint], served: str,
                     big: Path | None = None) -> LocalEndpoint:
    worker = tmp_path / "worker.py"
    worker.write_text(SHAPES_WORKER.format(big=str(big or ""), served=served))
    # Over RunPod's 20 MB result limit: these tests are about what the client does with it.
    return make_endpoint(handler=f"{worker}:handler", workers_max=4, max_result=100 * 10**6)


def test_bad_outputs_fail_their_image_only(tmp_path: Path, make_endpoint: Callable[..., Any],
                                           picture_server: str) -> None:
    names = ["good-1", "dotdot", "absolute", "notbase64", "b64text", "fileurl",
             "url-to-file", "url-missing", "url-to-ok", "good-2"]
    src, out, template = named_images(tmp_path, names)
    ep = _shapes_endpoint(tmp_path, make_endpoint, picture_server)
    env = {"RUNPOD_ENDPOINT_BASE_URL": ep.base_url, "RUNPOD_ENDPOINT_ID": ep.endpoint_id}
    run = rpq(*batch_args(src, out, "--input-template", template, "--save-json"), env=env)
    assert run.code == 1, run.stderr
    jobs = job_records(out)
    assert sorted(jobs) == sorted(f"{n}.png" for n in names)
    # A worker's file name never decides where rpq writes: outputs are named after inputs.
    for name in ("good-1", "good-2", "dotdot", "absolute", "url-to-ok"):
        assert jobs[f"{name}.png"]["status"] == "COMPLETED", jobs[f"{name}.png"]
        assert decodes(out / f"{name}.png")
    assert (out / "url-to-ok.png").read_bytes() == png_bytes(77)
    expected = {
        "notbase64": "neither base64",
        "b64text": "not an image",
        "fileurl": "only http(s)",
        "url-to-file": "redirects to a URL that is not http(s)",
        "url-missing": "HTTP 404",
    }
    for name, words in expected.items():
        job = jobs[f"{name}.png"]
        assert job["status"] == "FAILED" and job["error_kind"] == "no_output", job
        assert words in job["error"], (name, job["error"])
        assert job["job_id"]
        # One line on stderr names the image and says why.
        assert any(line.startswith("no_output") and f"{name}.png" in line and words in line
                   for line in run.stderr.splitlines()), (name, run.stderr)
    assert _files_outside(tmp_path / "work", out) == []
    assert not (tmp_path / "escape.png").exists() and not Path("/tmp/abs.png").exists()
    assert _leftover_parts(out) == []


def test_output_with_image_magic_that_does_not_decode_is_a_failure(
        tmp_path: Path, make_endpoint: Callable[..., Any]) -> None:
    src, out, template = named_images(tmp_path, ["b64magic", "good"])
    ep = _shapes_endpoint(tmp_path, make_endpoint, "http://127.0.0.1:9")
    env = {"RUNPOD_ENDPOINT_BASE_URL": ep.base_url, "RUNPOD_ENDPOINT_ID": ep.endpoint_id}
    run = rpq(*batch_args(src, out, "--input-template", template), env=env)
    jobs = job_records(out)
    assert jobs["good.png"]["status"] == "COMPLETED"
    assert jobs["b64magic.png"]["status"] == "FAILED", jobs["b64magic.png"]
    assert run.code == 1
    assert all(decodes(p) for p in out.glob("b64magic*"))


@pytest.mark.timeout(60)
def test_url_outputs_are_size_capped_and_time_bounded(
        tmp_path: Path, make_endpoint: Callable[..., Any], picture_server: str) -> None:
    # Through the Python API, to set short download limits (the defaults: 100 MB, 60 s per
    # read, 600 s in all).
    names = ["url-hang", "url-trickle", "url-huge", "url-ok", "good"]
    src, out, template = named_images(tmp_path, names)
    ep = _shapes_endpoint(tmp_path, make_endpoint, picture_server)
    settings = BatchSettings(
        root=src, out=out, template=template, download_max_mb=10,
        endpoint=EndpointSettings(endpoint_id=ep.endpoint_id, base_url=ep.base_url))
    reporter = RecordingReporter()
    batch = Batch(settings, reporter)
    batch.writer.download_timeout = 1.0
    batch.writer.download_deadline = 3.0
    batch.check_endpoint()
    result = batch.run()
    records = {r.input: r for r in result.records}
    assert sorted(records) == sorted(f"{n}.png" for n in names)
    assert records["good.png"].status == records["url-ok.png"].status == "COMPLETED"
    assert (out / "url-ok.png").read_bytes() == png_bytes(77)
    expected = {
        "url-hang": "ReadTimeout",
        "url-trickle": "took longer than 3 s",
        "url-huge": "exceeds 10 MB",
    }
    for name, words in expected.items():
        record = records[f"{name}.png"]
        assert record.status == "FAILED" and record.error_kind == "no_output", record
        assert record.error and words in record.error, (name, record.error)
        assert record.job_id
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "good.png", "job_metrics.json", "url-ok.png"]
    assert _files_outside(tmp_path / "work", out) == []


def test_a_50_mb_output_is_saved_whole(tmp_path: Path, make_endpoint: Callable[..., Any]) -> None:
    big = tmp_path / "big.bmp"
    pixels = random.Random(50).randbytes(4096 * 4096 * 3)
    Image.frombytes("RGB", (4096, 4096), pixels).save(big, "BMP")
    assert big.stat().st_size > 50 * 10**6
    src, out, template = named_images(tmp_path, ["huge", "good-1", "good-2"])
    ep = _shapes_endpoint(tmp_path, make_endpoint, "http://127.0.0.1:9", big=big)
    env = {"RUNPOD_ENDPOINT_BASE_URL": ep.base_url, "RUNPOD_ENDPOINT_ID": ep.endpoint_id}
    run = rpq(*batch_args(src, out, "--input-template", template), env=env)
    assert run.code == 0, run.stderr
    assert (out / "huge.bmp").read_bytes() == big.read_bytes()
    assert decodes(out / "huge.bmp") and decodes(out / "good-1.png")
    assert _leftover_parts(out) == []


# --- garbage from the queue API itself --------------------------------------------------------


def _garbage(op: str, job: FakeJob | None) -> Reply | str | None:
    """The answer each image's jobs get, chosen by the image's name."""
    name = job.name if job is not None else ""
    if op == "run":
        if name == "run-notjson":
            return Reply(200, "this is not json", "text/plain")
        if name == "run-html502":
            return Reply(502, HTML_502, "text/html")
        if name == "run-noid":
            return Reply(200, {"status": "IN_QUEUE"})
        return None
    if op not in ("status", "status-sync") or job is None or job.cancelled:
        return None
    if name == "st-notjson":
        return Reply(200, "{not json", "text/plain")
    if name == "st-glitch" and job.polls == 1:
        return Reply(200, "<html><body>upstream hiccup</body></html>", "text/html")
    if name == "st-html502":
        return Reply(502, HTML_502, "text/html")
    if name == "st-nostatus":
        return Reply(200, {"id": job.id, "output": None})
    if name == "st-weird":
        return Reply(200, {"id": job.id, "status": "DONE"})
    if name == "st-nooutput":
        return Reply(200, {"id": job.id, "status": "COMPLETED"})
    if name == "st-list":
        return Reply(200, [{"id": job.id, "status": "COMPLETED"}])
    if name == "st-drop":
        return DROP
    return None


@pytest.mark.timeout(90)
def test_garbage_from_the_queue_api_fails_only_its_image(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    names = ["good-1", "run-notjson", "run-html502", "run-noid", "st-notjson", "st-glitch",
             "st-html502", "st-nostatus", "st-weird", "st-nooutput", "st-list", "st-drop",
             "good-2"]
    fake = fake_endpoint(_garbage)
    run, _, out = scripted_batch(tmp_path, fake, names, "--max-retries", "2",
                                 "--max-queue-time", "3", "--job-retries", "0", "--max-wait", "30")
    assert run.code == 1, run.stderr
    jobs = job_records(out)
    assert sorted(jobs) == sorted(f"{n}.png" for n in names)
    for name in ("good-1", "good-2", "st-glitch"):  # a single unreadable answer is a glitch
        assert jobs[f"{name}.png"]["status"] == "COMPLETED", jobs[f"{name}.png"]
        assert decodes(out / f"{name}.png")
    # What each job's record says; the same words are on the image's stderr line.
    expected = {
        "run-notjson": ["without a job id", "this is not json"],
        "run-html502": ["HTTP 502", "an HTML page: 502 Bad Gateway"],
        "run-noid": ["without a job id"],
        "st-notjson": ["has no status", "{not json"],
        "st-html502": ["HTTP 502", "an HTML page: 502 Bad Gateway"],
        "st-nostatus": ["has no status"],
        "st-weird": ["'DONE'", "not a RunPod job status"],
        "st-nooutput": ["output is empty"],
        "st-list": ["has no status"],
        "st-drop": ["RemoteDisconnected"],
    }
    lines = run.stderr.splitlines()
    for name, words in expected.items():
        job = jobs[f"{name}.png"]
        assert job["status"] != "COMPLETED", job
        for word in words:
            assert word in job["error"], (name, word, job["error"])
            assert any(f"{name}.png" in line and word in line for line in lines), (name, word)
        assert "<html" not in job["error"].lower() and "4xx" not in job["error"]
        if name.startswith("st-"):
            assert job["job_id"]  # the job is named, and was cancelled, not left behind
            assert fake.jobs[job["job_id"]].cancelled or job["status"] == "FAILED"
    # Every job the endpoint took ended (completed, or cancelled by rpq).
    for job in fake.jobs.values():
        if job.name.startswith("st-") and job.name not in ("st-glitch", "st-nooutput"):
            assert job.cancelled, job
    assert _files_outside(tmp_path / "work", out) == []
    assert sorted(p.name for p in out.glob("*.png")) == ["good-1.png", "good-2.png",
                                                         "st-glitch.png"]
    assert FAKE_KEY not in run.stdout + run.stderr
    assert all(FAKE_KEY.encode() not in p.read_bytes() for p in out.rglob("*") if p.is_file())


def _ran_meanwhile(polled: Callable[[FakeJob], Reply]) -> Script:
    """Polls answer `polled(job)` until rpq cancels the job; /cancel then says it COMPLETED
    (it ran meanwhile), and from then on the job's result is there to fetch."""
    cancelled: set[str] = set()

    def script(op: str, job: FakeJob | None) -> Reply | None:
        if job is None:
            return None
        if op == "cancel":
            cancelled.add(job.id)
            return Reply(200, {"id": job.id, "status": "COMPLETED"})
        if op in ("status", "status-sync") and job.id not in cancelled:
            return polled(job)
        return None

    return script


@pytest.mark.timeout(60)
def test_a_stalled_job_that_finished_meanwhile_is_collected_not_sent_again(
        tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]) -> None:
    # Every poll fails, so rpq believes the job still queued and cancels it as stalled; but it
    # ran meanwhile, and /cancel says COMPLETED. Its result is collected; nothing is resent.
    fake = fake_endpoint(_ran_meanwhile(lambda job: Reply(500, {"error": "upstream timeout"})))
    run, src, out = scripted_batch(tmp_path, fake, ["raced"], "--max-queue-time", "1")
    assert run.code == 0, run.stderr
    assert fake.calls["run"] == 1
    assert (out / "raced.png").read_bytes() == (src / "raced.png").read_bytes()
    job = job_records(out)["raced.png"]
    assert job["status"] == "COMPLETED" and job["attempts"] == 1


@pytest.mark.timeout(60)
def test_a_job_that_ended_while_judged_stalled_is_collected_not_lost(
    tmp_path: Path, fake_endpoint: Callable[[Script], FakeEndpoint]
) -> None:
    # Every poll says IN_QUEUE, so rpq gives up on the job; but the job had in fact run, and
    # /cancel says so. Its result is fetched and saved; nothing is sent again.
    queued = _ran_meanwhile(lambda job: Reply(200, {"id": job.id, "status": "IN_QUEUE"}))
    fake = fake_endpoint(queued)
    run, src, out = scripted_batch(tmp_path, fake, ["a"], "--max-queue-time", "1",
                                   "--job-retries", "0")
    assert run.code == 0, run.stderr
    assert (out / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert fake.calls["run"] == 1 and fake.calls["cancel"] == 1
    assert job_records(out)["a.png"]["status"] == "COMPLETED"
