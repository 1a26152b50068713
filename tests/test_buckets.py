"""`rpq batch s3://...` and `--out s3://...` against a real S3 API server on 127.0.0.1 (moto's,
in its own process) and the local endpoint: no mock of boto3 or of requests."""

from __future__ import annotations

import base64
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
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
from imaging import make_images, png_bytes
from s3kit import S3Server, s3_server

from rpq.journal import JOURNAL_NAME, Journal
from rpq.shard import shard_of
from rpq.storage import state_dir


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A bucket name of its own for each test (the server is shared by the module)."""
    return "rpq-" + request.node.name.lower().replace("_", "-")[:40].strip("-")


def images(n: int, sub: str = "") -> dict[str, bytes]:
    return {f"{sub}img_{i:03d}.png": png_bytes(i) for i in range(n)}


def env(s3: S3Server, ep: Any, **extra: str) -> dict[str, str]:
    return {**endpoint_env(ep), **s3.env, **extra}


def outputs(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.endswith("job_metrics.json")}


def test_bucket_in_folder_out(s3: S3Server, bucket_name: str, tmp_path: Path,
                              make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    files = images(4, "photos/") | images(2, "photos/deeper/") | {"other/x.png": png_bytes(99)}
    s3.bucket(bucket_name, files)
    out = tmp_path / "out"
    run = rpq("batch", f"s3://{bucket_name}/photos", "--out", out, "--no-progress",
              env=env(s3, ep))
    assert run.code == 0, run.stderr
    for key, data in files.items():
        if key.startswith("photos/"):
            assert (out / key.removeprefix("photos/")).read_bytes() == data
    assert not (out / "other").exists()
    metrics = run.metrics(out)
    assert metrics["stats"]["completed"] == 6
    assert metrics["run"]["settings"]["root"] == f"s3://{bucket_name}/photos/"


def test_folder_in_bucket_out_then_rerun_sends_nothing(
        s3: S3Server, bucket_name: str, tmp_path: Path, make_endpoint: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    ep = make_endpoint(handler="echo", workers_max=2)
    s3.bucket(bucket_name)
    src = tmp_path / "in"
    made = make_images(src, 5) + make_images(src, 1, start=10, sub="nested")
    args = ("batch", src, "--out", f"s3://{bucket_name}/results/", "--no-progress")
    run = rpq(*args, env=env(s3, ep))
    assert run.code == 0, run.stderr
    stored = s3.objects(bucket_name)
    expected = {f"results/{p.relative_to(src).as_posix()}": p.read_bytes() for p in made}
    assert outputs(stored) == expected
    metrics = json.loads(stored["results/job_metrics.json"])
    assert metrics["stats"]["completed"] == 6
    assert metrics["run"]["settings"]["out"] == f"s3://{bucket_name}/results/"
    assert f"metrics in s3://{bucket_name}/results/job_metrics.json" in run.stderr
    assert f"results in s3://{bucket_name}/results/" in run.stderr
    # The journal lives on this machine, where the README says.
    journal = Path(metrics["run"]["settings"]["journal_dir"])
    assert journal == state_dir(f"s3://{bucket_name}/results/")
    assert journal.is_relative_to(Path.home() / ".cache" / "rpq" / "buckets")
    assert (journal / JOURNAL_NAME).is_file()
    assert f"journal in {journal}" in run.stderr
    rerun = rpq(*args, env=env(s3, ep))
    assert rerun.code == 0, rerun.stderr
    assert ep.calls()["run"] == 6  # everything was found done, in the bucket
    assert "6 image(s) were already handled" in rerun.stderr


def test_bucket_to_bucket_by_url_sends_no_image_bytes(s3: S3Server, bucket_name: str,
                                                      tmp_path: Path, make_endpoint: Any) -> None:
    fetched: list[str] = []

    def fetch_by_url(job: dict[str, Any]) -> dict[str, Any]:
        # What a worker does with {{image_url}}: fetch the object itself, no credentials.
        url = job["input"]["image_url"]
        fetched.append(url)
        data = requests.get(url, timeout=10).content
        return {"image": base64.b64encode(data).decode()}

    ep = make_endpoint(handler=fetch_by_url, workers_max=2)
    files = images(6, "in/")
    s3.bucket(bucket_name, files)
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image_url": "{{image_url}}", "name": "{{rel}}"}}))
    run = rpq("batch", f"s3://{bucket_name}/in/", "--out", f"s3://{bucket_name}/out/",
              "--input-template", template, "--url-expiry", "300", "--no-progress",
              env=env(s3, ep))
    assert run.code == 0, run.stderr
    stored = s3.objects(bucket_name, "out/")
    assert outputs(stored) == {k.replace("in/", "out/", 1): v for k, v in files.items()}
    assert len(fetched) == 6 and all("Expires=" in u or "X-Amz-Expires=300" in u for u in fetched)
    for job in ep.jobs():  # each request carried a URL and a name, never the image
        assert len(json.dumps(job["input"])) < 1500
        assert set(job["input"]) == {"image_url", "name"}
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in run.stderr + json.dumps(ep.jobs())


def test_image_url_with_a_local_folder_says_why_not(tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    src = tmp_path / "in"
    make_images(src, 1)
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image_url": "{{image_url}}"}}))
    run = rpq("batch", src, "--out", tmp_path / "out", "--input-template", template,
              "--no-progress", env=endpoint_env(ep))
    assert run.code == 2
    assert "{{image_url}} needs the images in a bucket" in run.stderr
    assert "local file has no URL" in run.stderr


def test_shards_of_a_bucket_send_every_object_once(s3: S3Server, bucket_name: str,
                                                   tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    files = images(15, "p/")
    s3.bucket(bucket_name, files)
    seen: list[str] = []
    for i in (1, 2, 3):
        out = tmp_path / f"out{i}"
        run = rpq("batch", f"s3://{bucket_name}/p", "--out", out, "--shard", f"{i}/3",
                  "--no-progress", env=env(s3, ep))
        assert run.code == 0, run.stderr
        mine = [j["input"] for j in run.metrics(out)["jobs"]]
        assert all(shard_of(rel, 3) == i for rel in mine)
        seen += mine
    assert sorted(seen) == sorted(k.removeprefix("p/") for k in files)
    assert ep.calls()["run"] == 15


def test_sigkill_then_rerun_against_a_bucket_output(s3: S3Server, bucket_name: str,
                                                    tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=2, process_time=0.25)
    s3.bucket(bucket_name)
    src = tmp_path / "in"
    made = make_images(src, 12)
    journal_dir = tmp_path / "journal"
    args = ("batch", src, "--out", f"s3://{bucket_name}/r", "--journal-dir", journal_dir,
            "--no-progress", "--concurrency", "4")
    proc = rpq_process(*args, env=env(s3, ep))
    kill_when(proc, lambda: sum(j["status"] == "COMPLETED" for j in ep.jobs()) >= 3, 30)
    assert proc.returncode == -signal.SIGKILL
    journal = Journal(journal_dir / JOURNAL_NAME)
    orphans = len(journal.orphans())
    assert journal.in_flight(), "the kill should leave jobs the endpoint has"
    # Whatever is in the bucket is whole: an object appears complete or not at all.
    for key, data in s3.objects(bucket_name).items():
        assert data == (src / key.removeprefix("r/")).read_bytes()

    run = rpq(*args, env=env(s3, ep))
    assert run.code == 0, run.stderr
    stored = outputs(s3.objects(bucket_name))
    assert stored == {f"r/{p.name}": p.read_bytes() for p in made}
    per_image = Counter(j["input"]["image"] for j in ep.jobs())
    assert len(per_image) == 12 and sum(n - 1 for n in per_image.values()) <= orphans


@pytest.mark.parametrize("where", ["in", "out"])
def test_a_missing_bucket_is_one_line_and_exit_3(s3: S3Server, tmp_path: Path,
                                                 make_endpoint: Any, where: str) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    src = tmp_path / "in"
    make_images(src, 1)
    args = (["batch", "s3://no-such-bucket/x", "--out", tmp_path / "out"] if where == "in"
            else ["batch", src, "--out", "s3://no-such-bucket/x"])
    run = rpq(*args, "--no-progress", env=env(s3, ep))
    assert run.code == 3
    assert run.stderr.count("\n") == 1 and "'no-such-bucket' does not exist" in run.stderr
    assert ep.calls().get("run", 0) == 0


def test_refused_credentials_are_one_line_and_exit_3(tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    with s3_server(auth=True) as strict:
        run = rpq("batch", "s3://rpq-in/x", "--out", tmp_path / "out", "--no-progress",
                  env=env(strict, ep))
    assert run.code == 3
    assert run.stderr.count("\n") == 1 and "refused the credentials" in run.stderr
    assert strict.env["AWS_SECRET_ACCESS_KEY"] not in run.stderr


def test_an_unreachable_endpoint_is_one_line_and_exit_3(tmp_path: Path,
                                                        make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq("batch", src, "--out", "s3://rpq-out/x", "--no-progress",
              env={**endpoint_env(ep), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                   "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"})
    assert run.code == 3
    assert run.stderr.count("\n") == 1 and "cannot reach the S3 endpoint" in run.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["batch", "s3://rpq-in/x"], "an s3:// input needs --out"),
    (["batch", "s3://rpq-in/x", "--files-from", "l.txt", "--out", "o"], "--files-from lists"),
    (["batch", "s3://A_B", "--out", "o"], "s3://BUCKET/PREFIX"),
])
def test_bucket_usage_errors_exit_2(args: list[str], message: str) -> None:
    run = rpq(*args)
    assert run.code == 2
    assert message in run.stderr


def test_ctrl_c_then_rerun_against_a_bucket_output(s3: S3Server, bucket_name: str,
                                                   tmp_path: Path, make_endpoint: Any) -> None:
    gate = Gate(timeout=30)
    ep = make_endpoint(handler=gate.echo, workers_max=1)
    s3.bucket(bucket_name)
    src = tmp_path / "in"
    made = make_images(src, 4)
    template = gated_template(tmp_path)
    journal_dir = tmp_path / "journal"
    args = ("batch", src, "--out", f"s3://{bucket_name}/r/", "--journal-dir", journal_dir,
            "--no-progress", "--input-template", template)
    proc = rpq_process(*args, env=env(s3, ep))
    try:
        wait_for(lambda: gate.started and in_flight(journal_dir) == 4, timeout=20)
        stderr = interrupt(proc, ep, gate, cancelled=3)  # stop submitting, cancel the queued ones
    finally:
        gate.open_all()
        stop(proc)
    assert proc.returncode == 130, stderr
    assert f"rpq cancel --journal {journal_dir}" in stderr
    assert len(outputs(s3.objects(bucket_name))) == 1  # the running job finished and was saved
    rerun = rpq(*args, env=env(s3, ep))
    assert rerun.code == 0, rerun.stderr
    assert outputs(s3.objects(bucket_name)) == {f"r/{p.name}": p.read_bytes() for p in made}
    assert Counter(j["status"] for j in ep.jobs()) == {"CANCELLED": 3, "COMPLETED": 4}
