"""`--files-from` lines that are URLs: http(s) fetched from a loopback server, s3:// read from
moto's S3 server on 127.0.0.1, and with {{image_url}} handed to the worker unread."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from batchkit import batch_args, endpoint_env, rpq
from helpers import LoopbackServer, respond
from imaging import make_images, png_bytes
from s3kit import S3Server

KEY = "rpq-test-secret-key-123"


class ImageHost:
    """Serves /img_N.png (and a 404 for anything else), noting every request's headers."""

    def __init__(self, loopback: Callable[..., LoopbackServer]) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self.server = loopback(self._handle)
        self.url = self.server.url

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((h.path, dict(h.headers.items())))
        name = h.path.lstrip("/").split("?")[0]
        if name.startswith("img_") and name.endswith(".png"):
            respond(h, 200, png_bytes(int(name[4:-4])), content_type="image/png")
        else:
            respond(h, 404, b"no such image", content_type="text/plain")


@pytest.fixture
def host(loopback: Callable[..., LoopbackServer]) -> ImageHost:
    return ImageHost(loopback)


def test_http_lines_are_downloaded_without_the_api_key(tmp_path: Path, make_endpoint: Any,
                                                        host: ImageHost) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 1)
    listing = tmp_path / "list.txt"
    listing.write_text(f"img_000.png\n{host.url}/img_1.png\n{host.url}/img_2.png?size=big\n"
                       f"{host.url}/gone.png\n")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--files-from", listing), env=endpoint_env(ep, KEY))
    assert run.code == 1, run.stderr  # the missing URL failed, the others did not
    where = out / f"127.0.0.1_{host.server.port}"
    assert (where / "img_1.png").read_bytes() == png_bytes(1)
    assert (where / "img_2.png").read_bytes() == png_bytes(2)
    assert (out / "img_000.png").read_bytes() == (src / "img_000.png").read_bytes()
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    gone = jobs[f"127.0.0.1_{host.server.port}/gone.png"]
    assert gone["error_kind"] == "bad_input" and "HTTP 404" in gone["error"]
    assert ep.calls()["run"] == 3
    sent = json.dumps(host.requests)
    assert KEY not in sent and "authorization" not in sent.lower()


def test_image_url_passes_an_http_line_to_the_worker_as_is(tmp_path: Path, make_endpoint: Any,
                                                           host: ImageHost) -> None:
    def fetch_by_url(job: dict[str, Any]) -> dict[str, Any]:
        data = requests.get(job["input"]["image_url"], timeout=10).content
        return {"image": base64.b64encode(data).decode()}

    ep = make_endpoint(handler=fetch_by_url, workers_max=2)
    urls = [f"{host.url}/img_{i}.png" for i in range(4)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(urls) + "\n")
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image_url": "{{image_url}}"}}))
    out = tmp_path / "out"
    run = rpq("batch", "--files-from", listing, "--out", out, "--input-template", template,
              "--no-progress", env=endpoint_env(ep, KEY))
    assert run.code == 0, run.stderr
    assert sorted(job["input"]["image_url"] for job in ep.jobs()) == sorted(urls)
    # Only the worker fetched: one GET per image, none of them from rpq.
    assert len(host.requests) == 4
    for i in range(4):
        assert (out / f"127.0.0.1_{host.server.port}" / f"img_{i}.png").read_bytes() == \
            png_bytes(i)


def test_image_url_skips_a_local_line_saying_why(tmp_path: Path, make_endpoint: Any,
                                                 host: ImageHost) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    src = tmp_path / "in"
    make_images(src, 1)
    listing = tmp_path / "list.txt"
    listing.write_text(f"img_000.png\n{host.url}/img_3.png\n")
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image_url": "{{image_url}}"}}))
    run = rpq(*batch_args(src, tmp_path / "out", "--files-from", listing, "--input-template",
                          template), env=endpoint_env(ep))
    assert run.code == 1, run.stderr
    jobs = {j["input"]: j for j in run.metrics(tmp_path / "out")["jobs"]}
    assert "needs an s3:// or http(s):// URL" in jobs["img_000.png"]["error"]
    assert ep.calls()["run"] == 1


def test_s3_lines_are_read_from_the_bucket(s3: S3Server, tmp_path: Path,
                                          make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    s3.bucket("rpq-listed", {"a/img_0.png": png_bytes(0), "b/img_1.png": png_bytes(1),
                             "c/skip.png": png_bytes(2)})
    listing = tmp_path / "list.txt"
    listing.write_text("s3://rpq-listed/a/img_0.png\ns3://rpq-listed/b/img_1.png\n"
                       "s3://rpq-listed/a/missing.png\n")
    out = tmp_path / "out"
    run = rpq("batch", "--files-from", listing, "--out", out, "--no-progress",
              env={**endpoint_env(ep), **s3.env})
    assert run.code == 1, run.stderr
    assert (out / "rpq-listed" / "a" / "img_0.png").read_bytes() == png_bytes(0)
    assert (out / "rpq-listed" / "b" / "img_1.png").read_bytes() == png_bytes(1)
    assert not (out / "rpq-listed" / "c").exists()
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    assert jobs["rpq-listed/a/missing.png"]["error_kind"] == "bad_input"
    assert ep.calls()["run"] == 2
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in run.stderr
