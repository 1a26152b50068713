"""Scenario 12 (`--only buckets`): 2,000 images bucket to bucket, with the image in the request
and with {{image_url}}; the client's bytes sent per image."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import harness as h
from tables import Context, Row, Scenario, fmt

_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


SIDE = 96


@dataclass(frozen=True)
class BucketSizes:
    images: int = 2_000
    workers: int = 16
    concurrency: int = 32


FULL = BucketSizes()
QUICK = BucketSizes(images=60, workers=4, concurrency=8)


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 in a child process; yields its endpoint URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def _fill(endpoint: str, folder: Path, count: int) -> None:
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1").client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench-in")
    client.create_bucket(Bucket="bench-out")
    names = [f"img{n:05d}.png" for n in range(count)]
    with ThreadPoolExecutor(16) as pool:
        for done in [pool.submit(client.put_object, Bucket="bench-in", Key=f"in/{n}",
                                 Body=(folder / n).read_bytes()) for n in names]:
            done.result()


def scenario_buckets(ctx: Context) -> Scenario:
    z = QUICK if ctx.quick else FULL
    sc = Scenario("12", "Bucket to bucket", (
        f"{z.images:,} {SIDE}x{SIDE} noise PNGs (about 28 KB each) in a bucket of moto's S3 "
        f"server on 127.0.0.1, results to another bucket; local endpoint with {z.workers} "
        f"workers, concurrency {z.concurrency}. With the default template rpq downloads each "
        "image and sends it base64 in /run; with `{{image_url}}` it sends a presigned URL "
        "and the worker (`bench/url_worker.py`) fetches the image. Bytes sent are counted on "
        "every socket of the client (`bench/rpq_counted.py`): /run, /status, the S3 reads "
        "and the result uploads."))
    folder = h.image_pool(ctx.cache, z.images, side=SIDE)
    by_url = ctx.work / "by-url.json"
    by_url.write_text(json.dumps({"input": {"image_url": "{{image_url}}", "name": "{{rel}}"}}))
    sent: dict[str, float] = {}
    with s3_server() as endpoint:
        _fill(endpoint, folder, z.images)
        for mode, extra, handler in (
                ("image in the request", (), "echo"),
                ("{{image_url}}", ("--input-template", str(by_url)),
                 f"{h.BENCH / 'url_worker.py'}:handler")):
            tag = "url" if extra else "bytes"
            out = ctx.work / "runs" / f"s12-{tag}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            count_file = out / "sent.txt"
            ep = h.EndpointProcess(out.with_name(out.name + ".endpoint.json"), handler=handler,
                                   workers_max=z.workers, rate_limits="off")
            env = {**ep.env(), **AWS, "AWS_ENDPOINT_URL": endpoint,
                   "BENCH_SENT_FILE": str(count_file)}
            cmd = [str(h.PYTHON), str(h.BENCH / "rpq_counted.py"), "batch", "s3://bench-in/in/",
                   "--out", f"s3://bench-out/{tag}/", "--journal-dir", str(out / "journal"),
                   "--no-progress", "--concurrency", str(z.concurrency), *extra]
            try:
                measured = h.run_measured(cmd, env, out.with_name(out.name + ".log"),
                                          timeout=300 + z.images * 0.2)
            except BaseException:
                ep.kill()
                raise
            snapshot = ep.stop()
            done = sum(1 for j in snapshot["jobs"] if j.get("status") == "COMPLETED")
            per_image = int(count_file.read_text()) / max(z.images, 1)
            sent[tag] = per_image
            ctx.log(f"  s12 {tag}: {done}/{z.images} done, {per_image:,.0f} bytes sent per "
                    f"image, wall {measured.wall:.1f} s, rss {measured.max_rss_mb:.0f} MB, "
                    f"exit {measured.code}")
            sc.rows.append(Row("12", f"client bytes sent per image, bucket to bucket, {mode}",
                               f"{per_image:,.0f}", "", ""))
            sc.rows.append(Row("12", f"wall s, {z.images:,} images bucket to bucket, {mode}",
                               fmt(measured.wall, 1), "", ""))
            sc.detail.append(f"- {mode}: {done}/{z.images} completed, peak RSS "
                             f"{measured.max_rss_mb:.0f} MB, exit {measured.code}")
    sc.notes.append("The results are uploaded either way (the echo worker returns the image "
                    "itself, base64 in the status reply): what `{{image_url}}` removes is the "
                    "image in every /run body.")
    sc.data = {"bytes_per_image": sent}
    return sc


SCENARIOS = {"12": scenario_buckets}
ALIASES = {"buckets": "12"}
