"""Scenario 12 (`--only buckets`): 2,000 images bucket to bucket, with the image in the request
and with {{image_url}}; the client's bytes sent per image."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import harness as h
from tables import Context, Row, Scenario, fmt

# tests/s3kit.py: the moto S3 server, started as the tests start it.
sys.path.insert(0, str(h.REPO / "tests"))

from s3kit import S3Server, s3_server

SIDE = 96


@dataclass(frozen=True)
class BucketSizes:
    images: int = 2_000
    workers: int = 16
    concurrency: int = 32


FULL = BucketSizes()
QUICK = BucketSizes(images=60, workers=4, concurrency=8)


def _fill(server: S3Server, folder: Path, count: int) -> None:
    names = [f"img{n:05d}.png" for n in range(count)]
    server.bucket("bench-in", {f"in/{name}": (folder / name).read_bytes() for name in names})
    server.bucket("bench-out")


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
    with s3_server() as server:
        _fill(server, folder, z.images)
        for mode, extra, handler in (
                ("image in the request", (), "echo"),
                ("{{image_url}}", ("--input-template", str(by_url)),
                 f"{h.BENCH / 'url_worker.py'}:handler")):
            tag = "url" if extra else "bytes"
            out = h.fresh_folder(ctx.work / "runs" / f"s12-{tag}")
            count_file = out / "sent.txt"
            env = {**server.env, "BENCH_SENT_FILE": str(count_file)}
            cmd = [str(h.PYTHON), str(h.BENCH / "rpq_counted.py"), "batch", "s3://bench-in/in/",
                   "--out", f"s3://bench-out/{tag}/", "--journal-dir", str(out / "journal"),
                   "--no-progress", "--concurrency", str(z.concurrency), *extra]
            with h.EndpointProcess.beside(out, handler=handler, workers_max=z.workers,
                                          rate_limits="off") as ep:
                measured = h.run_measured(cmd, {**ep.env(), **env}, h.log_of(out),
                                          timeout=300 + z.images * 0.2)
            snapshot = ep.snapshot
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
