"""The baseline client: what a user writes today with the official runpod SDK and a thread pool."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:PORT/v2")
    parser.add_argument("--endpoint-id", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=600, help="job.output(timeout=...)")
    parser.add_argument("--result", type=Path, required=True, help="per-job timings (JSON)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    import runpod

    imported = time.time()
    runpod.api_key = os.environ.get("RUNPOD_API_KEY") or "bench-key"
    runpod.endpoint_url_base = args.base_url
    endpoint = runpod.Endpoint(args.endpoint_id)
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() == ".png")

    def one(path: Path) -> dict[str, Any]:
        submitted = time.time()
        try:
            image = base64.b64encode(path.read_bytes()).decode("ascii")
            job = endpoint.run({"input": {"image": image}})
            output = job.output(timeout=args.timeout)
            (args.out / path.name).write_bytes(base64.b64decode(output["image"]))
        except Exception as exc:
            return {"file": path.name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                    "submitted": submitted, "done": time.time()}
        return {"file": path.name, "job_id": job.job_id, "ok": True,
                "submitted": submitted, "done": time.time()}

    with ThreadPoolExecutor(args.concurrency) as pool:
        jobs = list(pool.map(one, files))
    finished = time.time()
    args.result.write_text(json.dumps({
        "started": started, "imported": imported, "finished": finished, "jobs": jobs,
    }), encoding="utf-8")
    return 0 if all(j["ok"] for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
