"""Something that is not RunPod's API where the API should be, a refused key, an unknown
endpoint and Retry-After dates: each command says what is wrong and exits as the README says."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images

from rpq.api import RunPodClient
from rpq.limiter import Limiters
from rpq.submit import Caller

# (status, content type, body, extra headers) for one request, from (method, path).
Answer = tuple[int, str, bytes, dict[str, str]]
Script = Callable[[str, str], Answer]

HTML = b"<!doctype html><html><head><title>Welcome to nginx!</title></head><body>hi</body></html>"


def page(status: int = 200) -> Answer:
    return status, "text/html", HTML, {}


def as_json(status: int, body: object, **headers: str) -> Answer:
    return status, "application/json", json.dumps(body).encode(), headers


class Site:
    """A loopback web server that answers every request from a script, and notes each one."""

    def __init__(self, script: Script) -> None:
        self.seen: list[tuple[str, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                site.seen.append((self.command, self.path))
                status, kind, body, headers = script(self.command, self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def env(self, key: str = "rpq_FAKE_key_77") -> dict[str, str]:
        return {"RUNPOD_ENDPOINT_BASE_URL": self.base_url, "RUNPOD_ENDPOINT_ID": "ep",
                "RUNPOD_API_KEY": key}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Callable[[Script], Site]]:
    made: list[Site] = []

    def make(script: Script) -> Site:
        made.append(Site(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _says_not_runpod(stderr: str, site: Site) -> None:
    assert f"not a RunPod API at {site.base_url}" in stderr, stderr
    assert "--base-url" in stderr and "<html" not in stderr.lower()
    assert "rpq_FAKE_key_77" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, no traceback


# --- an HTML page answering 200 or 404 -------------------------------------------------------


@pytest.mark.parametrize("status", [200, 404])
def test_health_on_a_web_page_is_not_a_runpod_api(site, status: int) -> None:
    web = site(lambda method, path: page(status))
    run = rpq("health", env=web.env())
    assert run.code == 3, (run.stdout, run.stderr)
    _says_not_runpod(run.stderr, web)
    assert f"HTTP {status}" in run.stderr and "Welcome to nginx!" in run.stderr
    assert "not found" not in run.stderr and "healthy" not in run.stdout
    run = rpq("health", "--json", env=web.env())
    assert run.code == 3 and run.stdout == ""


def test_plain_text_or_an_empty_200_is_not_a_runpod_api(site) -> None:
    web = site(lambda method, path: (200, "text/plain", b"OK" if "health" in path else b"", {}))
    run = rpq("health", env=web.env())
    assert run.code == 3 and "text: OK" in run.stderr, run.stderr
    _says_not_runpod(run.stderr, web)
    run = rpq("purge", "--yes", env=web.env())
    assert run.code == 3, run.stderr
    _says_not_runpod(run.stderr, web)


def test_batch_stops_before_any_image_when_the_api_is_a_web_page(
        site, tmp_path: Path) -> None:
    web = site(lambda method, path: page(200))
    src = tmp_path / "in"
    make_images(src, 3)
    run = rpq(*batch_args(src, tmp_path / "out"), env=web.env())
    assert run.code == 3, run.stderr
    _says_not_runpod(run.stderr, web)
    assert web.seen == [("GET", "/v2/ep/health")]  # nothing read, nothing sent
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("status", [200, 404])
def test_cancel_and_purge_on_a_web_page_exit_3(site, tmp_path: Path, status: int) -> None:
    web = site(lambda method, path: page(status))
    for args in (["cancel", "job-1"], ["purge", "--yes"]):
        run = rpq(*args, env=web.env())
        assert run.code == 3, (args, run.stdout, run.stderr)
        _says_not_runpod(run.stderr, web)
        assert run.stdout == ""


def test_a_web_page_answering_only_cancel_is_not_a_runpod_api(site) -> None:
    # /health is RunPod's, /cancel a proxy's page: still not something rpq can talk to.
    def script(method: str, path: str) -> Answer:
        return as_json(200, {"workers": {"idle": 1}}) if path.endswith("/health") else page()

    web = site(script)
    run = rpq("cancel", "job-1", "job-2", env=web.env())
    assert run.code == 3, run.stderr
    assert "not a RunPod API" in run.stderr and "/cancel/job-1" in run.stderr


# --- rpq cancel and rpq purge: unknown endpoint, refused key ----------------------------------


def test_cancel_and_purge_exit_3_on_an_unknown_endpoint(make_endpoint) -> None:
    ep = make_endpoint(handler="echo")
    env = {**endpoint_env(ep), "RUNPOD_ENDPOINT_ID": "no-such-endpoint"}
    for args in (["cancel", "job-1"], ["purge", "--yes"]):
        run = rpq(*args, env=env)
        assert run.code == 3, (args, run.stdout, run.stderr)
        assert "endpoint 'no-such-endpoint' not found" in run.stderr


def test_cancel_and_purge_exit_3_on_a_refused_key(make_endpoint) -> None:
    ep = make_endpoint(handler="echo", api_key="k-right-1")
    env = endpoint_env(ep, key="k-wrong-2")
    for args in (["cancel", "job-1"], ["purge", "--yes"]):
        run = rpq(*args, env=env)
        assert run.code == 3, (args, run.stdout, run.stderr)
        assert "refused the API key" in run.stderr
        assert "k-wrong-2" not in run.stdout + run.stderr


def test_a_key_refused_for_cancel_only_exits_3(site) -> None:
    # A read-only key: /health answers, /cancel and /purge-queue say 401.
    def script(method: str, path: str) -> Answer:
        if path.endswith("/health"):
            return as_json(200, {"workers": {"idle": 1}, "jobs": {}})
        return as_json(401, {"error": "Unauthorized"})

    web = site(script)
    for args in (["cancel", "job-1"], ["purge", "--yes"]):
        run = rpq(*args, env=web.env())
        assert run.code == 3, (args, run.stdout, run.stderr)
        assert "refused the API key" in run.stderr and "read-only" in run.stderr


# --- Retry-After as an HTTP date --------------------------------------------------------------


def test_retry_after_given_as_an_http_date_is_honoured(site) -> None:
    answers = iter([
        as_json(429, {"error": "slow down"}, **{"Retry-After": formatdate(time.time() + 30,
                                                                          usegmt=True)}),
        as_json(200, {"id": "job-1", "status": "IN_QUEUE"}),
    ])
    web = site(lambda method, path: next(answers))
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with RunPodClient(web.base_url, "ep", "key") as client:
        caller = Caller(client, Limiters(clock=lambda: now[0], sleep=sleep), sleep=sleep)
        assert caller.submit(b"{}")["id"] == "job-1"
    assert [m for m, _ in web.seen] == ["POST", "POST"]
    # The date said 30 s from when it was sent (whole seconds), not the 0.5-1 s backoff.
    assert len(slept) == 1 and 25.0 <= slept[0] <= 30.0, slept


# --- no API key at all ------------------------------------------------------------------------


def test_no_key_at_all_says_none_is_set_and_where_rpq_looks(make_endpoint, tmp_path: Path
                                                            ) -> None:
    ep = make_endpoint(handler="echo", api_key="k-needed-3")
    src = tmp_path / "in"
    make_images(src, 1)
    for args in (["health"], ["cancel", "job-1"], ["purge", "--yes"],
                 batch_args(src, tmp_path / "out")):
        run = rpq(*args, env=endpoint_env(ep))
        assert run.code == 3, (args, run.stderr)
        assert "no API key is set" in run.stderr and "refused" not in run.stderr, run.stderr
        assert "RUNPOD_API_KEY" in run.stderr and "~/.runpod/config.toml" in run.stderr
    run = rpq("health", env=endpoint_env(ep, key="k-wrong-4"))
    assert run.code == 3 and "refused the API key" in run.stderr
