"""Trust boundaries beyond tests/test_secrets.py: plain http only to loopback, downloads only
over http(s), nothing written outside OUT, the API key in no log at any level and on no
failing path, and `rpq serve` guarded (loopback without a key, keys compared in constant
time). Size caps and time bounds of downloads: tests/test_bad_endpoint.py."""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from batchkit import batch_args, endpoint_env, rpq
from helpers import LoopbackServer, respond, wait_for
from imaging import make_images, png_bytes
from typer.testing import CliRunner
from urllib3.util import parse_url

from rpq.api import RunPodClient
from rpq.cli import app
from rpq.errors import APIError, UsageError
from rpq.extract import OutputError
from rpq.hosts import is_loopback
from rpq.local import LocalEndpoint
from rpq.settings import check_base_url
from rpq.write import ResultWriter

KEY = "rpq_TRUSTKEY_0a1b2c3d4e5f"


# --- plain http only to loopback --------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://10.0.0.5/v2", "http://api.runpod.ai/v2", "http://127.0.0.1.evil.example/v2",
    "http://localhost.evil.example/v2", "http://127.0.0.1@evil.example/v2",
    "http://evil.example#@127.0.0.1/v2", "http://0x7f000001/v2", "http://[::ffff:10.0.0.1]/v2",
    "http://0.0.0.0:8000/v2", "ftp://127.0.0.1/v2", "file:///etc/passwd", "127.0.0.1:8000/v2",
])
def test_plain_http_is_refused_for_anything_but_loopback(url: str) -> None:
    with pytest.raises(UsageError):
        check_base_url(url)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/v2", "http://localhost:8000/v2", "http://[::1]:8000/v2",
    "http://127.5.6.7/v2", "https://api.runpod.ai/v2", "https://10.0.0.5/v2",
])
def test_accepted_urls_connect_where_they_say(url: str) -> None:
    accepted = check_base_url(url)
    host = parse_url(accepted).host or ""  # what requests (urllib3) will connect to
    assert accepted.startswith("https://") or is_loopback(host.strip("[]"))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("LocalHost", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("localhost.localdomain", False), ("app.localhost", False),
    ("localhost.", False), ("0.0.0.0", False), ("::", False), ("::ffff:10.0.0.1", False),
    ("10.1.2.3", False),
])
def test_one_loopback_rule_for_plain_http_and_a_keyless_serve(host: str, loopback: bool) -> None:
    url = f"http://[{host}]:8000/v2" if ":" in host else f"http://{host}:8000/v2"
    if loopback:
        check_base_url(url)
        LocalEndpoint(host=host)  # constructing does not bind
    else:
        with pytest.raises(UsageError, match="refusing plain http"):
            check_base_url(url)
        with pytest.raises(ValueError, match="API key"):
            LocalEndpoint(host=host)


def test_a_fallback_endpoint_url_over_plain_http_is_refused(tmp_path: Path,
                                                            make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq(*batch_args(src, tmp_path / "out", "--fallback-endpoint",
                          "http://10.0.0.5:8000/v2/other"), env=endpoint_env(ep, key=KEY))
    assert run.code == 2 and "refusing plain http://" in run.stderr
    assert ep.calls()["run"] == 0


# --- downloads and writes ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png",
                                 "gopher://127.0.0.1/x", "s3://bucket/x.png", "/etc/passwd",
                                 "data:image/png;base64,AAAA"])
def test_download_takes_only_http_urls(url: str) -> None:
    client = RunPodClient("http://127.0.0.1:9/v2", "ep", KEY)
    try:
        with pytest.raises(APIError, match="only http"):
            client.download(url, max_bytes=1 << 20, timeout=1.0, deadline=2.0)
    finally:
        client.close()


def test_downloads_never_carry_the_api_key(tmp_path: Path, make_endpoint: Any,
                                          loopback: Callable[..., LoopbackServer]) -> None:
    seen: list[dict[str, str]] = []
    picture = png_bytes(5)

    def serve(h: BaseHTTPRequestHandler) -> None:
        seen.append(dict(h.headers))
        respond(h, 200, picture)

    server = loopback(serve)
    worker = tmp_path / "w.py"
    worker.write_text(f"def handler(job):\n    return {{'image': '{server.url}/a.png'}}\n")
    ep = make_endpoint(handler=f"{worker}:handler", api_key=KEY)
    src = tmp_path / "in"
    make_images(src, 2)
    run = rpq(*batch_args(src, tmp_path / "out"), env=endpoint_env(ep, key=KEY))
    assert run.code == 0, run.stderr
    assert len(seen) == 2
    assert all(KEY not in json.dumps(headers) for headers in seen)
    assert all("Authorization" not in headers for headers in seen)


def test_nothing_is_written_through_a_symlink_out_of_out(tmp_path: Path,
                                                         make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 1, sub="sub")
    make_images(src, 1, start=5)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)  # planted in OUT: outputs for sub/ would leave it
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 1
    jobs = {j["input"]: j for j in json.loads((out / "job_metrics.json").read_text())["jobs"]}
    assert jobs["img_005.png"]["status"] == "COMPLETED"
    assert "outside" in jobs["sub/img_000.png"]["error"]
    assert list(elsewhere.iterdir()) == []


def test_writer_refuses_names_that_leave_out(tmp_path: Path) -> None:
    writer = ResultWriter(tmp_path / "out", None)
    with pytest.raises(OutputError, match="outside"):
        writer._put("../escape.png", b"x")
    with pytest.raises(OutputError, match="outside"):
        writer._put("/tmp/abs.png", b"x")
    assert not (tmp_path / "escape.png").exists()


# --- the key on failing paths and in logs at every level --------------------------------------


def test_key_in_no_log_record_and_no_file_on_failing_paths(
        tmp_path: Path, make_endpoint: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Every logger at DEBUG (urllib3 included) while a batch retries 500s and dropped
    # connections, fails jobs, cancels stuck ones and meets a wrong key.
    for name in (None, "urllib3", "requests", "rpq"):  # importing runpod quiets urllib3
        caplog.set_level(logging.DEBUG, logger=name)
    ep = make_endpoint(handler="echo", api_key=KEY, faults="500=0.2,drop=0.1,fail=0.2,stuck=0.2",
                       seed=3, workers_max=2)
    src = tmp_path / "in"
    make_images(src, 10)
    (src / "bad.png").write_text("not an image")
    out = tmp_path / "out"
    env = endpoint_env(ep, key=KEY)
    texts = []
    for args in (batch_args(src, out, "--max-queue-time", "1", "--max-retries", "6",
                            "--save-json", "--json"),
                 batch_args(src, out, "--retry-failed", "--max-queue-time", "1"),
                 ["cancel", "--journal", out], ["health", "--json"]):
        run = rpq(*args, env=env)
        texts += [run.stdout, run.stderr]
    wrong = rpq(*batch_args(src, tmp_path / "o2"), env=endpoint_env(ep, key=KEY[:-1] + "X"))
    assert wrong.code == 3
    texts += [wrong.stdout, wrong.stderr]
    records = [r.getMessage() + " " + str(r.args) for r in caplog.records]
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # DEBUG really on
    assert KEY not in "\n".join(texts + records)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_serve_logs_no_key(make_endpoint: Any, capfd: pytest.CaptureFixture[str]) -> None:
    ep = make_endpoint(handler="echo", api_key=KEY, log_requests=True)
    # The server's threads write each access line to sys.stderr once the response has gone
    # out: they are collected here and waited for. What else reached the process's own output
    # is read once, at the end: reading it while a thread writes to it can lose the line.
    lines = io.StringIO()
    with contextlib.redirect_stderr(lines):
        for key in (KEY, "wrong"):
            r = requests.get(f"{ep.url}/health", headers={"Authorization": f"Bearer {key}"},
                             timeout=5)
            assert KEY not in r.text
        wait_for(lambda: all(f"/health {code}" in lines.getvalue() for code in (200, 401)),
                 message="both access lines on stderr")
    captured = capfd.readouterr()
    assert KEY not in lines.getvalue() + captured.out + captured.err


# --- rpq serve --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "localhost.example"])
def test_serve_refuses_a_non_loopback_bind_without_a_key(host: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--host", host])
    assert result.exit_code == 2, result.output
    assert "--api-key" in result.stderr


def test_serve_compares_keys_in_constant_time(make_endpoint: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    ep = make_endpoint(handler="echo", api_key=KEY)
    answers = {}
    for sent in (KEY, KEY[:-1], KEY + "x", "x" * len(KEY), "ünïcode-kéy"):
        r = requests.get(f"{ep.url}/health", headers={"Authorization": f"Bearer {sent}"},
                         timeout=5)
        answers[sent] = r.status_code
    assert answers[KEY] == 200
    assert [code for sent, code in answers.items() if sent != KEY] == [401] * 4
    assert len(compared) == 5  # every check went through hmac.compare_digest
    assert all(b == KEY.encode() for _, b in compared)


def test_local_endpoint_keys_must_be_real() -> None:
    with pytest.raises(ValueError, match="empty"):
        LocalEndpoint(api_key="")
    with pytest.raises(ValueError, match="API key"):
        LocalEndpoint(host="::")
